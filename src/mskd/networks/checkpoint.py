"""Load network weights from checkpoints written by the bundles (MONAI ``CheckpointSaver``)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

__all__ = ["load_weights", "count_parameters"]


def count_parameters(network: nn.Module) -> int:
    """Number of parameters of ``network`` (frozen ones included)."""
    return sum(p.numel() for p in network.parameters())


def load_weights(network: nn.Module, path: str | os.PathLike, role: str = "network") -> nn.Module:
    """Load a state dict saved by ``CheckpointSaver`` (plain, or under a ``"model"`` key) into ``network``.

    Args:
        network: the network whose architecture the checkpoint must match.
        path: checkpoint file.
        role: what the network is ("teacher", "student", ...), used in error messages.

    Returns:
        ``network`` with the weights loaded (same object).

    Raises:
        FileNotFoundError: when ``path`` does not exist (the message says how to produce it).
        ValueError: when the file is not a readable checkpoint or was written for another architecture.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{role} checkpoint not found: {path}. Train the {role} first (see the bundle's docs/README.md) "
            f"or point the config at an existing file."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise ValueError(f"{role} checkpoint {path} is not a readable PyTorch checkpoint: {e}") from e
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ValueError(f"{role} checkpoint {path} holds a {type(state).__name__}, not a state dict")
    own = network.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        details = "; ".join(
            f"{what}: {keys[:3]}{' ...' if len(keys) > 3 else ''} ({len(keys)})"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched))
            if keys
        )
        raise ValueError(
            f"{role} checkpoint {path} does not fit {type(network).__name__} "
            f"(was it written for another architecture or class count?): {details}"
        )
    network.load_state_dict(state)
    return network
