"""TransUNet (R50-ViT-B/16 hybrid) of Chen et al. 2021, "TransUNet: Transformers Make Strong Encoders for Medical
Image Segmentation" (arXiv:2102.04306), written from the published architecture.

Layout (defaults = paper scale):

* hybrid stem: a ResNet-50 v2-style CNN with weight-standardised convolutions and GroupNorm. ``root`` is a 7x7
  stride-2 conv + GroupNorm + ReLU (stride 2, 64 channels, skip), a 3x3 stride-2 max-pool (stride 4), then three
  stages of bottleneck units, depths (3, 4, 9), outputs 256 (stride 4, skip), 512 (stride 8, skip) and 1024 channels
  (stride 16); the first unit of stages 2 and 3 has stride 2 and every first unit a projection shortcut;
* patch embedding: a 1x1 conv (1024 -> 768) on the stride-16 map, learned position embeddings, dropout;
* 12 pre-norm transformer layers (12 heads, MLP 3072, GELU) and a final LayerNorm;
* cascaded upsampler: tokens back to a 2-D map, ``conv_more`` (3x3 conv 768 -> 512 + BN + ReLU), four decoder blocks
  (bilinear x2, concat skip, two 3x3 conv + BN + ReLU) with channels (256, 128, 64, 16), a 3x3 segmentation head.

Parameter counts at 224 x 224, 9 classes: 105,277,081 with ``in_channels=3`` (exactly the reference implementation's
count) and 105,270,809 with ``in_channels=1``. The CPU preset :func:`transunet_small` has 518,177 parameters
(``in_channels=1``, 9 classes).

Differences from the reference PyTorch port (github.com/Beckschen/TransUNet):

* the max-pool after ``root`` uses padding 1 (output exactly H/4) instead of padding 0 followed by zero-padding the
  stage-1 output up to H/4 at its bottom/right edge;
* the projection-shortcut GroupNorm uses 32 groups and eps 1e-6 like every other GroupNorm (as in the original JAX
  model whose weights are loaded) instead of ``GroupNorm(cout, cout)`` with eps 1e-5; same parameter count;
* a GroupNorm over C channels uses ``gcd(32, C)`` groups, which is 32 at paper scale and lets narrow presets work;
* ``conv_more`` outputs ``8 * resnet_width`` channels (512 at paper scale, where the reference hard-codes 512);
* the input is not repeated to 3 channels: the root conv has ``in_channels`` inputs, and
  :meth:`TransUNet.load_pretrained` sums (or averages) the pretrained root kernel over its input channels;
* position embeddings are bicubic-interpolated at forward time when the token grid differs from the one built for.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SMALL_CONFIG", "TransUNet", "TokensToMap", "transunet_small"]

logger = logging.getLogger(__name__)

_STRIDE = 16


def _group_norm(channels: int, eps: float = 1e-6) -> nn.GroupNorm:
    """GroupNorm with 32 groups when ``channels`` allows it (``gcd(32, channels)`` groups otherwise)."""
    return nn.GroupNorm(math.gcd(32, channels), channels, eps=eps)


class StdConv2d(nn.Conv2d):
    """Conv2d with weight standardisation: each output filter has mean 0 and variance 1 over (in, kh, kw)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(self.weight, dim=(1, 2, 3), keepdim=True, unbiased=False)
        weight = (self.weight - mean) / torch.sqrt(var + 1e-5)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class Bottleneck(nn.Module):
    """ResNet v2-style bottleneck of the hybrid stem: 1x1 -> 3x3 (stride) -> 1x1, GroupNorm, ReLU after the sum."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = StdConv2d(in_channels, mid_channels, 1, bias=False)
        self.gn1 = _group_norm(mid_channels)
        self.conv2 = StdConv2d(mid_channels, mid_channels, 3, stride=stride, padding=1, bias=False)
        self.gn2 = _group_norm(mid_channels)
        self.conv3 = StdConv2d(mid_channels, out_channels, 1, bias=False)
        self.gn3 = _group_norm(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv_proj: nn.Module | None = None
        self.gn_proj: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.conv_proj = StdConv2d(in_channels, out_channels, 1, stride=stride, bias=False)
            self.gn_proj = _group_norm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x
        if self.conv_proj is not None and self.gn_proj is not None:
            residual = self.gn_proj(self.conv_proj(x))
        y = self.relu(self.gn1(self.conv1(x)))
        y = self.relu(self.gn2(self.conv2(y)))
        y = self.gn3(self.conv3(y))
        return self.relu(residual + y)


class HybridResNet(nn.Module):
    """ResNet-50 v2-style stem (root + three stages) returning the stride-16 map and the skips (deepest first)."""

    def __init__(self, in_channels: int, width: int, depths: Sequence[int]) -> None:
        super().__init__()
        self.width = width
        self.root = nn.Sequential()
        self.root.add_module("conv", StdConv2d(in_channels, width, 7, stride=2, padding=3, bias=False))
        self.root.add_module("gn", _group_norm(width))
        self.root.add_module("relu", nn.ReLU(inplace=True))
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        stages = []
        cin = width
        for i, depth in enumerate(depths):
            cout, cmid = width * 4 * 2**i, width * 2**i
            units = [Bottleneck(cin, cout, cmid, stride=1 if i == 0 else 2)]
            units += [Bottleneck(cout, cout, cmid) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*units))
            cin = cout
        self.stage1, self.stage2, self.stage3 = stages
        self.out_channels = cin

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        root = self.root(x)
        low = self.stage1(self.pool(root))
        mid = self.stage2(low)
        return self.stage3(mid), [mid, low, root]


class Attention(nn.Module):
    """Multi-head self-attention with separate query/key/value/out projections (with bias)."""

    def __init__(self, hidden_size: int, num_heads: int, dropout_rate: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.out = nn.Linear(hidden_size, hidden_size)
        self.dropout_rate = dropout_rate
        self.proj_dropout = nn.Dropout(dropout_rate)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        p = self.dropout_rate if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        return self.proj_dropout(self.out(y.transpose(1, 2).flatten(2)))


class Mlp(nn.Module):
    """Transformer MLP: Linear -> GELU -> dropout -> Linear -> dropout."""

    def __init__(self, hidden_size: int, mlp_dim: int, dropout_rate: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, hidden_size)
        self.act = nn.GELU()
        self.dropout = nn.Dropout(dropout_rate)
        for fc in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.normal_(fc.bias, std=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.dropout(self.act(self.fc1(x)))))


class TransformerLayer(nn.Module):
    """Pre-norm transformer layer: x + MSA(LN(x)), then x + MLP(LN(x))."""

    def __init__(
        self, hidden_size: int, num_heads: int, mlp_dim: int, dropout_rate: float, attention_dropout_rate: float
    ) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(hidden_size, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads, attention_dropout_rate)
        self.ffn_norm = nn.LayerNorm(hidden_size, eps=1e-6)
        self.ffn = Mlp(hidden_size, mlp_dim, dropout_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attention_norm(x))
        return x + self.ffn(self.ffn_norm(x))


class TokensToMap(nn.Module):
    """Parameter-free reshape of tokens ``B, h*w, C`` into a map ``B, C, h, w`` (a hookable tap point)."""

    def forward(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], height, width)


class ConvBNReLU(nn.Sequential):
    """3x3 conv (no bias) + BatchNorm + ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class DecoderBlock(nn.Module):
    """Bilinear x2 upsampling (align_corners=True), optional skip concatenation, two ConvBNReLU."""

    def __init__(self, in_channels: int, out_channels: int, skip_channels: int) -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.conv1 = ConvBNReLU(in_channels + skip_channels, out_channels)
        self.conv2 = ConvBNReLU(out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = self.up(x)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class CascadedUpsampler(nn.Module):
    """The TransUNet decoder: ``conv_more`` then four decoder blocks, the first three fed by the CNN skips."""

    def __init__(
        self, hidden_size: int, head_channels: int, decoder_channels: Sequence[int], skip_channels: Sequence[int]
    ):
        super().__init__()
        self.conv_more = ConvBNReLU(hidden_size, head_channels)
        ins = [head_channels, *decoder_channels[:-1]]
        self.blocks = nn.ModuleList(
            DecoderBlock(cin, cout, cskip)
            for cin, cout, cskip in zip(ins, decoder_channels, skip_channels, strict=True)
        )

    def forward(self, x: torch.Tensor, skips: Sequence[torch.Tensor]) -> torch.Tensor:
        x = self.conv_more(x)
        for i, block in enumerate(self.blocks):
            x = block(x, skips[i] if i < len(skips) else None)
        return x


def _check_positive(name: str, value: int | float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"TransUNet: {name} must be {'>= 0' if allow_zero else 'positive'}, got {value}")


class TransUNet(nn.Module):
    """TransUNet: R50-ViT-B/16 hybrid encoder with a cascaded-upsampler decoder (Chen et al. 2021).

    Args:
        in_channels: input channels (the root conv takes exactly these; no repetition to 3 channels).
        out_channels: number of classes (logit channels).
        img_size: spatial size the position embeddings are built for (int or (H, W)), divisible by 16. Other sizes
            divisible by 16 work too: the embeddings are bicubic-interpolated to the token grid at forward time.
        hidden_size: transformer width.
        num_layers: number of transformer layers.
        num_heads: attention heads (must divide ``hidden_size``).
        mlp_dim: hidden width of the transformer MLP.
        resnet_depths: number of bottleneck units of the three CNN stages.
        resnet_width: CNN width base; stage outputs are 4, 8 and 16 times it, skips (8, 4, 1) times it.
        decoder_channels: output channels of the four decoder blocks.
        dropout_rate: dropout after the position embedding and in the MLP.
        attention_dropout_rate: dropout on the attention weights and after the attention output projection.

    Attributes:
        tap_points: tap name -> (sub-module path in ``named_modules()``, output stride), all ``B, C, H, W`` maps:
            ``low`` (stage 1, ``4 * resnet_width`` channels, stride 4), ``mid`` (stage 2, stride 8) and ``high`` (the
            transformer encoder output as a map, ``hidden_size`` channels, stride 16).

    Raises:
        ValueError: for a non-positive size, ``hidden_size`` not divisible by ``num_heads``, ``resnet_depths`` not of
            length 3, ``decoder_channels`` not of length 4, or ``img_size`` not divisible by 16.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 9,
        img_size: int | tuple[int, int] = 224,
        hidden_size: int = 768,
        num_layers: int = 12,
        num_heads: int = 12,
        mlp_dim: int = 3072,
        resnet_depths: Sequence[int] = (3, 4, 9),
        resnet_width: int = 64,
        decoder_channels: Sequence[int] = (256, 128, 64, 16),
        dropout_rate: float = 0.1,
        attention_dropout_rate: float = 0.0,
    ) -> None:
        super().__init__()
        size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if len(size) != 2:
            raise ValueError(f"TransUNet: img_size must be an int or (H, W), got {img_size}")
        for name, value in (
            ("in_channels", in_channels),
            ("out_channels", out_channels),
            ("hidden_size", hidden_size),
            ("num_layers", num_layers),
            ("num_heads", num_heads),
            ("mlp_dim", mlp_dim),
            ("resnet_width", resnet_width),
        ):
            _check_positive(name, value)
        for value in size:
            _check_positive("img_size", value)
        if any(s % _STRIDE for s in size):
            raise ValueError(f"TransUNet: img_size must be divisible by {_STRIDE}, got {img_size}")
        if hidden_size % num_heads:
            raise ValueError(f"TransUNet: hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})")
        if len(resnet_depths) != 3:
            raise ValueError(f"TransUNet: resnet_depths must have 3 entries, got {tuple(resnet_depths)}")
        for depth in resnet_depths:
            _check_positive("resnet_depths entry", depth)
        if len(decoder_channels) != 4:
            raise ValueError(f"TransUNet: decoder_channels must have 4 entries, got {tuple(decoder_channels)}")
        for channels in decoder_channels:
            _check_positive("decoder_channels entry", channels)
        for name, rate in (("dropout_rate", dropout_rate), ("attention_dropout_rate", attention_dropout_rate)):
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"TransUNet: {name} must be in [0, 1), got {rate}")

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.grid_size = (size[0] // _STRIDE, size[1] // _STRIDE)

        self.hybrid = HybridResNet(in_channels, resnet_width, resnet_depths)
        self.patch_embeddings = nn.Conv2d(self.hybrid.out_channels, hidden_size, kernel_size=1)
        self.position_embeddings = nn.Parameter(torch.zeros(1, self.grid_size[0] * self.grid_size[1], hidden_size))
        self.embedding_dropout = nn.Dropout(dropout_rate)
        self.layers = nn.ModuleList(
            TransformerLayer(hidden_size, num_heads, mlp_dim, dropout_rate, attention_dropout_rate)
            for _ in range(num_layers)
        )
        self.encoder_norm = nn.LayerNorm(hidden_size, eps=1e-6)
        self.encoder_map = TokensToMap()
        skip_channels = (8 * resnet_width, 4 * resnet_width, resnet_width, 0)
        self.decoder = CascadedUpsampler(hidden_size, 8 * resnet_width, decoder_channels, skip_channels)
        self.segmentation_head = nn.Conv2d(decoder_channels[-1], out_channels, kernel_size=3, padding=1)

        self.tap_points: dict[str, tuple[str, int]] = {
            "low": ("hybrid.stage1", 4),
            "mid": ("hybrid.stage2", 8),
            "high": ("encoder_map", 16),
        }

    def _position_embeddings(self, grid: tuple[int, int]) -> torch.Tensor:
        if grid == self.grid_size:
            return self.position_embeddings
        return _resize_position_embeddings(self.position_embeddings, self.grid_size, grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x``.

        Args:
            x: images ``B, in_channels, H, W`` with H and W divisible by 16.

        Returns:
            Logits ``B, out_channels, H, W``.

        Raises:
            ValueError: when H or W is not divisible by 16.
        """
        height, width = int(x.shape[-2]), int(x.shape[-1])
        if height % _STRIDE or width % _STRIDE:
            raise ValueError(f"TransUNet needs H and W divisible by {_STRIDE}, got {height}x{width}")
        features, skips = self.hybrid(x)
        embedded = self.patch_embeddings(features)
        grid = (int(embedded.shape[-2]), int(embedded.shape[-1]))
        tokens = embedded.flatten(2).transpose(1, 2)
        tokens = self.embedding_dropout(tokens + self._position_embeddings(grid))
        for layer in self.layers:
            tokens = layer(tokens)
        encoded = self.encoder_map(self.encoder_norm(tokens), grid[0], grid[1])
        return self.segmentation_head(self.decoder(encoded, skips))

    # ----------------------------------------------------------------------------------------------- pretrained
    def _pretrained_layout(self) -> list[tuple[str, str, Callable[[np.ndarray], np.ndarray]]]:
        """(our parameter name, npz key, converter to our layout) for everything the ViT npz format covers."""

        def conv(a: np.ndarray) -> np.ndarray:  # HWIO -> OIHW
            return a.transpose(3, 2, 0, 1)

        def dense(a: np.ndarray) -> np.ndarray:  # (in, out) -> (out, in)
            return a.T

        def flat(a: np.ndarray) -> np.ndarray:
            return a.reshape(-1)

        def qkv_kernel(a: np.ndarray) -> np.ndarray:  # (hidden, heads, head_dim) -> (out, in)
            return a.reshape(a.shape[0], -1).T

        def out_kernel(a: np.ndarray) -> np.ndarray:  # (heads, head_dim, hidden) -> (out, in)
            return a.reshape(-1, a.shape[-1]).T

        layout: list[tuple[str, str, Callable[[np.ndarray], np.ndarray]]] = [
            ("hybrid.root.conv.weight", "conv_root/kernel", conv),
            ("hybrid.root.gn.weight", "gn_root/scale", flat),
            ("hybrid.root.gn.bias", "gn_root/bias", flat),
        ]
        for b, stage in enumerate((self.hybrid.stage1, self.hybrid.stage2, self.hybrid.stage3), start=1):
            for u, unit in enumerate(stage, start=1):
                prefix, key = f"hybrid.stage{b}.{u - 1}", f"block{b}/unit{u}"
                names = ["1", "2", "3"] + (["_proj"] if unit.conv_proj is not None else [])
                for n in names:
                    layout.append((f"{prefix}.conv{n}.weight", f"{key}/conv{n}/kernel", conv))
                    layout.append((f"{prefix}.gn{n}.weight", f"{key}/gn{n}/scale", flat))
                    layout.append((f"{prefix}.gn{n}.bias", f"{key}/gn{n}/bias", flat))
        layout += [
            ("patch_embeddings.weight", "embedding/kernel", conv),
            ("patch_embeddings.bias", "embedding/bias", flat),
            ("position_embeddings", "Transformer/posembed_input/pos_embedding", lambda a: a),
            ("encoder_norm.weight", "Transformer/encoder_norm/scale", flat),
            ("encoder_norm.bias", "Transformer/encoder_norm/bias", flat),
        ]
        for i in range(len(self.layers)):
            prefix, key = f"layers.{i}", f"Transformer/encoderblock_{i}"
            attn = f"{key}/MultiHeadDotProductAttention_1"
            for ours, theirs in (("attention_norm", "LayerNorm_0"), ("ffn_norm", "LayerNorm_2")):
                layout.append((f"{prefix}.{ours}.weight", f"{key}/{theirs}/scale", flat))
                layout.append((f"{prefix}.{ours}.bias", f"{key}/{theirs}/bias", flat))
            for name in ("query", "key", "value"):
                layout.append((f"{prefix}.attn.{name}.weight", f"{attn}/{name}/kernel", qkv_kernel))
                layout.append((f"{prefix}.attn.{name}.bias", f"{attn}/{name}/bias", flat))
            layout.append((f"{prefix}.attn.out.weight", f"{attn}/out/kernel", out_kernel))
            layout.append((f"{prefix}.attn.out.bias", f"{attn}/out/bias", flat))
            for j in (1, 2):
                layout.append((f"{prefix}.ffn.fc{j}.weight", f"{key}/MlpBlock_3/Dense_{j - 1}/kernel", dense))
                layout.append((f"{prefix}.ffn.fc{j}.bias", f"{key}/MlpBlock_3/Dense_{j - 1}/bias", flat))
        return layout

    def load_pretrained(self, path: str | os.PathLike, strict: bool = False) -> dict[str, list[str]]:
        """Load the encoder from a local Google ViT ``.npz`` checkpoint of R50+ViT-B_16 (nothing is downloaded).

        Kernels are converted to PyTorch layouts (conv HWIO -> OIHW, Dense transposed, attention kernels reshaped),
        a class token in the position embedding is dropped and its grid bicubic-resized to ours when it differs,
        and the root conv kernel is summed over its input channels for ``in_channels=1`` (averaged and tiled
        otherwise). The decoder and segmentation head are not in the format and keep their initialisation. Every
        tensor is converted and checked before any is copied, so a failed load leaves the model untouched.

        Args:
            path: the ``.npz`` file.
            strict: raise when an encoder parameter of ours has no key in the file.

        Returns:
            Report ``{"loaded": [...], "missing": [...], "unexpected": [...], "resized": [...], "skipped": [...]}``:
            our parameter names loaded, our encoder parameters absent from the file, file keys not used, our
            parameters loaded with a resized/adapted tensor (position embedding, root conv) and our parameters the
            format never holds (decoder, segmentation head).

        Raises:
            FileNotFoundError: when ``path`` does not exist.
            ValueError: when a file tensor cannot be converted to our parameter's shape (names the key and shapes).
            RuntimeError: with ``strict=True``, when parameters are missing from the file (names them).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"TransUNet pretrained weights not found: {path}")
        with np.load(path) as npz:
            weights = {key: npz[key] for key in npz.files}
        params = dict(self.named_parameters())
        converted: dict[str, torch.Tensor] = {}
        report: dict[str, list[str]] = {"loaded": [], "missing": [], "unexpected": [], "resized": [], "skipped": []}
        used: set[str] = set()
        for name, key, convert in self._pretrained_layout():
            if key not in weights:
                report["missing"].append(name)
                continue
            used.add(key)
            target = params[name]
            array = weights[key]
            try:
                value = convert(array)
                if name == "position_embeddings":
                    tensor, resized = self._convert_position_embeddings(np.asarray(value, dtype=np.float32))
                elif name == "hybrid.root.conv.weight":
                    tensor, resized = _adapt_input_channels(torch.from_numpy(np.ascontiguousarray(value)), target)
                else:
                    tensor, resized = torch.from_numpy(np.ascontiguousarray(value)), False
            except (ValueError, RuntimeError) as err:
                raise ValueError(
                    f"TransUNet: cannot convert '{key}' of shape {tuple(array.shape)} to '{name}' of shape "
                    f"{tuple(target.shape)}: {err}"
                ) from err
            if tuple(tensor.shape) != tuple(target.shape):
                raise ValueError(
                    f"TransUNet: '{key}' of shape {tuple(array.shape)} does not fit '{name}' of shape "
                    f"{tuple(target.shape)} (converted shape {tuple(tensor.shape)})"
                )
            converted[name] = tensor
            if resized:
                report["resized"].append(name)
        if strict and report["missing"]:
            raise RuntimeError(
                f"TransUNet: {len(report['missing'])} parameters missing from {path}: {report['missing']}"
            )
        with torch.no_grad():
            for name, tensor in converted.items():
                params[name].copy_(tensor.to(dtype=params[name].dtype))
        report["loaded"] = list(converted)
        report["unexpected"] = sorted(set(weights) - used)
        expected = {name for name, _, _ in self._pretrained_layout()}
        report["skipped"] = [name for name in params if name not in expected]
        logger.info(
            "TransUNet: loaded %d tensors from %s (%d missing, %d unexpected, %d resized, %d not in format)",
            len(report["loaded"]),
            path,
            len(report["missing"]),
            len(report["unexpected"]),
            len(report["resized"]),
            len(report["skipped"]),
        )
        return report

    def _convert_position_embeddings(self, posemb: np.ndarray) -> tuple[torch.Tensor, bool]:
        """Drop a class token and resize the (square) file grid to ours; returns (1, n, hidden) and whether resized."""
        if posemb.ndim == 2:
            posemb = posemb[None]
        if posemb.ndim != 3 or posemb.shape[0] != 1 or posemb.shape[2] != self.hidden_size:
            raise ValueError(f"expected (1, tokens, {self.hidden_size})")
        tokens = posemb.shape[1]
        side = math.isqrt(tokens)
        if side * side != tokens:  # a class token first
            side = math.isqrt(tokens - 1)
            if side * side != tokens - 1:
                raise ValueError(f"{tokens} tokens are neither a square grid nor a square grid plus a class token")
            posemb = posemb[:, 1:]
        tensor = torch.from_numpy(np.ascontiguousarray(posemb))
        if (side, side) == self.grid_size:
            return tensor, False
        return _resize_position_embeddings(tensor, (side, side), self.grid_size), True


def _resize_position_embeddings(posemb: torch.Tensor, old: tuple[int, int], new: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of position embeddings ``1, old_h*old_w, C`` on their 2-D grid to ``1, new_h*new_w, C``."""
    channels = posemb.shape[-1]
    grid = posemb.reshape(1, old[0], old[1], channels).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=new, mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, new[0] * new[1], channels)


