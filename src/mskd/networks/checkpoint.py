"""Checkpoints that describe themselves: network weights saved with what is needed to use them.

A checkpoint mskd writes (:class:`mskd.handlers.CheckpointSaver` with ``metadata``, or :func:`save_weights`) is::

    {"model": <state dict: tensors>, "mskd": <metadata: plain values>}

The metadata (:func:`checkpoint_metadata`) names the network and its constructor arguments, the input channels and
class count, the in-plane image size it was trained at, the organs, the intensity window, the run that wrote it and
a hash of that run's executed config. Only tensors and plain values (str, int, float, bool, None, lists, dicts), so
the file still loads with ``torch.load(..., weights_only=True)``. With it, a checkpoint rebuilds its own network
(:func:`load_network`, as nnU-Net's do), and a command refuses to use it at another size, for another network or
class count, or under another run's name (:func:`metadata_mismatch`).

Plain state dicts (older checkpoints, other tools; also under a ``"model"`` key) are still read; a check that cannot
be made on them warns (:class:`UndescribedCheckpointWarning`).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from numbers import Integral, Real
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from mskd.io import UnsafeCheckpointError, load_checkpoint, save_checkpoint

__all__ = [
    "METADATA_KEY",
    "METADATA_VERSION",
    "WEIGHTS_KEY",
    "Mismatch",
    "UndescribedCheckpointWarning",
    "checkpoint_metadata",
    "count_parameters",
    "load_network",
    "load_weights",
    "metadata_mismatch",
    "metadata_mismatches",
    "read_checkpoint",
    "read_state_dict",
    "save_weights",
    "state_dict_mismatch",
]

WEIGHTS_KEY = "model"  # the state dict's key: MONAI's CheckpointLoader(load_dict={"model": net}) reads it
METADATA_KEY = "mskd"
METADATA_VERSION = 1  # bumped when the metadata's keys change meaning; a newer checkpoint is refused
_REQUIRED = {"network": str, "network_kwargs": dict, "in_channels": int, "num_classes": int, "image_size": int}

# metadata key -> (config key of the setting, what the checkpoint says against what the run has); {role} is the
# network's role ("student", "teacher"), whose config key names the network
_MISMATCH = {
    "network": ("{role}", "was trained as {theirs}, this run builds {ours}"),
    "network_kwargs": ("{role}_kwargs", "was built with {role}_kwargs {theirs}, this run with {ours}"),
    "num_classes": ("num_classes", "predicts {theirs} classes, this run's task has {ours}"),
    "image_size": ("image_size", "was trained on {theirs}x{theirs} slices, this run uses {ours}x{ours}"),
    "run_name": ("ckpt_path", "was written by run {theirs}, this run evaluates {ours}"),
}
_IN_THE_WEIGHTS = {"network", "network_kwargs", "num_classes"}  # what the weights' shapes tell without metadata


class Mismatch(NamedTuple):
    """One way a checkpoint does not suit a run (:func:`metadata_mismatches`).

    Attributes:
        config_key: the config key of the run's setting that differs (``image_size``, ``student``, ...).
        message: what differs, naming the checkpoint (``student checkpoint m.pt was trained on 48x48 slices, this
            run uses 224x224``).
        value: the setting's value that suits the checkpoint, as a command line takes it (``48``; a mapping as quoted
            JSON, ``'{"channels": [4, 8]}'``), or ``None`` when no value of the run does.
        fix: what to do instead when there is no such value (``it is a model of another task; ...``), else ``None``.
    """

    config_key: str
    message: str
    value: Any = None
    fix: str | None = None


class UndescribedCheckpointWarning(UserWarning):
    """A plain state dict was used where a self-describing checkpoint could have been checked."""


def count_parameters(network: nn.Module) -> int:
    """Number of parameters of ``network`` (frozen ones included)."""
    return sum(p.numel() for p in network.parameters())


def _plain(value: Any, where: str) -> Any:
    """``value`` as plain values only (tuples as lists, numpy numbers as Python ones), for ``weights_only`` loading.

    Raises:
        TypeError: naming ``where`` and the value, for anything else (a tensor, an object, a non-string key).
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, Integral):
        return int(value)
    if isinstance(value, Real):
        return float(value)
    if isinstance(value, Mapping):
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise TypeError(f"checkpoint metadata {where} must have string keys, got {bad[0]!r}")
        return {k: _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(
        f"checkpoint metadata {where} must hold plain values (str, int, float, bool, None, lists, dicts), "
        f"got a {type(value).__name__}: {value!r}"
    )


def checkpoint_metadata(
    network: str,
    num_classes: int,
    image_size: int,
    network_kwargs: Mapping[str, Any] | None = None,
    in_channels: int = 1,
    organs: Sequence[str] | None = None,
    hu_window: Sequence[float] | None = None,
    run_name: str | None = None,
    config: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """What a checkpoint needs to describe itself (the ``"mskd"`` entry saved beside its weights).

    Args:
        network: the registered network name (``mskd.networks.list_networks()``).
        num_classes: output channels, background included.
        image_size: the in-plane size (``H = W``) of the slices it was trained on.
        network_kwargs: its constructor arguments (the bundle's ``student_kwargs`` / ``teacher_kwargs``).
        in_channels: input channels (1 for CT).
        organs: the foreground class names in label order.
        hu_window: the intensity window mapped to ``[0, 1]`` in training (``[0, 1]`` for data already windowed).
        run_name: the run that trained it (``<model>-<method>-s<seed>``).
        config: the run's executed config file; its SHA-256 is stored (``sha256sum`` of the file gives the same).

    Returns:
        ``{"format", "network", "network_kwargs", "in_channels", "num_classes", "image_size", "organs", "hu_window",
        "run_name", "config_sha256"}``, plain values only.

    Raises:
        ValueError: for a non-positive size or count.
        TypeError: for a value that is not plain (e.g. an object in ``network_kwargs``).
        FileNotFoundError: when ``config`` is given but does not exist.
    """
    sizes = {"in_channels": in_channels, "num_classes": num_classes, "image_size": image_size}
    bad = {k: v for k, v in sizes.items() if isinstance(v, bool) or not isinstance(v, Integral) or v < 1}
    if bad:
        raise ValueError(f"checkpoint metadata: {bad} must be integers >= 1")
    digest = None
    if config is not None:
        digest = hashlib.sha256(Path(config).read_bytes()).hexdigest()
    return _plain(
        {
            "format": METADATA_VERSION,
            "network": network,
            "network_kwargs": dict(network_kwargs or {}),
            **sizes,
            "organs": organs,
            "hu_window": hu_window,
            "run_name": run_name,
            "config_sha256": digest,
        },
        METADATA_KEY,
    )


def save_weights(
    network: nn.Module | Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, Any]
) -> Path:
    """Save a self-describing checkpoint ``{"model": state dict, "mskd": metadata}``, atomically.

    Args:
        network: the network (unwrapped from DDP by the caller) or its state dict.
        path: the file to write (its folder is created).
        metadata: from :func:`checkpoint_metadata`.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ValueError: when ``metadata`` lacks a key a reader needs.
        FloatingPointError: when a weight holds NaN or Inf (nothing is written).
    """
    state = network.state_dict() if isinstance(network, nn.Module) else dict(network)
    checked = _checked_metadata(_plain(dict(metadata), METADATA_KEY), f"metadata for {path}")
    return save_checkpoint({WEIGHTS_KEY: state, METADATA_KEY: checked}, path, "checkpoint")


def _checked_metadata(metadata: Any, where: str) -> dict[str, Any]:
    """``metadata`` when it has every key a reader needs, with the right types; else a ``ValueError``."""
    if not isinstance(metadata, dict):
        raise ValueError(f"{where}: the '{METADATA_KEY}' entry is a {type(metadata).__name__}, not a dict")
    version = metadata.get("format", METADATA_VERSION)
    if not isinstance(version, int) or version > METADATA_VERSION:
        raise ValueError(
            f"{where}: metadata format {version!r} is newer than this mskd's ({METADATA_VERSION}); upgrade mskd"
        )
    wrong = [k for k, kind in _REQUIRED.items() if not isinstance(metadata.get(k), kind)]
    if wrong:
        raise ValueError(
            f"{where}: the '{METADATA_KEY}' entry lacks {wrong} (or holds another type); it must name the network, "
            "its kwargs, channels, classes and image size (see mskd.networks.checkpoint_metadata)"
        )
    return metadata


def read_checkpoint(
    path: str | os.PathLike, role: str = "network", mmap: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Read the weights of a checkpoint and, when it describes itself, its metadata.

    Args:
        path: checkpoint file: ``{"model": state dict, "mskd": metadata}``, a plain state dict, or a dict holding
            one under ``"model"`` (MONAI's ``CheckpointSaver`` of several objects, a resume checkpoint).
        role: what the network is ("teacher", "student", ...), used in messages.
        mmap: map the file instead of reading it (cheap for checks that only need keys and shapes); a file that
            cannot be mapped (the legacy format) is read normally.

    Returns:
        ``(state dict on the CPU, metadata or None)``.

    Raises:
        FileNotFoundError: when ``path`` does not exist (the message says how to produce it).
        UnsafeCheckpointError: (a ``ValueError``) when the file holds pickled Python objects.
        ValueError: when the file is not a readable checkpoint, holds no state dict, holds a value that is not a
            tensor among its weights, or has malformed metadata.
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
            return read_checkpoint(path, role, mmap=False)
        raise
    metadata = None
    if isinstance(state, dict) and isinstance(state.get(WEIGHTS_KEY), dict):
        if METADATA_KEY in state:
            metadata = _checked_metadata(state[METADATA_KEY], f"{role} checkpoint {path}")
        state = state[WEIGHTS_KEY]
    if not isinstance(state, dict):
        raise ValueError(f"{role} checkpoint {path} holds a {type(state).__name__}, not a state dict")
    key = next((k for k, v in state.items() if not isinstance(v, torch.Tensor)), None)
    if key is not None:
        raise ValueError(
            f"{role} checkpoint {path} holds a value of type {type(state[key]).__name__} under '{key}', not a tensor: "
            "not a state dict of weights (save one with torch.save(model.state_dict(), path))"
        )
    return state, metadata


def read_state_dict(path: str | os.PathLike, role: str = "network", mmap: bool = False) -> dict[str, torch.Tensor]:
    """The weights of a checkpoint (:func:`read_checkpoint` without the metadata)."""
    return read_checkpoint(path, role, mmap)[0]


def metadata_mismatches(
    path: str | os.PathLike, role: str, metadata: Mapping[str, Any] | None, expected: Mapping[str, Any]
) -> list[Mismatch]:
    """What a checkpoint's metadata says against what a run is about to use it with, one :class:`Mismatch` per
    difference (the setting to change, what differs, and the value or the fix).

    Args:
        path: the checkpoint, for messages.
        role: ``"student"``, ``"teacher"``, ...: the config key that names the network.
        metadata: from :func:`read_checkpoint`; ``None`` (a plain state dict) warns that nothing can be checked.
        expected: metadata key (``network``, ``network_kwargs``, ``num_classes``, ``image_size``, ``run_name``) ->
            the run's value; ``None`` values are not checked.

    Returns:
        one mismatch per difference (empty when the checkpoint suits the run, or does not describe itself).
    """
    checked = {k: v for k, v in expected.items() if v is not None}
    if metadata is None:
        unchecked = sorted(checked.keys() - _IN_THE_WEIGHTS)
        if unchecked:
            warnings.warn(
                f"{role} checkpoint {path} does not describe itself (a plain state dict, saved by an older mskd or "
                f"another tool), so this run's {', '.join(unchecked)} cannot be checked against it: use the "
                f"{'ones' if len(unchecked) > 1 else 'one'} it was trained with",
                UndescribedCheckpointWarning,
                stacklevel=2,
            )
        return []
    if checked.get("network", metadata["network"]) != metadata["network"]:
        checked.pop("network_kwargs", None)  # another network's kwargs: the network's line says it all
    mismatches = []
    for key, ours in checked.items():
        theirs = metadata.get(key)
        ours = _plain(ours, key)
        if theirs is None or theirs == ours:  # an older checkpoint may lack an optional key
            continue
        config_key, what = (part.format(role=role, theirs=theirs, ours=ours) for part in _MISMATCH[key])
        message = f"{role} checkpoint {path} {what}"
        if key == "num_classes":
            mismatches.append(
                Mismatch(config_key, message, fix="it is a model of another task; use that task's bundle")
            )
        elif key == "run_name":
            fix = f"evaluate the run that wrote it, or train {ours} first (each run keeps its own <run>.pt)"
            mismatches.append(Mismatch(config_key, message, fix=fix))
        else:
            mismatches.append(Mismatch(config_key, message, value=_argument(theirs)))
    return mismatches


def metadata_mismatch(
    path: str | os.PathLike,
    role: str,
    metadata: Mapping[str, Any] | None,
    expected: Mapping[str, Any],
    flags: Mapping[str, str] | None = None,
) -> list[str]:
    """:func:`metadata_mismatches` as lines, each starting with the config key to change and ending with the fix, e.g.
    ``image_size: student checkpoint m.pt was trained on 48x48 slices, this run uses 224x224; pass --image_size 48``.

    Args:
        path, role, metadata, expected: as for :func:`metadata_mismatches`.
        flags: config key -> the command-line flag of a caller that takes the setting from the checkpoint unless
            the flag is given (``{"image_size": "--image-size"}`` for ``mskd export``); its fix says to leave the
            flag out. Other settings' fixes name the bundle override (``--image_size``).

    Returns:
        one line per mismatch (empty when the checkpoint suits the run, or does not describe itself).
    """
    flags = flags or {}
    lines = []
    for mismatch in metadata_mismatches(path, role, metadata, expected):
        fix, value = mismatch.fix, mismatch.value
        if fix is None:
            flag = flags.get(mismatch.config_key)
            fix = (
                f"pass {flag} {value} or omit it to use the checkpoint's"
                if flag
                else f"pass --{mismatch.config_key} {value}"
            )
        lines.append(f"{mismatch.config_key}: {mismatch.message}; {fix}")
    return lines


def _argument(value: Any) -> Any:
    """A setting's value as a command line takes it (a mapping as quoted JSON: ``'{"channels": [4, 8]}'``)."""
    return f"'{json.dumps(value)}'" if isinstance(value, dict) else value


def state_dict_mismatch(network: nn.Module, state: Mapping[str, Any]) -> str:
    """What keeps ``state`` from loading into ``network``: missing, unexpected and mis-shaped keys (the first three
    of each, and how many; a value that is not a tensor counts as mis-shaped); ``""`` when it fits."""
    own = network.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(
        k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(getattr(state[k], "shape", (None,)))
    )
    return "; ".join(
        f"{what}: {keys[:3]}{' ...' if len(keys) > 3 else ''} ({len(keys)})"
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched))
        if keys
    )


def _class_counts(network: nn.Module, state: Mapping[str, Any]) -> tuple[int, int] | None:
    """``(the checkpoint's class count, the network's)`` when ``state`` differs from ``network``'s weights only in
    that: wherever a tensor's shape differs, the network has one count (its classes) and ``state`` one other."""
    own = network.state_dict()
    if set(own) != set(state):
        return None
    ours, theirs = set(), set()
    for key, tensor in own.items():
        mine, other = tuple(tensor.shape), tuple(getattr(state[key], "shape", ()))
        if len(mine) != len(other):
            return None
        for a, b in zip(mine, other, strict=True):
            if a != b:
                ours.add(a)
                theirs.add(b)
    return (theirs.pop(), ours.pop()) if len(ours) == len(theirs) == 1 else None


def _load_state(network: nn.Module, state: Mapping[str, torch.Tensor], path: Path, role: str) -> nn.Module:
    details = state_dict_mismatch(network, state)
    if details:
        counts = _class_counts(network, state)
        if counts is not None:
            hint = "teacher and student must predict the same classes" if role == "teacher" else "another task's model?"
            raise ValueError(
                f"{role} checkpoint {path} does not fit {type(network).__name__} (it predicts {counts[0]} classes, but "
                f"the task has {counts[1]}: num_classes; {hint}): {details}"
            )
        raise ValueError(
            f"{role} checkpoint {path} does not fit {type(network).__name__} "
            f"(was it written for another architecture or class count?): {details}"
        )
    network.load_state_dict(state)
    return network


def load_weights(network: nn.Module, path: str | os.PathLike, role: str = "network") -> nn.Module:
    """Load a checkpoint's weights (self-describing, or a plain state dict, or one under ``"model"``) into ``network``.

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
    return _load_state(network, read_state_dict(path, role), Path(path), role)


def load_network(path: str | os.PathLike, role: str = "network") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network a self-describing checkpoint was trained as, with its weights.

    Args:
        path: a checkpoint written with metadata (:class:`mskd.handlers.CheckpointSaver`, :func:`save_weights`).
        role: what the network is, used in messages.

    Returns:
        ``(network in train mode on the CPU, metadata)``.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: when the file does not describe itself (build the network with ``get_network`` and use
            :func:`load_weights`), is unreadable, or its weights do not fit the network it names.
    """
    from .registry import get_network

    state, metadata = read_checkpoint(path, role)
    if metadata is None:
        raise ValueError(
            f"{role} checkpoint {path} does not describe itself (a plain state dict): build its network with "
            "mskd.networks.get_network and load it with mskd.networks.load_weights"
        )
    network = get_network(
        metadata["network"], metadata["in_channels"], metadata["num_classes"], **metadata["network_kwargs"]
    )
    return _load_state(network, state, Path(path), role), metadata
