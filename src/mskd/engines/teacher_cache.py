"""The frozen teacher's outputs kept per training sample, so that the teacher runs once per distinct input.

The teacher is frozen and in eval mode: for a given input slice its logits and tapped features never change. With
deterministic training inputs (no random augmentation: the bundles' ``augment: false``), the slices drawn from the
cached, preprocessed volumes come back bit for bit whenever they are drawn again, so the teacher's work on them can be
done once. :class:`TeacherCache` keys every sample by its **content** (a BLAKE2b digest of its bytes, with its shape
and dtype), so a hit can only happen for a bit-identical input and never returns another sample's outputs; with
random augmentation every lookup misses and the teacher runs on every sample, as without a cache.

:func:`resolve_teacher_outputs` turns the bundles' ``teacher_outputs`` setting (``auto``, ``cached``, ``live``) and
their ``augment`` switch into the mode in force.
"""

from __future__ import annotations

import hashlib
import warnings
import weakref
from collections.abc import Callable, Mapping
from numbers import Integral
from typing import Any

import torch
from monai.data import MetaTensor
from monai.utils import look_up_option

from mskd.flags import as_flag

__all__ = [
    "DEFAULT_CACHE_BYTES",
    "TEACHER_CACHE_HIT_RATE",
    "TEACHER_CACHE_STORAGE",
    "TEACHER_OUTPUTS",
    "SampleKey",
    "TeacherCache",
    "resolve_teacher_outputs",
    "teacher_outputs_line",
]

TEACHER_OUTPUTS = ("auto", "cached", "live")  # the bundles' `teacher_outputs` values
TEACHER_CACHE_STORAGE = ("device", "cpu")
TEACHER_CACHE_HIT_RATE = "teacher_cache_hit_rate"  # engine.state.metrics key: hits / lookups of the current epoch
DEFAULT_CACHE_BYTES = 4 * 2**30
DIGEST_SIZE = 16  # bytes of the BLAKE2b digest (128 bits)

SampleKey = tuple[tuple[int, ...], str, bytes]  # (shape, dtype, digest) of one sample
Outputs = tuple[torch.Tensor, dict[str, torch.Tensor]]  # (logits, {tap name: features})


def _gib(nbytes: int) -> str:
    return f"{nbytes / 2**30:.2f} GiB"


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.as_tensor() if isinstance(tensor, MetaTensor) else tensor


