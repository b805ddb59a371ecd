"""ENet student network (Paszke et al., 2016) for 2D segmentation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mskd.networks.checks import check_input

__all__ = ["ENet"]


def _activation(channels: int, relu: bool) -> nn.Module:
    """PReLU with one slope per channel (encoder, as in the paper) or ReLU (decoder)."""
    return nn.ReLU(inplace=True) if relu else nn.PReLU(channels)


class _InitialBlock(nn.Module):
    """3x3 stride-2 convolution concatenated with a 2x2 max-pool of the input, then BN + activation."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels - in_channels, 3, stride=2, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2, stride=2)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(torch.cat([self.conv(x), self.pool(x)], dim=1)))


class _Bottleneck(nn.Module):
    """Regular / dilated / asymmetric bottleneck: 1x1 projection, conv, 1x1 expansion, dropout, residual."""

    def __init__(
        self,
        channels: int,
        dropout: float,
        dilation: int = 1,
        asymmetric: int = 0,
        relu: bool = False,
        projection_ratio: int = 4,
    ) -> None:
        super().__init__()
        inner = channels // projection_ratio
        self.reduce = nn.Sequential(
            nn.Conv2d(channels, inner, 1, bias=False), nn.BatchNorm2d(inner), _activation(inner, relu)
        )
        if asymmetric:
            pad = asymmetric // 2
            self.conv = nn.Sequential(
                nn.Conv2d(inner, inner, (asymmetric, 1), padding=(pad, 0), bias=False),
                nn.Conv2d(inner, inner, (1, asymmetric), padding=(0, pad), bias=False),
                nn.BatchNorm2d(inner),
                _activation(inner, relu),
            )
        else:
            self.conv = nn.Sequential(
                nn.Conv2d(inner, inner, 3, padding=dilation, dilation=dilation, bias=False),
                nn.BatchNorm2d(inner),
                _activation(inner, relu),
            )
        self.expand = nn.Sequential(nn.Conv2d(inner, channels, 1, bias=False), nn.BatchNorm2d(channels))
        self.dropout = nn.Dropout2d(dropout)
        self.act = _activation(channels, relu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.dropout(self.expand(self.conv(self.reduce(x)))))


