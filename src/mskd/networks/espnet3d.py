"""ESPNet-style 3D student network: efficient spatial pyramids of dilated 3x3x3 convolutions for volumetric patches."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv, Norm
from torch import nn

from mskd.networks.checks import check_input
from mskd.networks.espnet import _BN_EPS, _ESP, _BNPReLU, _ConvBNPReLU

__all__ = ["ESPNet3D"]

_DIMS = 3


class ESPNet3D(nn.Module):
    """An ESPNet-style 3D segmentation network: the 2D :class:`~mskd.networks.espnet.ESPNet` with 3D operations.

    Ours, built from the design of Mehta et al., "ESPNet: Efficient Spatial Pyramid of Dilated Convolutions for
    Semantic Segmentation", ECCV 2018, with the blocks of the 2D network made 3D (``spatial_dims=3``); it is not a
    port of a published 3D network. Each efficient spatial pyramid (ESP) module reduces its input point-wise to
    ``d = C // K`` channels, runs ``K`` parallel 3x3x3 convolutions with dilations ``1, 2, ..., 2**(K-1)``, adds
    their outputs progressively (hierarchical feature fusion, against gridding artefacts), concatenates them back
    to ``C`` channels and adds the input (residual), then BatchNorm + PReLU.

    Encoder, with input reinforcement (the image average-pooled to the stage's resolution, concatenated): 3x3x3
    stride-2 convolution to ``channels[0]``, concatenated with the 2x pooled image (level 1, stride 2); a
    down-sampling ESP module to ``channels[1]`` + ``alpha2`` ESP modules, concatenated with the down-sampling output
    and the 4x pooled image (level 2, stride 4); a down-sampling ESP module to ``channels[2]`` + ``alpha3`` ESP
    modules, concatenated with the down-sampling output (level 3, stride 8). Light decoder, as in the 2D network:
    1x1x1 projection of level 3 to the classes, transposed convolution x2, fused with level 2 projected to the
    classes through an ESP module, transposed convolution x2, concatenated with level 1, 3x3x3 convolution,
    transposed convolution x2 to full resolution.

    The defaults are narrower than the 2D network's (16, 64, 128 channels, five branches, ``alpha3`` 8): a 3x3x3
    kernel holds three times the weights of a 3x3 one, and a 96³ patch is 12³ voxels at stride 8, where dilation 8
    already spans the volume. With 1 input channel and 9 classes it has 179,504 parameters.

    ``tap_points`` maps tap name -> (sub-module path, output stride): ``low`` = level-1 concat (stride 2),
    ``mid`` = level-2 concat (stride 4), ``high`` = level-3 concat (stride 8, the deepest encoder stage).

    Args:
        in_channels: number of input channels.
        out_channels: number of output classes (logits).
        channels: widths of the three encoder levels (before the concatenations).
        alpha2: number of ESP modules at level 2.
        alpha3: number of ESP modules at level 3.
        branches: number K of parallel dilated convolutions per ESP module (dilations 1..2**(K-1)).

    Raises:
        ValueError: when ``in_channels`` or ``out_channels`` < 1, ``channels`` is not three positive widths,
            ``alpha2`` / ``alpha3`` < 1, ``branches`` is not in 1..5 or larger than ``channels[1]`` (each branch needs a
            channel); in ``forward``, when the input is not ``B, in_channels, D, H, W`` with D, H and W divisible by 8.
    """

    # tap_points is Python-side metadata for FeatureTaps; TorchScript does not need it.
    __jit_ignored_attributes__ = ["tap_points"]

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 9,
        channels: Sequence[int] = (16, 32, 64),
        alpha2: int = 2,
        alpha3: int = 3,
        branches: int = 4,
    ) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"ESPNet3D in_channels must be >= 1, got {in_channels}")
        if out_channels < 1:
            raise ValueError(f"ESPNet3D out_channels must be >= 1, got {out_channels}")
        channels = tuple(channels)
        if len(channels) != 3 or any(not isinstance(c, int) or c < 1 for c in channels):
            raise ValueError(f"ESPNet3D channels must be three positive widths (levels 1, 2, 3), got {channels}")
        for name, value in (("alpha2", alpha2), ("alpha3", alpha3)):
            if value < 1:
                raise ValueError(f"ESPNet3D {name} must be >= 1, got {value}")
        if not 1 <= branches <= 5:
            raise ValueError(f"ESPNet3D branches must be in 1..5, got {branches}")
        if min(channels[1:]) < branches:
            raise ValueError(
                f"ESPNet3D needs channels[1] and channels[2] >= branches (one channel per branch), "
                f"got channels={channels}, branches={branches}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        c1, c2, c3 = channels
        # decoder width: the decoder's ESP module needs >= K channels (one per branch)
        classes = max(out_channels, branches)
        conv, up = Conv[Conv.CONV, _DIMS], Conv[Conv.CONVTRANS, _DIMS]

        # encoder
        self.level1 = _ConvBNPReLU(in_channels, c1, 3, stride=2, spatial_dims=_DIMS)
        self.b1 = _BNPReLU(c1 + in_channels, _DIMS)
        self.level2_down = _ESP(c1 + in_channels, c2, branches, downsample=True, spatial_dims=_DIMS)
        self.level2 = nn.Sequential(*[_ESP(c2, c2, branches, spatial_dims=_DIMS) for _ in range(alpha2)])
        self.b2 = _BNPReLU(2 * c2 + in_channels, _DIMS)
        self.level3_down = _ESP(2 * c2 + in_channels, c3, branches, downsample=True, spatial_dims=_DIMS)
        self.level3 = nn.Sequential(*[_ESP(c3, c3, branches, spatial_dims=_DIMS) for _ in range(alpha3)])
        self.b3 = _BNPReLU(2 * c3, _DIMS)
        self.classifier3 = conv(2 * c3, classes, 1, bias=False)

        # light decoder
        self.bn3 = Norm[Norm.BATCH, _DIMS](classes, eps=_BN_EPS)
        self.up3 = up(classes, classes, 2, stride=2, bias=False)
        self.project2 = conv(2 * c2 + in_channels, classes, 1, bias=False)
        self.fuse2 = nn.Sequential(
            _BNPReLU(2 * classes, _DIMS), _ESP(2 * classes, classes, branches, residual=False, spatial_dims=_DIMS)
        )
        self.up2 = nn.Sequential(up(classes, classes, 2, stride=2, bias=False), _BNPReLU(classes, _DIMS))
        self.fuse1 = _ConvBNPReLU(c1 + in_channels + classes, classes, 3, spatial_dims=_DIMS)
        self.head = up(classes, out_channels, 2, stride=2, bias=False)

        self.tap_points = {"low": ("b1", 2), "mid": ("b2", 4), "high": ("b3", 8)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``B, out_channels, D, H, W`` for volumes ``B, in_channels, D, H, W`` (D, H, W divisible by 8)."""
        check_input(x, "ESPNet3D", self.in_channels, 8, spatial_dims=3)  # total stride: three stride-2 stages
        # input reinforcement: the image average-pooled to 1/2 and 1/4
        image2 = F.avg_pool3d(x, 2)
        image4 = F.avg_pool3d(image2, 2)

        level1 = self.b1(torch.cat([self.level1(x), image2], dim=1))
        down2 = self.level2_down(level1)
        level2 = self.b2(torch.cat([self.level2(down2), down2, image4], dim=1))
        down3 = self.level3_down(level2)
        level3 = self.b3(torch.cat([down3, self.level3(down3)], dim=1))

        up3 = self.up3(self.bn3(self.classifier3(level3)))
        up2 = self.up2(self.fuse2(torch.cat([self.project2(level2), up3], dim=1)))
        return self.head(self.fuse1(torch.cat([up2, level1], dim=1)))
