"""What resumable training needs beside the handler that saves and loads: random states, per-epoch seeding, and
finding the checkpoint to resume from.

**Why an epoch is seeded from its index.** An exact resume in the middle of an epoch must reproduce that epoch's data:
the order the ``DataLoader`` shuffles (drawn from the global torch generator when the epoch's iterator is created),
the augmentation of every sample (each MONAI random transform draws from its own ``RandomState``, which
``set_determinism`` or the ``DataLoader`` seeded once and which then runs on across epochs) and, with worker
processes, the workers' seeds (drawn from the global torch generator too). Saving all those states is not possible
(the transforms' states live in the worker processes). Instead, :func:`seed_epoch` re-seeds Python, NumPy, torch and
every random transform of the training dataset at each epoch start from ``(seed, rank, epoch)``, so an epoch's data
depend on its index only; a run resumed at iteration ``k`` of an epoch re-seeds the same way, draws and discards
the epoch's first ``k`` batches (which replays the transforms' random draws exactly), then restores the global random
states saved with the checkpoint (:class:`RandomStates`), and goes on with batch ``k + 1``: bit for bit the batches,
and on a deterministic device the weights, of an uninterrupted run.
"""

from __future__ import annotations

import atexit
import os
import random
import socket
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mskd.flags import as_flag
from mskd.io import load_checkpoint

__all__ = [
    "LATEST_CHECKPOINT",
    "RUN_LOCK",
    "RandomStates",
    "checkpoint_run_id",
    "epoch_seed",
    "lock_run_dir",
    "resume_checkpoint",
    "seed_epoch",
]

LATEST_CHECKPOINT = "latest.pt"  # the resumable checkpoint in a run folder
RUN_LOCK = "run.lock"  # in a run folder: "<pid> <host>" of the process training the run
_HELD: dict[Path, int] = {}  # lock file -> the descriptor holding its lock, kept open while this process lives


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of one epoch on one rank: a 32-bit hash of ``(seed, rank, epoch)`` (NumPy's ``SeedSequence``)."""
    if min(seed, epoch, rank) < 0:
        raise ValueError(f"seed, epoch and rank must be >= 0, got {seed}, {epoch}, {rank}")
    return int(np.random.SeedSequence([int(seed), int(rank), int(epoch)]).generate_state(1)[0])


def seed_epoch(seed: int, epoch: int, rank: int = 0, dataset: Any = None) -> int:
    """Seed Python's, NumPy's and torch's global generators (every CUDA device's too) and every MONAI random transform
    reachable from ``dataset`` with :func:`epoch_seed` ``(seed, epoch, rank)``.

    Args:
        seed: the run's seed.
        epoch: the epoch about to start (1-based, as ignite counts).
        rank: the process's rank (0 without ``torch.distributed``).
        dataset: the training dataset (its transforms are re-seeded as MONAI's ``DataLoader`` seeds them), or ``None``.

    Returns:
        the seed used.
    """
    from monai.data.utils import set_rnd

    value = epoch_seed(seed, epoch, rank)
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)  # seeds every CUDA device as well
    if dataset is not None:
        set_rnd(dataset, value)
    return value


