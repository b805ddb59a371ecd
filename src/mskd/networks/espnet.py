"""ESPNet student network (Mehta et al., 2018) for 2D segmentation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv, Norm
from torch import nn

from mskd.networks.checks import check_input

__all__ = ["ESPNet"]

_BN_EPS = 1e-3


class _BNPReLU(nn.Module):
    """BatchNorm + per-channel PReLU (2D, or 3D with ``spatial_dims=3``)."""

    def __init__(self, channels: int, spatial_dims: int = 2) -> None:
        super().__init__()
        self.bn = Norm[Norm.BATCH, spatial_dims](channels, eps=_BN_EPS)
        self.act = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(x))


class _ConvBNPReLU(nn.Module):
    """Square (cubic with ``spatial_dims=3``) convolution (no bias) + BatchNorm + per-channel PReLU."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, spatial_dims: int = 2
    ) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        self.conv = conv(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False)
        self.bn = Norm[Norm.BATCH, spatial_dims](out_channels, eps=_BN_EPS)
        self.act = nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class _ESP(nn.Module):
    """Efficient spatial pyramid module.

    Reduce: point-wise 1x1 conv to ``d = out_channels // K`` channels (3x3 stride-2 conv for the down-sampling
    variant); split-transform: ``K`` parallel 3x3 convs with dilation ``2**k`` (the first one takes the remainder
    so the concat has exactly ``out_channels``); hierarchical feature fusion: the dilated outputs are added
    progressively before concatenation; residual when ``residual`` (same shape in and out); BN + PReLU.
    ``spatial_dims=3`` makes every convolution 3x3x3 (1x1x1 for the reduction) and the norm a ``BatchNorm3d``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        branches: int = 5,
        downsample: bool = False,
        residual: bool = True,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        d = out_channels // branches
        first = out_channels - (branches - 1) * d
        self.residual = residual and not downsample and in_channels == out_channels
        if downsample:
            self.reduce = conv(in_channels, d, 3, stride=2, padding=1, bias=False)
        else:
            self.reduce = conv(in_channels, d, 1, bias=False)
        self.first = conv(d, first, 3, padding=1, bias=False)
        self.pyramid = nn.ModuleList(
            [conv(d, d, 3, padding=2**k, dilation=2**k, bias=False) for k in range(1, branches)]
        )
        self.out = _BNPReLU(out_channels, spatial_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.reduce(x)
        outputs = [self.first(reduced)]
        fused: torch.Tensor | None = None
        for conv in self.pyramid:
            y = conv(reduced)
            if fused is not None:
                y = y + fused  # hierarchical feature fusion
            fused = y
            outputs.append(y)
        out = torch.cat(outputs, dim=1)
        if self.residual:
            out = out + x
        return self.out(out)


class ESPNet(nn.Module):
    """ESPNet: efficient spatial pyramid of dilated convolutions, full segmentation network with light decoder.

    Mehta, Rastegari, Caspi, Shapiro, Hajishirzi, "ESPNet: Efficient Spatial Pyramid of Dilated Convolutions for
    Semantic Segmentation", ECCV 2018 (Fig. 4d). Encoder (ESPNet-C with input reinforcement): 3x3 stride-2
    conv to 16 channels, concatenated with the 2x average-pooled image (level 1, stride 2); down-sampling ESP
    to 64 + ``alpha2`` ESP modules, concatenated with the down-sampling output and the 4x pooled image (level 2,
    stride 4); down-sampling ESP to 128 + ``alpha3`` ESP modules, concatenated with the down-sampling output
    (level 3, stride 8), 1x1 conv to ``out_channels``. Decoder: transposed conv x2, fused with the level-2
    features projected to ``out_channels`` through an ESP module, transposed conv x2, concatenated with level 1,
    3x3 conv, transposed conv x2 to full resolution. Total stride 8.

    ``tap_points`` maps tap name -> (sub-module path, output stride): ``low`` = level-1 concat (stride 2),
    ``mid`` = level-2 concat (stride 4), ``high`` = level-3 concat (stride 8, the deepest encoder stage).

    Args:
        in_channels: number of input channels.
        out_channels: number of output classes (logits).
        alpha2: number of ESP modules at level 2 (paper: 2).
        alpha3: number of ESP modules at level 3 (paper's ESPNet: 8; the reference code's default is 3).
        branches: number K of parallel dilated convolutions per ESP module (paper: 5, dilations 1..2**(K-1)).

    Raises:
        ValueError: when ``in_channels`` < 1, ``out_channels`` < 1, ``alpha2`` / ``alpha3`` < 1 or ``branches``
            not in 1..5 (level 2 has 64 channels: 64 // K channels per branch); in ``forward``, when H or W is
            not divisible by 8.
    """

    # tap_points is Python-side metadata for FeatureTaps; TorchScript does not need it.
    __jit_ignored_attributes__ = ["tap_points"]

    def __init__(
        self, in_channels: int = 1, out_channels: int = 9, alpha2: int = 2, alpha3: int = 8, branches: int = 5
    ) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"ESPNet in_channels must be >= 1, got {in_channels}")
        if out_channels < 1:
            raise ValueError(f"ESPNet out_channels must be >= 1, got {out_channels}")
        for name, value in (("alpha2", alpha2), ("alpha3", alpha3)):
            if value < 1:
                raise ValueError(f"ESPNet {name} must be >= 1, got {value}")
        if not 1 <= branches <= 5:
            raise ValueError(f"ESPNet branches must be in 1..5, got {branches}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        # decoder width: the decoder's ESP module needs >= K channels (one per branch)
        classes = max(out_channels, branches)

        # encoder
        self.level1 = _ConvBNPReLU(in_channels, 16, 3, stride=2)
        self.b1 = _BNPReLU(16 + in_channels)
        self.level2_down = _ESP(16 + in_channels, 64, branches, downsample=True)
        self.level2 = nn.Sequential(*[_ESP(64, 64, branches) for _ in range(alpha2)])
        self.b2 = _BNPReLU(128 + in_channels)
        self.level3_down = _ESP(128 + in_channels, 128, branches, downsample=True)
        self.level3 = nn.Sequential(*[_ESP(128, 128, branches) for _ in range(alpha3)])
        self.b3 = _BNPReLU(256)
        self.classifier3 = nn.Conv2d(256, classes, 1, bias=False)

        # light decoder
        self.bn3 = nn.BatchNorm2d(classes, eps=_BN_EPS)
        self.up3 = nn.ConvTranspose2d(classes, classes, 2, stride=2, bias=False)
        self.project2 = nn.Conv2d(128 + in_channels, classes, 1, bias=False)
        self.fuse2 = nn.Sequential(_BNPReLU(2 * classes), _ESP(2 * classes, classes, branches, residual=False))
        self.up2 = nn.Sequential(nn.ConvTranspose2d(classes, classes, 2, stride=2, bias=False), _BNPReLU(classes))
        self.fuse1 = _ConvBNPReLU(16 + in_channels + classes, classes, 3)
        self.head = nn.ConvTranspose2d(classes, out_channels, 2, stride=2, bias=False)

        self.tap_points = {"low": ("b1", 2), "mid": ("b2", 4), "high": ("b3", 8)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``B, out_channels, H, W`` for images ``B, in_channels, H, W`` (H, W divisible by 8)."""
        check_input(x, "ESPNet", self.in_channels, 8)
        if x.device.type == "cpu":
            # channels-last activations: PyTorch runs small NCHW dilated convs at batch 1 (the 28 x 28 level-3 ESP
            # branches at 224 x 224) with a slow native kernel, channels-last ones with oneDNN (about 3x faster)
            x = x.contiguous(memory_format=torch.channels_last)
        # input reinforcement: the image average-pooled to 1/2 and 1/4
        image2 = F.avg_pool2d(x, 2)
        image4 = F.avg_pool2d(image2, 2)

        level1 = self.b1(torch.cat([self.level1(x), image2], dim=1))
        down2 = self.level2_down(level1)
        level2 = self.b2(torch.cat([self.level2(down2), down2, image4], dim=1))
        down3 = self.level3_down(level2)
        level3 = self.b3(torch.cat([down3, self.level3(down3)], dim=1))

        up3 = self.up3(self.bn3(self.classifier3(level3)))
        up2 = self.up2(self.fuse2(torch.cat([self.project2(level2), up3], dim=1)))
        return self.head(self.fuse1(torch.cat([up2, level1], dim=1))).contiguous()
