"""Lightweight 2-D student: a MobileNetV2 encoder with a light U-shaped decoder.

The encoder follows Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018
(arXiv:1801.04381), Table 2, without the final 1x1 conv to 1280 channels and the classifier. The decoder
upsamples x2 (bilinear) at each level, concatenates the encoder skip and applies one depthwise-separable
conv block, as a light U-Net.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mskd.networks.checks import check_input

__all__ = ["MobileNetV2UNet", "make_divisible"]

# (expansion t, output channels c, repeats n, first stride s), Sandler et al. 2018, Table 2.
INVERTED_RESIDUAL_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
# Rows of the table grouped into encoder stages; a stage ends where the next one downsamples.
# stage1: stride 2 (16 ch), stage2: 4 (24), stage3: 8 (32), stage4: 16 (64 -> 96), stage5: 32 (160 -> 320).
STAGE_ROWS: tuple[tuple[int, ...], ...] = ((0,), (1,), (2,), (3, 4), (5, 6))
STAGE_STRIDES: tuple[int, ...] = (2, 4, 8, 16, 32)
STEM_CHANNELS = 32
DEFAULT_DECODER_CHANNELS: tuple[int, int, int, int] = (512, 64, 32, 16)


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to the nearest multiple of ``divisor``, never going below 90 % of ``value``.

    This is the rounding of the reference MobileNetV2 implementation (Sandler et al. 2018) used with
    ``width_mult``.

    Args:
        value: the unrounded channel count (e.g. ``32 * width_mult``).
        divisor: the multiple to round to.
        min_value: smallest result allowed; defaults to ``divisor``.

    Returns:
        The rounded channel count.
    """
    if min_value is None:
        min_value = divisor
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:  # do not round down by more than 10 %
        rounded += divisor
    return rounded


