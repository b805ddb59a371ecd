"""ERFNet student network (Romera et al., 2017) for 2D segmentation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mskd.networks.checks import check_input

__all__ = ["ERFNet"]


class _Downsampler(nn.Module):
    """3x3 stride-2 convolution concatenated with a 2x2 max-pool of the input, then BN + ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels - in_channels, 3, stride=2, padding=1)
        self.pool = nn.MaxPool2d(2, stride=2)
        self.bn = nn.BatchNorm2d(out_channels, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(torch.cat([self.conv(x), self.pool(x)], dim=1)))


class _NonBottleneck1D(nn.Module):
    """Residual block of two factorised 3x3 convolutions (3x1 + 1x3), the second pair dilated."""

    def __init__(self, channels: int, dropout: float, dilation: int = 1) -> None:
        super().__init__()
        self.conv3x1_1 = nn.Conv2d(channels, channels, (3, 1), padding=(1, 0))
        self.conv1x3_1 = nn.Conv2d(channels, channels, (1, 3), padding=(0, 1))
        self.bn1 = nn.BatchNorm2d(channels, eps=1e-3)
        self.conv3x1_2 = nn.Conv2d(channels, channels, (3, 1), padding=(dilation, 0), dilation=(dilation, 1))
        self.conv1x3_2 = nn.Conv2d(channels, channels, (1, 3), padding=(0, dilation), dilation=(1, dilation))
        self.bn2 = nn.BatchNorm2d(channels, eps=1e-3)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv3x1_1(x))
        out = F.relu(self.bn1(self.conv1x3_1(out)))
        out = F.relu(self.conv3x1_2(out))
        out = self.dropout(self.bn2(self.conv1x3_2(out)))
        return F.relu(out + x)


class _Upsampler(nn.Module):
    """3x3 stride-2 transposed convolution + BN + ReLU (doubles H and W)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(in_channels, out_channels, 3, stride=2, padding=1, output_padding=1)
        self.bn = nn.BatchNorm2d(out_channels, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class ERFNet(nn.Module):
    """ERFNet: efficient residual factorised ConvNet for real-time segmentation.

    Romera, Alvarez, Bergasa, Arroyo, "ERFNet: Efficient Residual Factorized ConvNet for Real-Time Semantic
    Segmentation", IEEE Trans. Intelligent Transportation Systems 19(1), 2018 (Table I). Encoder: downsampler
    to 16 channels (stride 2); downsampler to 64 + 5 non-bottleneck-1D blocks (dropout ``dropout``, stride 4);
    downsampler to 128 + 2 x (non-bottleneck-1D dilated 2, 4, 8, 16) (dropout ``dropout_deep``, stride 8).
    Decoder: upsampler 128 -> 64 + 2 non-bottleneck-1D, upsampler 64 -> 16 + 2 non-bottleneck-1D, 2x2 stride-2
    transposed convolution to ``out_channels``. Total stride 8.

    ``tap_points`` maps tap name -> (sub-module path, output stride): ``low`` = first downsampler (stride 2),
    ``mid`` = stage 1 (stride 4), ``high`` = stage 2 (stride 8, the deepest encoder stage).

    Args:
        in_channels: number of input channels (the first downsampler's conv has ``16 - in_channels`` filters).
        out_channels: number of output classes (logits).
        dropout: spatial dropout probability of the 64-channel blocks (paper: 0.03).
        dropout_deep: spatial dropout probability of the 128-channel blocks (paper: 0.3).

    Raises:
        ValueError: when ``in_channels`` is not in 1..15, ``out_channels`` < 1 or a dropout is not in [0, 1);
            in ``forward``, when H or W is not divisible by 8.
    """

    # tap_points is Python-side metadata for FeatureTaps; TorchScript does not need it.
    __jit_ignored_attributes__ = ["tap_points"]

    def __init__(
        self, in_channels: int = 1, out_channels: int = 9, dropout: float = 0.03, dropout_deep: float = 0.3
    ) -> None:
        super().__init__()
        if not 1 <= in_channels <= 15:
            raise ValueError(f"ERFNet in_channels must be in 1..15 (the first block outputs 16), got {in_channels}")
        if out_channels < 1:
            raise ValueError(f"ERFNet out_channels must be >= 1, got {out_channels}")
        for name, p in (("dropout", dropout), ("dropout_deep", dropout_deep)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"ERFNet {name} must be in [0, 1), got {p}")
        self.in_channels = in_channels
        self.out_channels = out_channels

        self.initial = _Downsampler(in_channels, 16)
        self.stage1 = nn.Sequential(_Downsampler(16, 64), *[_NonBottleneck1D(64, dropout) for _ in range(5)])
        self.stage2 = nn.Sequential(
            _Downsampler(64, 128),
            *[_NonBottleneck1D(128, dropout_deep, dilation) for _ in range(2) for dilation in (2, 4, 8, 16)],
        )
        self.decoder = nn.Sequential(
            _Upsampler(128, 64),
            _NonBottleneck1D(64, 0.0),
            _NonBottleneck1D(64, 0.0),
            _Upsampler(64, 16),
            _NonBottleneck1D(16, 0.0),
            _NonBottleneck1D(16, 0.0),
        )
        self.head = nn.ConvTranspose2d(16, out_channels, 2, stride=2)

        self.tap_points = {"low": ("initial", 2), "mid": ("stage1", 4), "high": ("stage2", 8)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``B, out_channels, H, W`` for images ``B, in_channels, H, W`` (H, W divisible by 8)."""
        check_input(x, "ERFNet", self.in_channels, 8)
        if x.device.type == "cpu":
            # channels-last activations let oneDNN skip the NCHW <-> blocked reorders around each of the ~80 convs
            x = x.contiguous(memory_format=torch.channels_last)
        return self.head(self.decoder(self.stage2(self.stage1(self.initial(x))))).contiguous()
