"""Networks: the registry (teachers and students by name), feature taps and checkpoint helpers."""

from __future__ import annotations

import importlib
from typing import Any

from .checkpoint import (
    UndescribedCheckpointWarning,
    checkpoint_metadata,
    count_parameters,
    load_network,
    load_weights,
    metadata_mismatch,
    read_checkpoint,
    read_state_dict,
    save_weights,
    state_dict_mismatch,
)
from .registry import default_taps, get_network, list_networks, network_spatial_dims, tap_points
from .taps import FeatureTaps, unwrap_network

# Network classes are imported on first access, so `import mskd.networks` stays light.
_LAZY = {
    "TransUNet": "transunet",
    "ENet": "enet",
    "ERFNet": "erfnet",
    "ESPNet": "espnet",
    "ESPNet3D": "espnet3d",
    "MobileNetV2UNet": "mobilenetv2_unet",
}

__all__ = [
    "FeatureTaps",
    "UndescribedCheckpointWarning",
    "checkpoint_metadata",
    "count_parameters",
    "default_taps",
    "get_network",
    "list_networks",
    "load_network",
    "load_weights",
    "metadata_mismatch",
    "network_spatial_dims",
    "read_checkpoint",
    "read_state_dict",
    "save_weights",
    "state_dict_mismatch",
    "tap_points",
    "unwrap_network",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
