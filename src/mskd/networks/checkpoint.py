"""Load network weights from checkpoints written by the bundles (MONAI ``CheckpointSaver``)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from mskd.io import UnsafeCheckpointError, load_checkpoint

__all__ = ["count_parameters", "load_weights", "read_state_dict", "state_dict_mismatch"]


def count_parameters(network: nn.Module) -> int:
    """Number of parameters of ``network`` (frozen ones included)."""
    return sum(p.numel() for p in network.parameters())


def read_state_dict(path: str | os.PathLike, role: str = "network", mmap: bool = False) -> dict[str, torch.Tensor]:
    """Read the state dict of a checkpoint saved by ``CheckpointSaver`` (plain, or under a ``"model"`` key).

    Args:
        path: checkpoint file.
        role: what the network is ("teacher", "student", ...), used in error messages.
        mmap: map the file instead of reading it (cheap for checks that only need keys and shapes); a file that
            cannot be mapped (the legacy format) is read normally.

    Returns:
        the state dict, on the CPU.

    Raises:
        FileNotFoundError: when ``path`` does not exist (the message says how to produce it).
        ValueError: when the file is not a readable checkpoint or holds no state dict.
        UnsafeCheckpointError: (a ``ValueError``) when the file holds pickled Python objects.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{role} checkpoint not found: {path}. Train the {role} first (see the bundle's docs/README.md) "
            f"or point the config at an existing file."
        )
    try:  # weights only: a file holding pickled Python objects is refused (UnsafeCheckpointError), never run
        state = load_checkpoint(path, f"{role} checkpoint", mmap=mmap)
    except UnsafeCheckpointError:
        raise
    except ValueError:  # truncated or foreign; or, when mapping, the legacy format
        if mmap:
            return read_state_dict(path, role, mmap=False)
        raise
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ValueError(f"{role} checkpoint {path} holds a {type(state).__name__}, not a state dict")
    return state


def state_dict_mismatch(network: nn.Module, state: dict[str, torch.Tensor]) -> str:
    """What keeps ``state`` from loading into ``network``: missing, unexpected and mis-shaped keys (the first three
    of each, and how many); ``""`` when it fits."""
    own = network.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    return "; ".join(
        f"{what}: {keys[:3]}{' ...' if len(keys) > 3 else ''} ({len(keys)})"
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched))
        if keys
    )


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
    state = read_state_dict(path, role)
    details = state_dict_mismatch(network, state)
    if details:
        raise ValueError(
            f"{role} checkpoint {path} does not fit {type(network).__name__} "
            f"(was it written for another architecture or class count?): {details}"
        )
    network.load_state_dict(state)
    return network