class TeacherCache:
    """The teacher's logits and tapped features of every training sample seen, keyed by the sample's content.

    :meth:`outputs` takes a batch: it looks every sample up, runs the teacher only on the sub-batch of samples not
    stored yet (each distinct one once), stores their outputs one sample at a time (detached), and returns the whole
    batch's logits and features in batch order, exactly the stored tensors for the hits. The key of a sample
    (:meth:`keys`) is the BLAKE2b digest (128 bits) of its bytes, with its shape and dtype, computed on the CPU: a hit
    needs a bit-identical input. The teacher in eval mode computes each sample independently of the others, so a
    batch assembled from the cache equals the teacher's full-batch output up to the last float bits (a forward on a
    sub-batch may round differently).

    Once a sample's outputs no longer fit in ``max_bytes``, nothing more is stored (samples not stored keep running the
    teacher) and a warning says so, once. Nothing is ever evicted: :meth:`clear` empties the cache.

    One cache holds one teacher's outputs under one set of trainer settings (autocast, memory format): a
    :class:`mskd.engines.DistillationTrainer` binds it to its teacher (:meth:`bind`).

    Args:
        max_bytes: the most bytes the stored outputs may take (an integer > 0; default 4 GiB).
        storage: ``"device"`` keeps the outputs where the teacher computed them (the training device);
            ``"cpu"`` keeps them in host memory and copies a batch's hits to the device at each step (for a GPU whose
            memory the training needs).

    Attributes:
        hits: samples served without running the teacher (stored, or repeated in their batch).
        misses: samples the teacher ran on.
        nbytes: bytes of the stored outputs.
        full: whether storing has stopped (``max_bytes`` reached).

    Raises:
        ValueError: when ``max_bytes`` is not an integer > 0, or ``storage`` is not ``"device"`` or ``"cpu"``.
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES, storage: str = "device") -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, Integral) or max_bytes <= 0:
            raise ValueError(f"max_bytes must be an integer > 0 (bytes), got {max_bytes!r}")
        self.max_bytes = int(max_bytes)
        self.storage = look_up_option(storage, TEACHER_CACHE_STORAGE)
        self._entries: dict[SampleKey, Outputs] = {}
        self._teacher: weakref.ref | None = None
        self._warned = False
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self.full = False

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: SampleKey) -> bool:
        return key in self._entries

    def __repr__(self) -> str:
        return (
            f"TeacherCache({len(self)} samples, {_gib(self.nbytes)} of {_gib(self.max_bytes)}, "
            f"storage={self.storage!r}, hits={self.hits}, misses={self.misses})"
        )

    @property
    def hit_rate(self) -> float:
        """Hits ÷ lookups since the cache was made (or cleared); 0.0 before the first lookup."""
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0

    def clear(self) -> None:
        """Drop every stored output and reset the counters (the binding to a teacher stays)."""
        self._entries.clear()
        self.nbytes = self.hits = self.misses = 0
        self.full = self._warned = False

    def bind(self, teacher: torch.nn.Module) -> None:
        """Tie the cache to ``teacher`` (called by the trainer).

        Raises:
            ValueError: when the cache is already bound to another teacher (its outputs would be returned for this
                one's).
        """
        bound = self._teacher() if self._teacher is not None else None
        if bound is not None and bound is not teacher:
            raise ValueError(
                f"this TeacherCache already holds the outputs of another teacher ({type(bound).__name__}); "
                "give each DistillationTrainer its own cache"
            )
        self._teacher = weakref.ref(teacher)

    @staticmethod
    def keys(images: torch.Tensor) -> list[SampleKey]:
        """One key per sample of the batch ``images`` (B, ...): ``(shape, dtype, BLAKE2b digest of the bytes)``.

        The batch is read on the CPU in its contiguous layout (a batch on another device is copied first), so the key
        depends on the values, the shape and the dtype only.

        Raises:
            TypeError: when ``images`` is not a tensor.
            ValueError: when ``images`` has no batch dimension.
        """
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"the teacher cache keys batches of image tensors, got {type(images).__name__}")
        if images.ndim < 1:
            raise ValueError(f"the teacher cache needs a batch (B, ...), got a tensor of shape {tuple(images.shape)}")
        batch = _plain(images).detach().cpu().contiguous()
        shape, dtype = tuple(batch.shape[1:]), str(batch.dtype)
        rows = batch.reshape(batch.shape[0], -1).view(torch.uint8).numpy()
        return [(shape, dtype, hashlib.blake2b(row, digest_size=DIGEST_SIZE).digest()) for row in rows]

    def get(self, key: SampleKey) -> Outputs | None:
        """The stored ``(logits, {tap: features})`` of one sample (batch dimension 1), or ``None``."""
        return self._entries.get(key)

    def outputs(
        self, images: torch.Tensor, inputs: torch.Tensor, teacher_forward: Callable[[torch.Tensor], Outputs]
    ) -> Outputs:
        """The teacher's logits and features for a batch, the teacher running only on samples not stored yet.

        Args:
            images: the batch as the data loader gave it (B, ...), read to key the samples (:meth:`keys`).
            inputs: the same batch as the teacher takes it (on the training device); sub-batches are taken from it.
            teacher_forward: ``inputs`` (or a sub-batch of it) -> ``(logits, {tap name: features})``, every tensor
                batch-first.

        Returns:
            ``(logits, {tap name: features})`` of the whole batch, in batch order.

        Raises:
            ValueError: when ``images`` and ``inputs`` hold different numbers of samples, or an output of the teacher
                is not batch-first.
            TypeError: when the teacher's logits or a tapped feature is not a tensor.
        """
        keys = self.keys(images)
        if len(keys) != inputs.shape[0]:
            raise ValueError(f"images hold {len(keys)} samples but inputs {inputs.shape[0]} ({tuple(inputs.shape)})")
        rows: dict[SampleKey, int] = {}  # key of a sample to compute -> its row in the sub-batch
        run: list[int] = []  # batch positions the teacher runs on (the first of each distinct new sample)
        for position, key in enumerate(keys):
            if key not in self._entries and key not in rows:
                rows[key] = len(run)
                run.append(position)
        self.misses += len(run)
        self.hits += len(keys) - len(run)
        if len(run) == len(keys):  # all new and distinct: the teacher runs on the batch itself
            logits, features = self._checked(teacher_forward(inputs), len(run))
            self._store([keys[p] for p in run], logits, features)
            return logits, features
        computed: Outputs | None = None
        if run:
            index = torch.as_tensor(run, device=inputs.device)
            computed = self._checked(teacher_forward(inputs.index_select(0, index)), len(run))
            self._store([keys[p] for p in run], *computed)
        parts: list[Outputs] = []
        for key in keys:
            if key in rows:
                row, (logits, features) = rows[key], computed
                parts.append((logits[row : row + 1], {k: v[row : row + 1] for k, v in features.items()}))
            else:
                parts.append(self._entries[key])
        device = inputs.device
        logits = torch.cat([p[0].to(device, non_blocking=True) for p in parts])
        names = parts[0][1].keys()
        features = {k: torch.cat([p[1][k].to(device, non_blocking=True) for p in parts]) for k in names}
        return logits, features

    @staticmethod
    def _checked(outputs: Any, batch: int) -> Outputs:
        """``outputs`` as ``(logits, features)``, every tensor batch-first with ``batch`` samples."""
        logits, features = outputs
        for name, value in (("logits", logits), *((f"tap '{k}'", v) for k, v in features.items())):
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"the teacher cache stores tensors; the teacher's {name} is a {type(value).__name__}")
            if value.ndim == 0 or value.shape[0] != batch:
                raise ValueError(
                    f"the teacher cache needs batch-first outputs: the teacher's {name} has shape "
                    f"{tuple(value.shape)} for a batch of {batch}"
                )
        return logits, features

    def _store(self, keys: list[SampleKey], logits: torch.Tensor, features: Mapping[str, torch.Tensor]) -> None:
        """Store each sample's outputs (row ``i`` under ``keys[i]``, each in its own memory) while the budget allows."""
        size = sum(t.numel() // t.shape[0] * t.element_size() for t in (logits, *features.values()))
        fits = 0 if self.full else min(len(keys), (self.max_bytes - self.nbytes) // max(size, 1))
        if fits:
            tensors = [logits.detach()[:fits], *(t.detach()[:fits] for t in features.values())]
            if self.storage == "cpu":  # one copy from the device per tensor, then the rows on the host
                tensors = [t.to("cpu") for t in tensors]
            for row, key in enumerate(keys[:fits]):
                logits_row, *feature_rows = (t[row : row + 1].clone() for t in tensors)
                self._entries[key] = (logits_row, dict(zip(features, feature_rows, strict=True)))
            self.nbytes += fits * size
        if fits < len(keys) and not self.full:
            self.full = True
            self._warn_full(size)

    def _warn_full(self, size: int) -> None:
        if self._warned:
            return
        self._warned = True
        warnings.warn(
            f"teacher cache full: {len(self)} samples take {_gib(self.nbytes)} and one more needs "
            f"{size / 2**20:.1f} MiB, over max_bytes={self.max_bytes} ({_gib(self.max_bytes)}); samples not stored "
            "now run the teacher live (stored ones still hit). Raise max_bytes (the bundles' teacher_cache_gib) to "
            "cache them all.",
            stacklevel=2,
        )


def resolve_teacher_outputs(mode: str, augment: Any) -> str:
    """The teacher outputs in force: ``"cached"`` or ``"live"``, from the bundles' ``teacher_outputs`` and ``augment``.

    ``"auto"`` caches when ``augment`` is false (deterministic inputs) and runs the teacher live otherwise;
    ``"cached"`` and ``"live"`` force the mode, except that ``"cached"`` with random augmentation is refused: every
    augmented input is new, so the cache would never hit and only cost memory.

    Args:
        mode: ``"auto"``, ``"cached"`` or ``"live"``.
        augment: the ``augment`` switch (``True``/``False`` or the strings ``mskd.flags.as_flag`` reads).

    Raises:
        ValueError: for another mode, an ``augment`` that is not a switch, or ``"cached"`` with ``augment`` true
            (one line naming both keys).
    """
    augmented = as_flag(augment, "augment")
    try:
        mode = look_up_option(mode.strip().lower() if isinstance(mode, str) else mode, TEACHER_OUTPUTS)
    except ValueError as e:
        raise ValueError(f"teacher_outputs: {str(e).strip()}") from None
    if mode == "cached" and augmented:
        raise ValueError(
            "teacher_outputs: 'cached' needs augment false (random augmentation makes every input new, so the cache "
            "would never hit and only cost memory); set teacher_outputs to 'auto' or 'live', or augment to false"
        )
    if mode == "auto":
        return "live" if augmented else "cached"
    return mode


def teacher_outputs_line(mode: str, augment: Any) -> str:
    """The line a distillation run prints at its start, e.g. ``teacher outputs: cached (augment=false)``.

    Raises:
        ValueError: as :func:`resolve_teacher_outputs`.
    """
    in_force = resolve_teacher_outputs(mode, augment)
    why = f"augment={str(as_flag(augment, 'augment')).lower()}"
    if mode.strip().lower() != "auto":
        why = f"teacher_outputs={mode.strip().lower()}, {why}"
    return f"teacher outputs: {in_force} ({why})"