class ConvBNReLU6(nn.Sequential):
    """Conv2d (no bias) + BatchNorm2d + ReLU6, 'same' padding for odd kernels."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(
            nn.Conv2d(
                in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False
            ),
            nn.BatchNorm2d(out_channels),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """MobileNetV2 bottleneck: 1x1 expand (ReLU6), 3x3 depthwise (ReLU6), 1x1 linear projection, BN after each.

    The expansion conv is omitted when ``expand_ratio == 1`` (as in the reference implementation); the
    identity shortcut is used when ``stride == 1`` and the input and output channels are equal.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = int(round(in_channels * expand_ratio))
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(in_channels, hidden, kernel_size=1))
        layers += [
            ConvBNReLU6(hidden, hidden, kernel_size=3, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_residual:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2Encoder(nn.Module):
    """MobileNetV2 feature extractor split into a stem and five named stages (``stage1`` ... ``stage5``).

    Outputs of the stages are at strides 2, 4, 8, 16 and 32 with 16, 24, 32, 96 and 320 channels at
    ``width_mult=1`` (each rounded by :func:`make_divisible` otherwise).
    """

    def __init__(self, in_channels: int, width_mult: float = 1.0):
        super().__init__()
        channels = make_divisible(STEM_CHANNELS * width_mult)
        self.stem = ConvBNReLU6(in_channels, channels, kernel_size=3, stride=2)
        out_channels: list[int] = []
        stages: list[nn.Sequential] = []
        for rows in STAGE_ROWS:
            blocks: list[nn.Module] = []
            for row in rows:
                t, c, n, s = INVERTED_RESIDUAL_SETTING[row]
                out = make_divisible(c * width_mult)
                for i in range(n):
                    blocks.append(InvertedResidual(channels, out, s if i == 0 else 1, t))
                    channels = out
            stages.append(nn.Sequential(*blocks))
            out_channels.append(channels)
        self.out_channels = out_channels
        self.stage1, self.stage2, self.stage3, self.stage4, self.stage5 = stages

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the five stage outputs, shallow (stride 2) to deep (stride 32)."""
        f1 = self.stage1(self.stem(x))
        f2 = self.stage2(f1)
        f3 = self.stage3(f2)
        f4 = self.stage4(f3)
        f5 = self.stage5(f4)
        return [f1, f2, f3, f4, f5]


class DepthwiseSeparableBlock(nn.Sequential):
    """Depthwise 3x3 + BN + ReLU6, then pointwise 1x1 + BN + ReLU6."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            ConvBNReLU6(in_channels, in_channels, kernel_size=3, groups=in_channels),
            ConvBNReLU6(in_channels, out_channels, kernel_size=1),
        )


class MobileNetV2UNet(nn.Module):
    """2-D segmentation student: MobileNetV2 encoder (Sandler et al. 2018) with a light U-shaped decoder.

    Encoder: stem conv 3x3 stride 2 (32 ch) + BN + ReLU6, then the inverted-residual bottlenecks of
    Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018, Table 2, grouped
    into ``encoder.stage1`` ... ``encoder.stage5`` (strides 2, 4, 8, 16, 32; 16, 24, 32, 96, 320 channels
    at ``width_mult=1``). The final 1x1 conv to 1280 channels and the classifier are not used.

    Decoder: four levels, deep to shallow; each upsamples x2 (bilinear), concatenates the encoder skip of
    that stride (16, 8, 4, 2) and applies one depthwise-separable block (``decoder.0`` ... ``decoder.3``).
    The 1x1 head (``head``) runs at stride 2 and its logits are upsampled x2 (bilinear) to the input
    size; since both are linear and bilinear weights sum to one, this equals upsampling first and then
    applying the head, at a fraction of the cost.

    With the defaults (``in_channels=1``, ``out_channels=9``, ``width_mult=1``, ``decoder_channels=
    (512, 64, 32, 16)``) the network has 2,075,985 parameters. The default decoder is wide only at stride 16, where
    it is cheap, and narrow at the high-resolution levels, to keep CPU latency close to the bare encoder's.

    Feature taps for distillation are listed in ``tap_points`` (tap name -> (module path in
    ``named_modules()``, output stride)); every tapped module returns a single ``B, C, H, W`` tensor:

    - ``"low"``: ``encoder.stage2``, stride 4 (24 ch at ``width_mult=1``);
    - ``"mid"``: ``encoder.stage3``, stride 8 (32 ch);
    - ``"high"``: ``encoder.stage5``, the deepest encoder stage, stride 32 (320 ch).

    For a teacher whose deepest features are at stride 16, tap ``encoder.stage4`` (stride 16, 96 ch) instead.

    Use them with :class:`mskd.networks.taps.FeatureTaps`:
    ``FeatureTaps(net, {k: v[0] for k, v in net.tap_points.items()})``.

    Args:
        in_channels: number of input channels.
        out_channels: number of output channels (classes, background included).
        width_mult: encoder width multiplier; channel counts are rounded to multiples of 8 as in the paper.
            The decoder channels are not scaled.
        decoder_channels: output channels of the four decoder blocks, deep (stride 16) to shallow (stride 2).

    Attributes:
        tap_points: ``dict[str, tuple[str, int]]``, tap name -> (sub-module path, output stride), see above.
        encoder: the :class:`MobileNetV2Encoder` (``encoder.out_channels`` lists the stage channels).

    Raises:
        ValueError: when ``in_channels`` or ``out_channels`` is not a positive integer, ``width_mult`` is
            not a positive finite number, or ``decoder_channels`` is not four positive integers; in
            ``forward``, when the input is not ``B, C, H, W`` with ``in_channels`` channels and H, W
            divisible by 32.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 9,
        width_mult: float = 1.0,
        decoder_channels: Sequence[int] = DEFAULT_DECODER_CHANNELS,
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if (
            isinstance(width_mult, bool)
            or not isinstance(width_mult, int | float)
            or not math.isfinite(width_mult)
            or width_mult <= 0
        ):
            raise ValueError(f"width_mult must be a positive finite number, got {width_mult!r}")
        if isinstance(decoder_channels, str | bytes) or not isinstance(decoder_channels, Sequence):
            raise ValueError(f"decoder_channels must be a sequence of 4 positive integers, got {decoder_channels!r}")
        decoder_channels = tuple(decoder_channels)
        if len(decoder_channels) != 4 or any(
            isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in decoder_channels
        ):
            raise ValueError(f"decoder_channels must be 4 positive integers, got {decoder_channels!r}")

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.width_mult = float(width_mult)
        self.decoder_channels = decoder_channels

        self.encoder = MobileNetV2Encoder(in_channels, self.width_mult)
        enc = self.encoder.out_channels  # strides 2, 4, 8, 16, 32
        skips = enc[3::-1]  # strides 16, 8, 4, 2
        blocks: list[nn.Module] = []
        channels = enc[4]
        for skip, out in zip(skips, decoder_channels, strict=True):
            blocks.append(DepthwiseSeparableBlock(channels + skip, out))
            channels = out
        self.decoder = nn.ModuleList(blocks)
        self.head = nn.Conv2d(channels, out_channels, kernel_size=1)

        # Annotated as a local: torch.jit.script warns on instance-level ``dict[...]`` annotations in __init__.
        tap_points: dict[str, tuple[str, int]] = {
            "low": ("encoder.stage2", STAGE_STRIDES[1]),
            "mid": ("encoder.stage3", STAGE_STRIDES[2]),
            "high": ("encoder.stage5", STAGE_STRIDES[4]),
        }
        self.tap_points = tap_points
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` (``B, in_channels, H, W``, H and W divisible by 32) into logits ``B, out_channels, H, W``."""
        check_input(x, "MobileNetV2UNet", self.in_channels, 32)
        features = self.encoder(x)
        y = features[4]
        for i, block in enumerate(self.decoder):
            y = F.interpolate(y, scale_factor=2.0, mode="bilinear", align_corners=False)
            y = block(torch.cat([y, features[3 - i]], dim=1))
        y = self.head(y)
        return F.interpolate(y, scale_factor=2.0, mode="bilinear", align_corners=False)
