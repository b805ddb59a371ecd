"""Checkpoints that are written whole, never hold NaN weights, and let an interrupted training resume exactly.

- :class:`SafeDiskSaver`: ignite's ``DiskSaver`` writing through :func:`mskd.io.save_checkpoint` (atomic, and refused
  when a tensor holds NaN or Inf), optionally under one fixed file name that each save replaces.
- :class:`CheckpointSaver`: MONAI's ``CheckpointSaver`` with every file written by a :class:`SafeDiskSaver`. MONAI's
  own writes in place, and with a fixed ``key_metric_filename`` deletes the previous best model before writing the
  new one, so a crash in between leaves no model at all. It also has a ``state_dict`` (MONAI's has only
  ``load_state_dict``), so that a resume checkpoint can carry which score the saved best model has, saves the
  network's metadata with its weights (self-describing checkpoints), and can copy the best model to a second name.
- :class:`TrainingCheckpoint`: the resumable checkpoint of a training run (see its docstring).
"""

from __future__ import annotations

import logging
import os
import shutil
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import ignite.distributed as idist
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver
from monai.handlers import CheckpointSaver as MonaiCheckpointSaver

from mskd.engines.checkpointing import LATEST_CHECKPOINT, RandomStates, seed_epoch
from mskd.io import atomic_path, load_checkpoint, save_checkpoint
from mskd.networks.checkpoint import METADATA_KEY, WEIGHTS_KEY
from mskd.networks.taps import unwrap_network

__all__ = ["CheckpointSaver", "SafeDiskSaver", "TrainingCheckpoint"]

_RESERVED = ("trainer", "scaler", "rng", "run")  # entries TrainingCheckpoint adds itself


class SafeDiskSaver(DiskSaver):
    """ignite ``DiskSaver`` that writes atomically (:func:`mskd.io.atomic_path`) and refuses non-finite tensors.

    Args:
        dirname: folder of the checkpoints (created).
        filename: a fixed file name for every save (each save replaces the file atomically; ``remove`` then does
            nothing, so there is never a moment without the file), or ``None`` for the names ignite gives.
        save_on_rank: the rank that writes, under ``torch.distributed``.
        copy_as: file names in ``dirname`` that each save also writes, as byte copies of the saved file.
    """

    def __init__(
        self,
        dirname: str | os.PathLike,
        filename: str | None = None,
        save_on_rank: int = 0,
        copy_as: Sequence[str] = (),
    ) -> None:
        super().__init__(str(dirname), atomic=True, create_dir=True, require_empty=False, save_on_rank=save_on_rank)
        self.filename = filename
        self.copy_as = tuple(copy_as)

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        """Write ``checkpoint`` to ``dirname/(self.filename or filename)``, then its copies, on the saving rank.

        Raises:
            FloatingPointError: when a tensor of ``checkpoint`` holds NaN or Inf (nothing is written).
        """
        if idist.get_rank() == self.save_on_rank:
            path = save_checkpoint(checkpoint, Path(self.dirname) / (self.filename or filename))
            for name in self.copy_as:
                with atomic_path(Path(self.dirname) / name) as tmp:
                    shutil.copyfile(path, tmp)

    def remove(self, filename: str) -> None:
        """Delete an older checkpoint, unless every save goes to the one fixed file name."""
        if self.filename is None:
            super().remove(filename)


class _Metadata:
    """A ``save_dict`` entry whose state is a checkpoint's metadata, so that ignite saves it beside the weights."""

    def __init__(self, metadata: Mapping[str, Any]) -> None:
        self.metadata = dict(metadata)

    def state_dict(self) -> dict[str, Any]:
        return self.metadata