class _DownsamplingBottleneck(nn.Module):
    """Bottleneck halving the resolution: max-pool (indices kept for the decoder) + 2x2 stride-2 projection.

    The main branch is zero-padded along channels to ``out_channels``; returns ``(features, pool_indices)``.
    """

    def __init__(self, in_channels: int, out_channels: int, dropout: float, projection_ratio: int = 4) -> None:
        super().__init__()
        inner = in_channels // projection_ratio
        self.extra_channels = out_channels - in_channels
        self.reduce = nn.Sequential(
            nn.Conv2d(in_channels, inner, 2, stride=2, bias=False), nn.BatchNorm2d(inner), nn.PReLU(inner)
        )
        self.conv = nn.Sequential(
            nn.Conv2d(inner, inner, 3, padding=1, bias=False), nn.BatchNorm2d(inner), nn.PReLU(inner)
        )
        self.expand = nn.Sequential(nn.Conv2d(inner, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
        self.dropout = nn.Dropout2d(dropout)
        self.act = nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        main, indices = F.max_pool2d_with_indices(x, 2, 2)
        main = F.pad(main, (0, 0, 0, 0, 0, self.extra_channels))
        ext = self.dropout(self.expand(self.conv(self.reduce(x))))
        return self.act(main + ext), indices


class _UpsamplingBottleneck(nn.Module):
    """Bottleneck doubling the resolution: 1x1 conv + max-unpool (encoder indices) on the main branch and a
    3x3 stride-2 transposed convolution on the extension branch."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float, projection_ratio: int = 4) -> None:
        super().__init__()
        inner = in_channels // projection_ratio
        self.main = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
        self.reduce = nn.Sequential(
            nn.Conv2d(in_channels, inner, 1, bias=False), nn.BatchNorm2d(inner), nn.ReLU(inplace=True)
        )
        self.conv = nn.Sequential(
            nn.ConvTranspose2d(inner, inner, 3, stride=2, padding=1, output_padding=1, bias=False),
            nn.BatchNorm2d(inner),
            nn.ReLU(inplace=True),
        )
        self.expand = nn.Sequential(nn.Conv2d(inner, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
        self.dropout = nn.Dropout2d(dropout)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        main = self.main(x)
        b, c, h, w = main.shape
        # max-unpooling as a scatter into the doubled plane (traceable, unlike F.max_unpool2d's size checks)
        main = main.new_zeros(b, c, 4 * h * w).scatter(2, indices.flatten(2), main.flatten(2)).view(b, c, 2 * h, 2 * w)
        ext = self.dropout(self.expand(self.conv(self.reduce(x))))
        return self.act(main + ext)


class ENet(nn.Module):
    """ENet: efficient encoder-decoder for real-time segmentation.

    Paszke, Chaurasia, Kim, Culurciello, "ENet: A Deep Neural Network Architecture for Real-Time Semantic
    Segmentation", arXiv:1606.02147, 2016. Layout of the paper's Table 1: initial block (16 channels, stride 2);
    stage 1: downsampling bottleneck + 4 bottlenecks (64 channels, stride 4); stage 2: downsampling bottleneck +
    8 bottlenecks (regular, dilated 2, asymmetric 5, dilated 4, regular, dilated 8, asymmetric 5, dilated 16;
    128 channels, stride 8); stage 3: stage 2 without downsampling; stages 4-5: upsampling bottlenecks with
    max-unpooling from the saved pooling indices (128 -> 64 -> 16) and a final 3x3 stride-2 transposed
    convolution. PReLU in the encoder, ReLU in the decoder, spatial dropout ``dropout`` (0.01) in stage 1 and
    ``dropout_deep`` (0.1) afterwards. Total stride 8.

    ``tap_points`` maps tap name -> (sub-module path, output stride): ``low`` = initial block (stride 2),
    ``mid`` = stage 1 (stride 4), ``high`` = stage 3 (stride 8, the deepest encoder stage).

    Args:
        in_channels: number of input channels (the initial block's conv has ``16 - in_channels`` filters).
        out_channels: number of output classes (logits).
        dropout: spatial dropout probability of stage 1.
        dropout_deep: spatial dropout probability of stages 2-5.

    Raises:
        ValueError: when ``in_channels`` is not in 1..15, ``out_channels`` < 1 or a dropout is not in [0, 1);
            in ``forward``, when H or W is not divisible by 8.
    """

    # tap_points is Python-side metadata for FeatureTaps; TorchScript does not need it.
    __jit_ignored_attributes__ = ["tap_points"]

    def __init__(
        self, in_channels: int = 1, out_channels: int = 9, dropout: float = 0.01, dropout_deep: float = 0.1
    ) -> None:
        super().__init__()
        if not 1 <= in_channels <= 15:
            raise ValueError(f"ENet in_channels must be in 1..15 (the initial block outputs 16), got {in_channels}")
        if out_channels < 1:
            raise ValueError(f"ENet out_channels must be >= 1, got {out_channels}")
        for name, p in (("dropout", dropout), ("dropout_deep", dropout_deep)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"ENet {name} must be in [0, 1), got {p}")
        self.in_channels = in_channels
        self.out_channels = out_channels

        self.initial = _InitialBlock(in_channels, 16)
        self.down1 = _DownsamplingBottleneck(16, 64, dropout)
        self.stage1 = nn.Sequential(*[_Bottleneck(64, dropout) for _ in range(4)])
        self.down2 = _DownsamplingBottleneck(64, 128, dropout_deep)
        self.stage2 = self._middle_stage(dropout_deep)
        self.stage3 = self._middle_stage(dropout_deep)
        self.up4 = _UpsamplingBottleneck(128, 64, dropout_deep)
        self.stage4 = nn.Sequential(_Bottleneck(64, dropout_deep, relu=True), _Bottleneck(64, dropout_deep, relu=True))
        self.up5 = _UpsamplingBottleneck(64, 16, dropout_deep)
        self.stage5 = _Bottleneck(16, dropout_deep, relu=True)
        self.head = nn.ConvTranspose2d(16, out_channels, 3, stride=2, padding=1, output_padding=1, bias=False)

        self.tap_points = {"low": ("initial", 2), "mid": ("stage1", 4), "high": ("stage3", 8)}

    @staticmethod
    def _middle_stage(dropout: float) -> nn.Sequential:
        return nn.Sequential(
            _Bottleneck(128, dropout),
            _Bottleneck(128, dropout, dilation=2),
            _Bottleneck(128, dropout, asymmetric=5),
            _Bottleneck(128, dropout, dilation=4),
            _Bottleneck(128, dropout),
            _Bottleneck(128, dropout, dilation=8),
            _Bottleneck(128, dropout, asymmetric=5),
            _Bottleneck(128, dropout, dilation=16),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``B, out_channels, H, W`` for images ``B, in_channels, H, W`` (H, W divisible by 8)."""
        check_input(x, "ENet", self.in_channels, 8)
        x = self.initial(x)
        x, indices1 = self.down1(x)
        x = self.stage1(x)
        x, indices2 = self.down2(x)
        x = self.stage3(self.stage2(x))
        x = self.stage4(self.up4(x, indices2))
        x = self.stage5(self.up5(x, indices1))
        return self.head(x)
