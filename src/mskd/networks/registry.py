"""Networks by name: ours (TransUNet, ENet, ERFNet, ESPNet, MobileNetV2-UNet, a 3D ESPNet) and MONAI's, in 2D and 3D.

A bundle names its teacher and student (``teacher: transunet``, ``student: enet``); this module builds them and
says where their features can be tapped: each network declares tap points ``name -> (module path, stride)`` with
at least ``low`` (an early encoder stage) and ``high`` (the deepest encoder stage). Each entry also says how many
spatial dimensions its network takes (:func:`network_spatial_dims`): 2 for slices ``B, C, H, W``, 3 for volumes
``B, C, D, H, W``; 3D networks carry a ``_3d`` suffix.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from monai.utils import look_up_option
from torch import nn

__all__ = ["NetworkEntry", "default_taps", "get_network", "list_networks", "network_spatial_dims", "tap_points"]

TapPoints = dict[str, tuple[str, int]]


@dataclass(frozen=True)
class NetworkEntry:
    """A registered network.

    Attributes:
        builder: ``(in_channels, out_channels, **kwargs) -> nn.Module``.
        description: one line for ``list_networks`` and the docs.
        taps: ``network -> tap points`` for networks that do not declare ``tap_points`` themselves; ``None`` when
            the network has no default taps (taps must then be given in the config).
        spatial_dims: 2 for a network of slices (``B, C, H, W``), 3 for one of volumes (``B, C, D, H, W``).

    Raises:
        ValueError: when ``spatial_dims`` is not 2 or 3.
    """

    builder: Callable[..., nn.Module]
    description: str
    taps: Callable[[nn.Module], TapPoints] | None = None
    spatial_dims: int = 2

    def __post_init__(self) -> None:
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"NetworkEntry spatial_dims must be 2 or 3, got {self.spatial_dims!r}")


def _ours(module: str, name: str, **defaults: Any) -> Callable[..., nn.Module]:
    """Builder of one of our networks, imported on first use (keeps ``import mskd.networks`` light)."""

    def build(in_channels: int, out_channels: int, **kwargs: Any) -> nn.Module:
        factory = getattr(importlib.import_module(f"mskd.networks.{module}"), name)
        return factory(in_channels=in_channels, out_channels=out_channels, **{**defaults, **kwargs})

    return build


def _monai(name: str, **defaults: Any) -> Callable[..., nn.Module]:
    """Builder of a MONAI network, with our defaults (``spatial_dims`` included) overridable by ``kwargs``."""

    def build(in_channels: int, out_channels: int, **kwargs: Any) -> nn.Module:
        factory = getattr(importlib.import_module("monai.networks.nets"), name)
        return factory(in_channels=in_channels, out_channels=out_channels, **{**defaults, **kwargs})

    return build


def _monai_entry(
    name: str,
    description: str,
    spatial_dims: int,
    taps: Callable[[nn.Module], TapPoints] | None = None,
    **defaults: Any,
) -> NetworkEntry:
    """Entry of a MONAI network built with ``spatial_dims`` (stated once, for the builder and the entry)."""
    return NetworkEntry(_monai(name, spatial_dims=spatial_dims, **defaults), description, taps, spatial_dims)


def _unet_taps(network: nn.Module) -> TapPoints:
    """MONAI ``UNet``: ``low`` = first down block, ``high`` = the bottom block (nested ``SkipConnection``s)."""
    levels = len(network.channels)
    return {
        "low": ("model.0", network.strides[0]),
        "high": ("model" + ".1.submodule" * (levels - 1), math.prod(network.strides)),
    }


def _basic_unet_taps(_network: nn.Module) -> TapPoints:
    return {"low": ("down_1", 2), "mid": ("down_2", 4), "high": ("down_4", 16)}


def _swin_unetr_taps(_network: nn.Module) -> TapPoints:
    return {"low": ("encoder2", 2), "mid": ("encoder3", 4), "high": ("encoder10", 32)}


def _segresnet_taps(network: nn.Module) -> TapPoints:
    """MONAI ``SegResNet``: ``down_layers.i`` runs at stride ``2**i``; ``low`` = the first stride-2 stage, ``mid`` =
    the stride-4 one (when deeper stages follow), ``high`` = the deepest; none for a single-stage network."""
    levels = len(network.down_layers)
    if levels < 2:
        return {}
    points = {"low": ("down_layers.1", 2)}
    if levels > 3:
        points["mid"] = ("down_layers.2", 4)
    points["high"] = (f"down_layers.{levels - 1}", 2 ** (levels - 1))
    return points


def _isotropic(stride: Any) -> int | None:
    """A stride given as an int or as equal per-axis values, as one int; ``None`` when it differs between axes."""
    values = {int(s) for s in stride} if isinstance(stride, list | tuple) else {int(stride)}
    return values.pop() if len(values) == 1 else None


def _dynunet_taps(network: nn.Module) -> TapPoints:
    """MONAI ``DynUNet``: ``input_block``, ``downsamples.i``, ``bottleneck`` run at the cumulative ``strides``;
    ``low`` = the first stage at stride > 1, ``mid`` = the next one (when it is not the deepest), ``high`` =
    ``bottleneck``. None when a stride differs between axes (a tap's stride is one number)."""
    strides = [_isotropic(s) for s in network.strides]
    if None in strides:
        return {}
    paths = ["input_block", *(f"downsamples.{i}" for i in range(len(network.downsamples))), "bottleneck"]
    stages = [(path, math.prod(strides[: i + 1])) for i, path in enumerate(paths)]
    early = [i for i, (_, stride) in enumerate(stages[:-1]) if stride > 1] or [len(stages) - 1]
    points = {"low": stages[early[0]]}
    if early[0] + 1 < len(stages) - 1:
        points["mid"] = stages[early[0] + 1]
    points["high"] = stages[-1]
    return points


_UNET_TEACHER = {"channels": (32, 64, 128, 256), "strides": (2, 2, 2), "num_res_units": 2}
_UNET_TINY = {"channels": (8, 16, 32, 64), "strides": (2, 2, 2), "num_res_units": 1}

_REGISTRY: dict[str, NetworkEntry] = {
    # 2D: slices B, C, H, W
    "transunet": NetworkEntry(
        _ours("transunet", "TransUNet"), "TransUNet R50-ViT-B/16 hybrid (Chen et al. 2021)", spatial_dims=2
    ),
    "transunet_small": NetworkEntry(
        _ours("transunet", "transunet_small"), "TransUNet scaled down for CPU tests and demos", spatial_dims=2
    ),
    "enet": NetworkEntry(_ours("enet", "ENet"), "ENet (Paszke et al. 2016)", spatial_dims=2),
    "erfnet": NetworkEntry(_ours("erfnet", "ERFNet"), "ERFNet (Romera et al. 2017)", spatial_dims=2),
    "espnet": NetworkEntry(_ours("espnet", "ESPNet"), "ESPNet (Mehta et al. 2018)", spatial_dims=2),
    "mobilenetv2_unet": NetworkEntry(
        _ours("mobilenetv2_unet", "MobileNetV2UNet"),
        "MobileNetV2 encoder + light U-shaped decoder",
        spatial_dims=2,
    ),
    "unet": _monai_entry("UNet", "MONAI UNet, 32-256 channels (the CPU teacher)", 2, _unet_taps, **_UNET_TEACHER),
    "tiny_unet": _monai_entry("UNet", "MONAI UNet, 8-64 channels (the tiny student)", 2, _unet_taps, **_UNET_TINY),
    "basic_unet": _monai_entry("BasicUNet", "MONAI BasicUNet", 2, _basic_unet_taps),
    "attention_unet": _monai_entry(
        "AttentionUnet",
        "MONAI AttentionUnet (no default taps)",
        2,
        channels=(16, 32, 64, 128, 256),
        strides=(2, 2, 2, 2),
    ),
    "swin_unetr": _monai_entry("SwinUNETR", "MONAI SwinUNETR in 2D", 2, _swin_unetr_taps, feature_size=24),
    "flexible_unet": _monai_entry(
        "FlexibleUNet",
        "MONAI FlexibleUNet with an EfficientNet-B0 encoder, no pretrained weights (no default taps)",
        2,
        backbone="efficientnet-b0",
        pretrained=False,
    ),
    "segresnet": _monai_entry("SegResNet", "MONAI SegResNet in 2D (no default taps)", 2),
    # 3D: volumes B, C, D, H, W
    "unet_3d": _monai_entry(
        "UNet", "MONAI UNet in 3D, 32-256 channels, 2 residual units (teacher)", 3, _unet_taps, **_UNET_TEACHER
    ),
    "segresnet_3d": _monai_entry(
        "SegResNet",
        "MONAI SegResNet in 3D, 16 initial filters, blocks (1, 2, 2, 4) (teacher)",
        3,
        _segresnet_taps,
        init_filters=16,
        blocks_down=(1, 2, 2, 4),
        blocks_up=(1, 1, 1),
    ),
    "dynunet_3d": _monai_entry(
        "DynUNet",
        "MONAI DynUNet in 3D (nnU-Net-like), 5 levels, 32-320 filters, 3x3x3 kernels (teacher)",
        3,
        _dynunet_taps,
        kernel_size=(3, 3, 3, 3, 3),
        strides=(1, 2, 2, 2, 2),
        upsample_kernel_size=(2, 2, 2, 2),
    ),
    "swin_unetr_3d": _monai_entry(
        "SwinUNETR",
        "MONAI SwinUNETR in 3D, feature size 48 as for BTCV (teacher; D, H, W divisible by 32)",
        3,
        _swin_unetr_taps,
        feature_size=48,
    ),
    "tiny_unet_3d": _monai_entry(
        "UNet", "MONAI UNet in 3D, 8-64 channels, 1 residual unit (student)", 3, _unet_taps, **_UNET_TINY
    ),
    "segresnet_3d_small": _monai_entry(
        "SegResNet",
        "MONAI SegResNet in 3D, 8 initial filters, one block per level (student)",
        3,
        _segresnet_taps,
        init_filters=8,
        blocks_down=(1, 1, 1, 1),
        blocks_up=(1, 1, 1),
    ),
    "espnet_3d": NetworkEntry(
        _ours("espnet3d", "ESPNet3D"),
        "ESPNet-style 3D network: ESP modules of dilated 3x3x3 convolutions (student; D, H, W divisible by 8)",
        spatial_dims=3,
    ),
}


def list_networks() -> dict[str, str]:
    """Registered network names (2D and 3D) and their one-line descriptions."""
    return {name: entry.description for name, entry in _REGISTRY.items()}


def network_spatial_dims(name: str) -> int:
    """How many spatial dimensions the registered network ``name`` takes: 2 (slices) or 3 (volumes).

    Raises:
        ValueError: for an unknown name (the message lists the known ones).
    """
    return look_up_option(name, _REGISTRY).spatial_dims


def get_network(name: str, in_channels: int = 1, out_channels: int = 9, **kwargs: Any) -> nn.Module:
    """Build a registered network.

    Args:
        name: a name from :func:`list_networks` (e.g. ``"transunet"``, ``"enet"``, ``"unet"``).
        in_channels: input channels (1 for CT).
        out_channels: number of classes (background included).
        kwargs: constructor arguments overriding our defaults (e.g. ``channels`` for ``unet``). ``spatial_dims``
            may be given but must be the network's own (:func:`network_spatial_dims`): ``unet`` is 2D,
            ``unet_3d`` is its 3D twin.

    Returns:
        the network; ``tap_points(network)`` gives its default taps.

    Raises:
        ValueError: for an unknown name (the message lists the known ones), non-positive channel counts, or a
            ``spatial_dims`` other than the network's (the message names the networks of that dimension).
    """
    entry = look_up_option(name, _REGISTRY)
    if in_channels < 1 or out_channels < 1:
        raise ValueError(f"{name}: in_channels and out_channels must be >= 1, got {in_channels}, {out_channels}")
    spatial_dims = kwargs.pop("spatial_dims", entry.spatial_dims)
    if spatial_dims != entry.spatial_dims:
        others = [n for n, e in _REGISTRY.items() if e.spatial_dims == spatial_dims]
        hint = f"; the {spatial_dims}D networks are {others}" if others else ""
        raise ValueError(
            f"{name} is a {entry.spatial_dims}D network, got spatial_dims={spatial_dims!r}: leave spatial_dims out "
            f"or choose a network of that dimension{hint}"
        )
    network = entry.builder(in_channels, out_channels, **kwargs)
    if entry.taps is not None and not hasattr(network, "tap_points"):
        network.tap_points = entry.taps(network)
    return network


def tap_points(network: nn.Module) -> TapPoints:
    """Declared tap points ``name -> (module path, output stride)`` of a network built by :func:`get_network`.

    Raises:
        ValueError: when the network declares none (its taps must be named in the config).
    """
    points = getattr(network, "tap_points", None)
    if not points:
        raise ValueError(
            f"{type(network).__name__} has no default tap points; name the sub-modules to tap in the config "
            "(teacher_taps / student_taps: tap name -> module path)"
        )
    return dict(points)


def default_taps(network: nn.Module, names: list[str] | tuple[str, ...] = ("low", "high")) -> dict[str, str]:
    """Tap name -> module path for the named taps of a network (what ``DistillationTrainer`` takes).

    Raises:
        ValueError: when the network does not declare one of ``names``.
    """
    points = tap_points(network)
    missing = [n for n in names if n not in points]
    if missing:
        raise ValueError(f"{type(network).__name__} declares taps {sorted(points)}, not {missing}")
    return {n: points[n][0] for n in names}