class RandomStates:
    """The global random states of this process (Python, NumPy, torch CPU and every CUDA device), as an object with
    ``state_dict``/``load_state_dict`` so that a checkpoint can hold it.

    The state dict holds tensors, numbers and tuples only, so it loads with ``torch.load(weights_only=True)``.
    """

    def state_dict(self) -> dict[str, Any]:
        """The current states (copies)."""
        name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
        return {
            "python": random.getstate(),
            "numpy": {
                "name": str(name),
                "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "cached_gaussian": float(cached),
            },
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Set the global generators to ``state`` (CUDA states only for the devices both have).

        Raises:
            KeyError: when ``state`` lacks one of the generators.
        """
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        np_state = state["numpy"]
        keys = np_state["keys"].numpy().astype(np.uint32)
        np.random.set_state(
            (np_state["name"], keys, np_state["pos"], np_state["has_gauss"], np_state["cached_gaussian"])
        )
        torch.set_rng_state(state["torch"])
        cuda = list(state.get("cuda") or [])
        if cuda and torch.cuda.is_available():
            for device, device_state in enumerate(cuda[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(device_state, device)


def _finished(trainer: dict[str, Any]) -> bool:
    iteration, length, epochs = trainer.get("iteration"), trainer.get("epoch_length"), trainer.get("max_epochs")
    return None not in (iteration, length, epochs) and iteration >= length * epochs


def _holder(fd: int) -> tuple[str, str]:
    """The ``(pid, host)`` a lock file names (``("", "")`` when empty)."""
    pid, host, *_ = [*os.pread(fd, 256, 0).decode(errors="replace").split(), "", ""]
    return pid, host


@atexit.register
def _release_run_dirs() -> None:
    """At exit: empty the lock files this process holds (a lock file left holding a pid names a killed process)."""
    for fd in _HELD.values():
        os.ftruncate(fd, 0)
        os.close(fd)
    _HELD.clear()


def lock_run_dir(run_dir: str | os.PathLike) -> Path | None:
    """Hold the run folder ``run_dir`` for this process until it exits, so that two trainings of one run never write
    the same checkpoint, model and MLflow run.

    The lock is ``fcntl.flock`` on ``<run_dir>/run.lock``, which holds ``"<pid> <host>"``: the system releases it when
    its process ends, however it ends, so a lock left by a killed process is taken over (with a warning naming that
    process); one held by a live process (on this host, or on another sharing the folder) refuses this one. Taking it
    again in the same process does nothing. Under ``torchrun`` rank 0 holds it for all ranks. On a filesystem without
    locks, a warning says that two trainings of the run are not kept apart.

    Args:
        run_dir: the run folder (created if missing).

    Returns:
        the lock file, or ``None`` where no lock is taken (ranks other than 0, a filesystem without locks).

    Raises:
        SystemExit: status 2, after one line on stderr naming the run, the process holding it and the lock file,
            when another process holds the run.
    """
    import fcntl  # POSIX only, as is the rest of the run-folder handling

    if os.environ.get("RANK", "0") != "0":
        return None
    folder = Path(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder.resolve() / RUN_LOCK
    if path in _HELD:
        return path
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as e:
        pid, host = _holder(fd)
        os.close(fd)
        print(
            f"mskd: run '{folder.name}' is being trained by process {pid or '?'} on {host or '?'} (lock file {path}); "
            "wait for it to end or stop it, or train another run (another --seed or --output_dir)",
            file=sys.stderr,
        )
        raise SystemExit(2) from e
    except OSError as e:  # a filesystem without locks
        os.close(fd)
        warnings.warn(
            f"cannot lock {path} ({e.strerror}): two trainings of run '{folder.name}' would not be kept apart",
            stacklevel=2,
        )
        return None
    pid, host = _holder(fd)
    if pid:
        warnings.warn(
            f"process {pid} on {host} ended without releasing run '{folder.name}' (killed?); taking it over ({path})",
            stacklevel=2,
        )
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
    _HELD[path] = fd
    return path


def resume_checkpoint(run_dir: str | os.PathLike, resume: Any = True) -> str | None:
    """The checkpoint to resume a run from: ``<run_dir>/latest.pt`` when ``resume`` is on and it holds an unfinished
    run, else ``None`` (start afresh).

    A run folder whose checkpoint is of a finished run (its last epoch done) starts afresh, as a new run, so that
    running a command again trains again; ``resume: false`` starts afresh in any case. Either way the old checkpoint
    is replaced by the new run's first one.

    The run folder is locked for this process first (:func:`lock_run_dir`): a bundle evaluates this before it
    touches the MLflow store, so a second training of a running run is refused before it can mark the first one's
    MLflow run ``FAILED`` or write its checkpoint.

    Args:
        run_dir: the run folder (one per run name).
        resume: the ``resume`` switch (see :func:`~mskd.flags.as_flag`).

    Returns:
        the checkpoint's path as a string, or ``None``.

    Raises:
        ValueError: for a bad ``resume`` value, or a checkpoint that is unreadable or not a training checkpoint.
        UnsafeCheckpointError: when the checkpoint holds pickled Python objects.
        SystemExit: when another process trains the run (:func:`lock_run_dir`).
    """
    lock_run_dir(run_dir)
    path = Path(run_dir) / LATEST_CHECKPOINT
    if not as_flag(resume, "resume"):
        if path.is_file():
            warnings.warn(f"resume is false: starting afresh; {path} will be replaced", stacklevel=2)
        return None
    if not path.is_file():
        return None
    state = load_checkpoint(path, "resume checkpoint", mmap=True)
    trainer = state.get("trainer") if isinstance(state, dict) else None
    if not isinstance(trainer, dict):
        raise ValueError(
            f"resume checkpoint {path} holds no trainer state; it is not a checkpoint of mskd's TrainingCheckpoint. "
            "Move it away, or pass --resume false to start afresh"
        )
    if _finished(trainer):
        warnings.warn(
            f"{path} is the checkpoint of a finished run ({trainer['max_epochs']} epochs); starting a new run",
            stacklevel=2,
        )
        return None
    return str(path)


def checkpoint_run_id(path: str | os.PathLike | None) -> str | None:
    """The MLflow run id saved in a resume checkpoint (``None`` for no checkpoint, or one saved without tracking)."""
    if path is None:
        return None
    state = load_checkpoint(path, "resume checkpoint", mmap=True)
    run = state.get("run") if isinstance(state, dict) else None
    run_id = run.get("run_id") if isinstance(run, dict) else None
    return run_id or None