class CheckpointSaver(MonaiCheckpointSaver):
    """MONAI's ``CheckpointSaver`` (same arguments, and two more) whose files are written by :class:`SafeDiskSaver`:
    atomically, and never with NaN or Inf weights (the save raises ``FloatingPointError`` instead and the previous
    file stays).

    With ``metadata`` the checkpoints describe themselves: ``{"model": state dict, "mskd": metadata}`` (see
    :mod:`mskd.networks.checkpoint`), which ``mskd predict``, ``evaluate.json`` and ``mskd export`` check before use.

    ``state_dict``/``load_state_dict`` carry the key-metric tracking list (the score of the saved best model), so that
    a resumed run keeps the best model of the whole run rather than the first one it validates.

    Args:
        save_dir: folder of the checkpoints.
        save_dict: name -> object to save; with ``metadata``, exactly ``{"model": network}``.
        metadata: from :func:`mskd.networks.checkpoint_metadata`, saved with the weights; ``None`` saves plain
            state dicts, as MONAI's saver does.
        key_metric_copy: a file name in ``save_dir`` that each best-model save also writes, as a byte copy (the
            bundle's ``models/model.pt``, written beside the run's own ``<run>.pt``).
        kwargs: MONAI ``CheckpointSaver`` arguments.

    Raises:
        ValueError: for ``metadata`` with another ``save_dict``, or ``key_metric_copy`` without
            ``save_key_metric``.
    """

    def __init__(
        self,
        save_dir: str,
        save_dict: dict,
        metadata: Mapping[str, Any] | None = None,
        key_metric_copy: str | None = None,
        **kwargs: Any,
    ) -> None:
        if metadata is not None:
            if set(save_dict) != {WEIGHTS_KEY}:
                raise ValueError(
                    f"a checkpoint with metadata holds one network, save_dict={{'{WEIGHTS_KEY}': network}}; "
                    f"got the keys {sorted(save_dict)}"
                )
            save_dict = {**save_dict, METADATA_KEY: _Metadata(metadata)}
        if key_metric_copy is not None and not kwargs.get("save_key_metric"):
            raise ValueError(f"key_metric_copy={key_metric_copy!r} copies the best model: set save_key_metric=True")
        super().__init__(save_dir, save_dict, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                copies = (key_metric_copy,) if key_metric_copy and checkpoint is self._key_metric_checkpoint else ()
                filename = getattr(checkpoint.save_handler, "filename", None)
                checkpoint.save_handler = SafeDiskSaver(save_dir, filename, copy_as=copies)

    def state_dict(self) -> dict[str, Any]:
        """The key-metric tracking list (``{"saved": [(score, filename), ...]}``), or ``{}`` without a key metric."""
        return self._key_metric_checkpoint.state_dict() if self._key_metric_checkpoint is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the key-metric tracking list (nothing to do for ``{}``)."""
        if state_dict:
            super().load_state_dict(state_dict)


class _SkipFirst:
    """A data loader that, the first time it is iterated, draws and discards its first ``skip`` batches, calls
    ``then()``, and goes on; later iterations are the loader's own."""

    def __init__(self, loader: Iterable, skip: int, then: Callable[[], None]) -> None:
        self.loader, self.skip, self.then = loader, skip, then

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator:
        iterator = iter(self.loader)
        skip, self.skip = self.skip, 0
        for _ in range(skip):
            next(iterator)
        if skip:
            self.then()
        yield from iterator


class _RunRecord:
    """The checkpoint entry ``run``: the MLflow run id and the validator's best metric so far."""

    def __init__(self, run_id: str | None, validator: Engine | None) -> None:
        self.run_id, self.validator = run_id, validator

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"run_id": self.run_id}
        if self.validator is not None:
            state["best_metric"] = float(self.validator.state.best_metric)
            state["best_metric_epoch"] = int(self.validator.state.best_metric_epoch)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("run_id")
        if self.run_id is not None and saved is not None and saved != self.run_id:
            warnings.warn(
                f"the checkpoint was logged to MLflow run {saved}, this process logs to {self.run_id}", stacklevel=2
            )
        if self.validator is not None and "best_metric" in state:
            self.validator.state.best_metric = state["best_metric"]
            self.validator.state.best_metric_epoch = state["best_metric_epoch"]


