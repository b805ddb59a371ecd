"""Networks by name: ours (TransUNet, ENet, ERFNet, ESPNet, MobileNetV2-UNet) and MONAI's 2D-capable ones.

A bundle names its teacher and student (``teacher: transunet``, ``student: enet``); this module builds them and
says where their features can be tapped: each network declares tap points ``name -> (module path, stride)`` with
at least ``low`` (an early encoder stage) and ``high`` (the deepest encoder stage).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from monai.utils import look_up_option
from torch import nn

__all__ = ["NetworkEntry", "default_taps", "get_network", "list_networks", "tap_points"]

TapPoints = dict[str, tuple[str, int]]


@dataclass(frozen=True)
class NetworkEntry:
    """A registered network.

    Attributes:
        builder: ``(in_channels, out_channels, **kwargs) -> nn.Module``.
        description: one line for ``list_networks`` and the docs.
        taps: ``network -> tap points`` for networks that do not declare ``tap_points`` themselves; ``None`` when
            the network has no default taps (taps must then be given in the config).
    """

    builder: Callable[..., nn.Module]
    description: str
    taps: Callable[[nn.Module], TapPoints] | None = None


def _ours(module: str, name: str, **defaults: Any) -> Callable[..., nn.Module]:
    """Builder of one of our networks, imported on first use (keeps ``import mskd.networks`` light)."""

    def build(in_channels: int, out_channels: int, **kwargs: Any) -> nn.Module:
        factory = getattr(importlib.import_module(f"mskd.networks.{module}"), name)
        return factory(in_channels=in_channels, out_channels=out_channels, **{**defaults, **kwargs})

    return build


def _monai(name: str, **defaults: Any) -> Callable[..., nn.Module]:
    """Builder of a MONAI network in 2D, with our defaults overridable by ``kwargs``."""

    def build(in_channels: int, out_channels: int, **kwargs: Any) -> nn.Module:
        factory = getattr(importlib.import_module("monai.networks.nets"), name)
        return factory(in_channels=in_channels, out_channels=out_channels, **{**defaults, **kwargs})

    return build


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


_REGISTRY: dict[str, NetworkEntry] = {
    "transunet": NetworkEntry(_ours("transunet", "TransUNet"), "TransUNet R50-ViT-B/16 hybrid (Chen et al. 2021)"),
    "transunet_small": NetworkEntry(
        _ours("transunet", "transunet_small"), "TransUNet scaled down for CPU tests and demos"
    ),
    "enet": NetworkEntry(_ours("enet", "ENet"), "ENet (Paszke et al. 2016)"),
    "erfnet": NetworkEntry(_ours("erfnet", "ERFNet"), "ERFNet (Romera et al. 2017)"),
    "espnet": NetworkEntry(_ours("espnet", "ESPNet"), "ESPNet (Mehta et al. 2018)"),
    "mobilenetv2_unet": NetworkEntry(
        _ours("mobilenetv2_unet", "MobileNetV2UNet"), "MobileNetV2 encoder + light U-shaped decoder"
    ),
    "unet": NetworkEntry(
        _monai("UNet", spatial_dims=2, channels=(32, 64, 128, 256), strides=(2, 2, 2), num_res_units=2),
        "MONAI UNet, 32-256 channels (the CPU teacher)",
        _unet_taps,
    ),
    "tiny_unet": NetworkEntry(
        _monai("UNet", spatial_dims=2, channels=(8, 16, 32, 64), strides=(2, 2, 2), num_res_units=1),
        "MONAI UNet, 8-64 channels (the tiny student)",
        _unet_taps,
    ),
    "basic_unet": NetworkEntry(_monai("BasicUNet", spatial_dims=2), "MONAI BasicUNet", _basic_unet_taps),
    "attention_unet": NetworkEntry(
        _monai("AttentionUnet", spatial_dims=2, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2)),
        "MONAI AttentionUnet (no default taps)",
    ),
    "swin_unetr": NetworkEntry(
        _monai("SwinUNETR", spatial_dims=2, feature_size=24), "MONAI SwinUNETR in 2D", _swin_unetr_taps
    ),
    "flexible_unet": NetworkEntry(
        _monai("FlexibleUNet", spatial_dims=2, backbone="efficientnet-b0", pretrained=False),
        "MONAI FlexibleUNet with an EfficientNet-B0 encoder, no pretrained weights (no default taps)",
    ),
    "segresnet": NetworkEntry(_monai("SegResNet", spatial_dims=2), "MONAI SegResNet in 2D (no default taps)"),
}


def list_networks() -> dict[str, str]:
    """Registered network names and their one-line descriptions."""
    return {name: entry.description for name, entry in _REGISTRY.items()}


def get_network(name: str, in_channels: int = 1, out_channels: int = 9, **kwargs: Any) -> nn.Module:
    """Build a registered network.

    Args:
        name: a name from :func:`list_networks` (e.g. ``"transunet"``, ``"enet"``, ``"unet"``).
        in_channels: input channels (1 for CT).
        out_channels: number of classes (background included).
        kwargs: constructor arguments overriding our defaults (e.g. ``channels`` for ``unet``).

    Returns:
        the network; ``tap_points(network)`` gives its default taps.

    Raises:
        ValueError: for an unknown name (the message lists the known ones) or non-positive channel counts.
    """
    entry = look_up_option(name, _REGISTRY)
    if in_channels < 1 or out_channels < 1:
        raise ValueError(f"{name}: in_channels and out_channels must be >= 1, got {in_channels}, {out_channels}")
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
