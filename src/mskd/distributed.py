"""Helpers for bundles launched with ``torchrun``: process group, device, rank checks and a sample recorder.

``configs/multi_gpu_distill.json`` calls these from config expressions. Every function also works in a plain,
single-process run (rank 0 of a world of 1), so the same code path is testable without a launcher.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sized
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from monai.utils import optional_import
from torch import nn

from mskd.io import atomic_open

idist, _ = optional_import("ignite.distributed")
Events, _ = optional_import("ignite.engine", name="Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", name="Engine")

__all__ = [
    "RecordSamples",
    "check_per_rank",
    "default_backend",
    "destroy_process_group",
    "device",
    "get_rank",
    "get_world_size",
    "init_process_group",
    "is_main_process",
    "local_rank",
]

_LAUNCH_HINT = (
    "launch with torchrun, e.g. `torchrun --nproc_per_node=2 -m monai.bundle run --config_file "
    "\"['.../train_teacher.json','.../distill.json','.../multi_gpu_distill.json']\" ...` (see docs/distributed.md)"
)


def default_backend() -> str:
    """``"nccl"`` when CUDA is available, else ``"gloo"`` (CPU)."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def local_rank() -> int:
    """This process's index on its node (``$LOCAL_RANK``, set by ``torchrun``; 0 when unset)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def device() -> torch.device:
    """``cuda:<LOCAL_RANK>`` when CUDA is available, else ``cpu``.

    Raises:
        ValueError: when ``LOCAL_RANK`` names a GPU this node does not have (more processes than GPUs).
    """
    if not torch.cuda.is_available():
        return torch.device("cpu")
    index, count = local_rank(), torch.cuda.device_count()
    if index >= count:
        raise ValueError(
            f"LOCAL_RANK={index} but this node has {count} GPU(s): set torchrun's --nproc_per_node to at most {count}"
        )
    return torch.device(f"cuda:{index}")


def init_process_group(backend: str | None = None) -> bool:
    """Join the ``torchrun`` process group (once; later calls do nothing).

    On CUDA the current device is set to ``cuda:<LOCAL_RANK>`` first, as NCCL requires. Ignite's ``idist`` is then
    synchronised on every rank: its first query runs a collective (it counts the processes per node), so leaving it
    to the first handler that asks (``CheckpointSaver``, on rank 0 only) would deadlock the other ranks.

    Args:
        backend: ``"nccl"``, ``"gloo"``, ...; default :func:`default_backend`.

    Returns:
        ``True`` when this call initialised the group, ``False`` when it was already initialised.

    Raises:
        RuntimeError: when the process was not started by ``torchrun`` (no ``RANK`` / ``WORLD_SIZE`` /
            ``MASTER_ADDR`` / ``MASTER_PORT`` in the environment) or ``torch.distributed`` is unavailable.
    """
    if not dist.is_available():
        raise RuntimeError("this PyTorch build has no torch.distributed support")
    if dist.is_initialized():
        return False
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"distributed training needs {missing} in the environment: {_LAUNCH_HINT}")
    backend = backend or default_backend()
    if torch.cuda.is_available():
        torch.cuda.set_device(device())
    elif backend == "nccl":
        raise RuntimeError("backend 'nccl' needs CUDA; use 'gloo' on CPU")
    dist.init_process_group(backend=backend)
    idist.sync()
    return True


def destroy_process_group() -> None:
    """Leave the process group if one is initialised (safe to call twice)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        idist.sync()  # back to ignite's single-process model


def get_rank() -> int:
    """Global rank, 0 without a process group."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    """Number of processes, 1 without a process group."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """Whether this is rank 0, the only rank that logs, tracks and writes checkpoints."""
    return get_rank() == 0


def check_per_rank(items: Sized, what: str, option: str) -> int:
    """Check that every rank gets at least one of ``items`` and return how many there are.

    A rank with an empty validation loader cannot run its evaluator, while the others wait for it in the metric's
    all-gather; failing early names the setting to change instead.

    Args:
        items: the dataset or data list that a ``DistributedSampler`` will split.
        what: what the items are, for the message (``"validation cases"``).
        option: the config option that sets their number (``"--num_val_cases"``).

    Raises:
        ValueError: when there are fewer items than processes.
    """
    n, world = len(items), get_world_size()
    if n < world:
        raise ValueError(f"{n} {what} for {world} processes: each process needs at least one; set {option} >= {world}")
    return n


class RecordSamples:
    """Write, per rank, which dataset items the engine's loader drew each epoch, and the metrics it ended with.

    A check of the data partition in distributed runs (used by the tests; cheap enough to keep in a real run). At
    ``EPOCH_STARTED``, after the workflow has called ``DistributedSampler.set_epoch``, the sampler's indices for the
    epoch are read and mapped to ``dataset.data[i][key]`` (file names); ``ITERATION_COMPLETED`` counts iterations;
    ``EPOCH_COMPLETED`` appends ``{"epoch", "items", "iterations", "metrics"}`` to ``<out_dir>/<name>-rank<r>.json``,
    plus ``"parameter_sum"`` (the sum of every parameter, in float64) when ``network`` is given: equal on all ranks when
    the DDP replicas stayed in sync.

    Args:
        out_dir: folder of the JSON files (created).
        name: file stem, e.g. ``"train"`` or ``"validate"``.
        key: item key whose value names a sample (its file name is kept).
        network: network whose parameter sum is recorded (a DDP wrapper is fine).
    """

    def __init__(
        self, out_dir: str | os.PathLike, name: str = "train", key: str = "image", network: nn.Module | None = None
    ) -> None:
        self.out_dir = Path(out_dir)
        self.name = name
        self.key = key
        self.network = network
        self.epochs: list[dict[str, Any]] = []
        self._current: dict[str, Any] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def _describe(self, dataset: Any, index: int) -> Any:
        data = getattr(dataset, "data", None)
        if data is None:
            return index
        item = data[index]
        value = item.get(self.key, index) if isinstance(item, dict) else index
        return Path(value).name if isinstance(value, str | os.PathLike) else value

    def epoch_started(self, engine: Engine) -> None:
        loader = getattr(engine, "data_loader", None)  # MONAI workflows
        if loader is None:
            loader = engine.state.dataloader  # plain ignite engines
        sampler = getattr(loader, "sampler", None)
        if sampler is None:
            warnings.warn(f"{self.name}: the engine's data loader has no sampler; nothing to record", stacklevel=2)
            indices: list[int] = []
        else:
            indices = [int(i) for i in sampler]
        self._current = {
            "epoch": int(engine.state.epoch),
            "items": [self._describe(loader.dataset, i) for i in indices],
            "iterations": 0,
        }

    def iteration_completed(self, engine: Engine) -> None:
        self._current["iterations"] += 1

    def epoch_completed(self, engine: Engine) -> None:
        record = {**self._current}
        record["metrics"] = {k: float(v) for k, v in engine.state.metrics.items() if isinstance(v, int | float)}
        if self.network is not None:
            with torch.no_grad():
                record["parameter_sum"] = sum(float(p.double().sum()) for p in self.network.parameters())
        self.epochs.append(record)
        rank, world = get_rank(), get_world_size()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"{self.name}-rank{rank}.json"
        with atomic_open(path, "w", encoding="utf-8") as f:
            json.dump({"rank": rank, "world_size": world, "epochs": self.epochs}, f, indent=2)