def _adapt_input_channels(weight: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Fit a conv kernel ``O, I, kh, kw`` to ``target``'s input channels: sum for 1, tile and rescale otherwise."""
    have, want = weight.shape[1], target.shape[1]
    if have == want or weight.shape[0] != target.shape[0]:
        return weight, False
    if want == 1:
        return weight.sum(dim=1, keepdim=True), True
    repeats = math.ceil(want / have)
    return weight.repeat(1, repeats, 1, 1)[:, :want] * (have / want), True


# The CPU preset's architecture arguments (everything but channels, size and dropout).
SMALL_CONFIG: dict[str, Any] = {
    "hidden_size": 96,
    "num_layers": 2,
    "num_heads": 4,
    "mlp_dim": 192,
    "resnet_depths": (1, 1, 1),
    "resnet_width": 16,
    "decoder_channels": (32, 16, 8, 8),
}


def transunet_small(
    in_channels: int = 1, out_channels: int = 9, img_size: int | tuple[int, int] = 96, **kwargs: float
) -> TransUNet:
    """A narrow TransUNet for CPU tests: hidden 96, 2 layers, 4 heads, MLP 192, ResNet depths (1, 1, 1), width 16,
    decoder channels (32, 16, 8, 8); 518,177 parameters with ``in_channels=1`` and 9 classes.

    Args:
        in_channels: input channels.
        out_channels: number of classes.
        img_size: size the position embeddings are built for (divisible by 16).
        **kwargs: ``dropout_rate`` / ``attention_dropout_rate`` overrides.

    Returns:
        The network.
    """
    return TransUNet(in_channels=in_channels, out_channels=out_channels, img_size=img_size, **SMALL_CONFIG, **kwargs)