class TrainingCheckpoint:
    """The resumable checkpoint of a training run: saved every ``every`` iterations and at every epoch end, loaded at
    start when ``resume_from`` is given, with the run continuing exactly where the checkpoint left it.

    One file, ``<save_dir>/latest.pt``, replaced atomically at each save (the best-metric model is the
    :class:`CheckpointSaver`'s). It holds ``save_dict``'s objects (the network, optimiser, LR scheduler, ...) and what
    the handler adds: ``trainer`` (the engine's state: iteration, epoch, and the ``state_dict_user_keys``), ``scaler``
    (the AMP grad scaler, when there is one), ``rng`` (:class:`mskd.engines.RandomStates`) and ``run`` (the MLflow run
    id, and the validator's best metric). Only tensors and plain values: it loads with ``weights_only=True``.

    At every epoch start the global generators and the training dataset's random transforms are re-seeded from
    ``(seed, rank, epoch)`` (:func:`mskd.engines.seed_epoch`), so an epoch's data depend on its index only. Resuming at
    iteration ``k`` of an epoch re-seeds likewise, draws and discards the first ``k`` batches of the epoch (replaying
    their random augmentation), restores the saved random states, and continues with batch ``k + 1``; ignite counts the
    epoch's iterations from ``k``. The iteration checkpoint is not taken at an epoch's last iteration: the epoch-end one
    follows once validation and the LR step are done, so a resumed run never skips them.

    Attach it last: its epoch-end save must come after the handlers that validate and step the LR scheduler.

    Args:
        save_dir: the run folder (created).
        save_dict: name -> object with ``state_dict``/``load_state_dict`` (``None`` values are left out, e.g. a
            disabled handler); must not use the names ``trainer``, ``scaler``, ``rng``, ``run``.
        every: save every ``every`` iterations (``0``: at epoch ends only).
        resume_from: a checkpoint to load at start (e.g. :func:`mskd.engines.resume_checkpoint`), or ``None``.
        seed: the run's seed, from which every epoch is seeded.
        run_id: the MLflow run the training logs to (saved so that a resumed run logs to the same one), or ``None``.
        validator: the validation engine, whose best metric so far is saved, or ``None``.
        filename: the checkpoint's file name.

    Raises:
        ValueError: for ``every < 0`` or a reserved name in ``save_dict``.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        save_dict: Mapping[str, Any],
        every: int = 0,
        resume_from: str | os.PathLike | None = None,
        seed: int = 0,
        run_id: str | None = None,
        validator: Engine | None = None,
        filename: str = LATEST_CHECKPOINT,
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 0:
            raise ValueError(f"checkpoint_every must be an integer >= 0 (0: at epoch ends only), got {every!r}")
        reserved = sorted(set(save_dict) & set(_RESERVED))
        if reserved:
            raise ValueError(f"save_dict must not use the names {reserved}: TrainingCheckpoint adds them itself")
        self.save_dict = {name: obj for name, obj in save_dict.items() if obj is not None}
        self.every = every
        self.resume_from = None if resume_from is None else Path(resume_from)
        self.seed = seed
        self.path = Path(save_dir) / filename
        self.saver = SafeDiskSaver(save_dir, filename)
        self.rng = RandomStates()
        self.run = _RunRecord(run_id, validator)
        self.logger = logging.getLogger(__name__)
        self.to_save: dict[str, Any] = {}
        self._skip = 0
        self._saved_rng: dict[str, Any] | None = None
        self._loader: Iterable | None = None

    def attach(self, engine: Engine) -> None:
        """Load at ``STARTED`` (with ``resume_from``), seed at ``EPOCH_STARTED``, save at ``ITERATION_COMPLETED`` every
        ``every`` iterations and at ``EPOCH_COMPLETED``."""
        self.logger = engine.logger
        self.to_save = {**self.save_dict, "trainer": engine}
        if getattr(engine, "scaler", None) is not None:
            self.to_save["scaler"] = engine.scaler
        self.to_save.update(rng=self.rng, run=self.run)
        if self.resume_from is not None:
            engine.add_event_handler(Events.STARTED, self.load)
        engine.add_event_handler(Events.EPOCH_STARTED, self.epoch_started)
        if self.every:
            engine.add_event_handler(Events.ITERATION_COMPLETED(event_filter=self._due), self.save)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def _due(self, engine: Engine, iteration: int) -> bool:
        return iteration % self.every == 0 and iteration % engine.state.epoch_length != 0

    def save(self, engine: Engine) -> None:
        """Write the checkpoint (atomically; refused with ``FloatingPointError`` if a tensor holds NaN or Inf)."""
        state = {name: unwrap_network(obj).state_dict() for name, obj in self.to_save.items()}
        self.saver(state, self.path.name)
        self.logger.debug(f"saved {self.path} at iteration {engine.state.iteration}")

    def load(self, engine: Engine) -> None:
        """Restore every saved object from ``resume_from`` and arrange the replay of the epoch's done iterations.

        Raises:
            ValueError: when the checkpoint lacks an entry, or the training data changed since (another epoch length),
                or it has more epochs done than ``max_epochs``.
            UnsafeCheckpointError: when the file holds pickled Python objects.
        """
        path = self.resume_from
        checkpoint = load_checkpoint(path, "resume checkpoint")
        to_load = {name: obj for name, obj in self.to_save.items() if name != "rng"}
        if "scaler" in to_load and "scaler" not in checkpoint:
            warnings.warn(f"{path} has no AMP grad scaler state (saved without AMP); a new scaler starts", stacklevel=2)
            del to_load["scaler"]
        missing = sorted(set(to_load) - set(checkpoint))
        if missing or "rng" not in checkpoint:
            raise ValueError(
                f"resume checkpoint {path} lacks {missing or ['rng']}: it was saved by another configuration; "
                "pass --resume false to start afresh"
            )
        trainer = dict(checkpoint["trainer"])
        if trainer.get("epoch_length") != engine.state.epoch_length:
            raise ValueError(
                f"resume checkpoint {path} has {trainer.get('epoch_length')} iterations per epoch, the training data "
                f"now give {engine.state.epoch_length}: the data or batch size changed; pass --resume false"
            )
        for key in engine.state_dict_user_keys:  # a key added since the checkpoint keeps its current value
            trainer.setdefault(key, getattr(engine.state, key))
        checkpoint = {**checkpoint, "trainer": trainer}
        max_epochs = engine.state.max_epochs
        Checkpoint.load_objects(to_load=to_load, checkpoint=checkpoint, strict=True)
        if engine.state.epoch > max_epochs:
            raise ValueError(
                f"resume checkpoint {path} has {engine.state.epoch} epochs done, more than max_epochs {max_epochs}"
            )
        engine.state.max_epochs = max_epochs
        self._skip = engine.state.iteration % engine.state.epoch_length
        self._saved_rng = checkpoint["rng"] if self._skip else None
        where = f"epoch {engine.state.epoch + 1}, iteration {engine.state.iteration}"
        self.logger.info(f"resumed from {path} at {where} (replaying {self._skip} batches of the epoch)")

    def epoch_started(self, engine: Engine) -> None:
        """Seed the epoch; on the resumed epoch, make the loader skip the batches already trained on."""
        dataset = getattr(getattr(engine, "data_loader", None), "dataset", None)
        seed_epoch(self.seed, engine.state.epoch, idist.get_rank(), dataset)
        if self._skip:
            self._loader = engine.state.dataloader
            engine.state.dataloader = _SkipFirst(self._loader, self._skip, self._restore_rng)
            self._skip = 0

    def _restore_rng(self) -> None:
        if self._saved_rng is not None:
            self.rng.load_state_dict(self._saved_rng)
            self._saved_rng = None

    def epoch_completed(self, engine: Engine) -> None:
        """Put the plain loader back after a resumed epoch, and save."""
        if self._loader is not None:
            engine.state.dataloader, self._loader = self._loader, None
        self.save(engine)
