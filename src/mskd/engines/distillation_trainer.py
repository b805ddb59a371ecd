"""MONAI trainer that distils a frozen teacher into the student it trains."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from ignite.engine import Events
from monai.data import MetaTensor
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys
from monai.utils import look_up_option
from torch import nn

from mskd.networks.taps import FeatureTaps, unwrap_network

from .teacher_cache import TEACHER_CACHE_HIT_RATE, TeacherCache

__all__ = ["DistillationTrainer", "LOSS_TERMS", "TEACHER_AUTOCAST_DTYPES"]

LOSS_TERMS = "loss_terms"  # engine output key holding the named loss terms
TEACHER_AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


# the channels-last memory format of a batch, by its number of dimensions
_CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


def _channels_last_format(network: torch.nn.Module) -> torch.memory_format:
    """``torch.channels_last_3d`` for a network with 5-D (3D convolution) weights, else ``torch.channels_last``."""
    volumetric = any(p.ndim == 5 for p in network.parameters())
    return torch.channels_last_3d if volumetric else torch.channels_last


def _autocast_dtype(value: str | torch.dtype | None) -> torch.dtype | None:
    """``teacher_autocast`` as a dtype: ``None``, ``"bfloat16"`` (``torch.bfloat16``) or ``"float16"``."""
    if value is None:
        return None
    if isinstance(value, torch.dtype):
        if value not in TEACHER_AUTOCAST_DTYPES.values():
            raise ValueError(f"teacher_autocast must be bfloat16 or float16 (or None for float32), got {value}.")
        return value
    return look_up_option(value, TEACHER_AUTOCAST_DTYPES)


def _takes_iteration(loss_function: Callable) -> bool:
    """Whether the loss accepts the keyword ``iteration`` (e.g. for the warm-up of :class:`DistillationLoss`)."""
    # an nn.Module's own signature is `(*args, **kwargs)`: read its forward instead
    target = loss_function.forward if isinstance(loss_function, nn.Module) else loss_function
    parameters = inspect.signature(target).parameters.values()
    return any(p.name == "iteration" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


class DistillationTrainer(SupervisedTrainer):
    """``SupervisedTrainer`` whose loss also sees a frozen teacher's logits and both networks' tapped features.

    One iteration: the teacher runs in eval mode under ``torch.no_grad()`` with its taps
    (:meth:`teacher_forward`); the student runs with its taps; ``loss_function`` (a
    :class:`mskd.losses.DistillationLoss`) returns named terms; the total is back-propagated into the student only.
    The standard ``IterationEvents`` fire as in ``SupervisedTrainer``, and ``engine.state.output`` holds ``image``,
    ``label``, ``pred``, ``loss`` and ``loss_terms`` (detached tensors, one per term) so that handlers can log every
    term. Loss weights live in the loss, not here. Nothing in the iteration waits for the device (no ``.item()``):
    a handler that reads a loss value does.

    Speed options (docs/performance.md has their measured effect):

    - ``teacher_autocast``: run the teacher alone under ``torch.autocast`` in bfloat16 or float16, whatever ``amp``
      says for the student. The distillation targets then carry that precision; the losses compute in float32.
      bfloat16 keeps the teacher's logits and features within 3 % of their largest float32 magnitude, 98 % of the
      pixels' argmax and the total loss within 1 % (tests/engines). For GPUs and CPUs with native bfloat16 (AMX,
      AVX512-BF16); elsewhere it is emulated and slower. float16 is for CUDA only.
    - ``channels_last``: both networks and the input batch in ``torch.channels_last`` memory format
      (``torch.channels_last_3d`` for 3D networks and volumes; set once at construction; with DDP, wrap a network
      that is already channels-last). The teacher's logits and features come
      out channels-last too, which also makes the losses' per-pixel work over classes and channels (argmax,
      bilinear resizing) faster.
    - ``compile`` / ``compile_kwargs`` (``SupervisedTrainer`` arguments): ``torch.compile`` the teacher as well as the
      student. Taps still work (the hooks are traced). The networks then get plain tensors, so ``pred`` is a plain
      tensor even for ``MetaTensor`` input.
    - ``teacher_cache``: keep the teacher's logits and features of every training sample (a :class:`TeacherCache`,
      keyed by the content of the sample's image) and run the teacher only on samples not seen before
      (:meth:`cached_teacher_forward`). With deterministic inputs (no random augmentation) a step on slices drawn
      before costs about a student step; with random augmentation every input is new and the teacher runs on every
      sample, as without the cache. A hit needs a bit-identical image, so it never returns another sample's outputs;
      a batch assembled from the cache equals the teacher's full-batch output up to the last float bits (a sub-batch
      forward may round differently), so a resumed run, which starts with an empty cache, matches the uninterrupted
      one to that precision only. ``engine.state.metrics["teacher_cache_hit_rate"]`` holds the epoch's hit rate
      (the epoch loggers log it); the cache itself (``engine.teacher_cache``) counts hits and misses since the start.
      Only the image keys the cache: a batch with extra inferer arguments is refused. With ``compile``, the first
      sub-batches of new sizes recompile the teacher (then once for a dynamic batch size).

    Args:
        device: device to train on.
        max_epochs: number of epochs.
        train_data_loader: loader of training batches: slices (``image``, ``label``: B, 1, H, W) for 2D networks,
            patches (B, 1, D, H, W) for 3D ones.
        network: the student.
        optimizer: optimiser of the student's parameters.
        loss_function: callable ``(student_logits, teacher_logits, target, student_features, teacher_features)``
            returning a dict with key ``"loss"`` (the total) and one entry per term; when it accepts the keyword
            ``iteration``, it gets ``engine.state.iteration`` (1 at the first step).
        teacher: the teacher; it is frozen (``requires_grad_(False)``) and kept in eval mode.
        student_taps: tap name -> sub-module path of the student.
        teacher_taps: tap name -> sub-module path of the teacher; must have the same tap names.
        teacher_autocast: ``None`` (the teacher follows ``amp``), ``"bfloat16"`` or ``"float16"`` (or the torch dtypes).
        channels_last: use the channels-last memory format for both networks and the inputs.
        teacher_cache: ``None``/``False`` (the teacher runs on every batch), ``True`` (a ``TeacherCache()``: up to
            4 GiB on the training device) or a :class:`TeacherCache` of this trainer's own (bound to ``teacher``).
        kwargs: every other ``SupervisedTrainer`` argument (``amp``, ``inferer``, ``train_handlers``, ``compile``, ...).

    Raises:
        ValueError: when tap names differ between the networks, a tap path does not exist, the loss needs a stage that
            is not tapped, ``teacher_autocast`` is not a supported dtype, or ``teacher_cache`` already belongs to
            another teacher.
        TypeError: when ``teacher_cache`` is neither a bool, ``None`` nor a :class:`TeacherCache`.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Any,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_function: Callable,
        teacher: nn.Module,
        student_taps: Mapping[str, str] | None = None,
        teacher_taps: Mapping[str, str] | None = None,
        teacher_autocast: str | torch.dtype | None = None,
        channels_last: bool = False,
        teacher_cache: bool | TeacherCache | None = None,
        **kwargs: Any,
    ) -> None:
        if teacher_cache is True:
            teacher_cache = TeacherCache()
        elif teacher_cache is None or teacher_cache is False:
            teacher_cache = None
        elif not isinstance(teacher_cache, TeacherCache):
            raise TypeError(
                f"teacher_cache must be a bool, None or a mskd.engines.TeacherCache, got {type(teacher_cache).__name__}"
            )
        if teacher_cache is not None:
            teacher_cache.bind(teacher)
        self.teacher_cache = teacher_cache
        self.teacher_autocast = _autocast_dtype(teacher_autocast)
        if self.teacher_autocast == torch.float16 and torch.device(device).type == "cpu":
            warnings.warn("teacher_autocast='float16' on CPU is emulated and slow; use 'bfloat16'.", stacklevel=2)
        self.channels_last = channels_last
        if channels_last:  # in place: the optimiser keeps the same parameter objects
            for module in (unwrap_network(network), teacher):
                module.to(memory_format=_channels_last_format(module))
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=loss_function,
            **kwargs,
        )
        # Built once on the plain modules: the module paths are checked here, not at every iteration; each `with`
        # re-hooks them (a compiled network traces the hooks).
        self.student_feature_taps = FeatureTaps(network, student_taps)
        self.teacher_feature_taps = FeatureTaps(teacher, teacher_taps)
        names = set(self.student_feature_taps.taps)
        if names != set(self.teacher_feature_taps.taps):
            raise ValueError(
                f"student and teacher taps must have the same names: student {sorted(names)}, "
                f"teacher {sorted(self.teacher_feature_taps.taps)}"
            )
        needed: Sequence[str] = getattr(loss_function, "required_stages", ())
        missing = sorted(set(needed) - names)
        if missing:
            raise ValueError(f"the loss needs stages {missing} but the taps define only {sorted(names)}")
        teacher.requires_grad_(False).eval()
        self.teacher = torch.compile(teacher, **(kwargs.get("compile_kwargs") or {})) if self.compile else teacher
        self.loss_takes_iteration = _takes_iteration(loss_function)
        self._epoch_lookups = (0, 0)  # the cache's (hits, misses) when the epoch started
        if self.teacher_cache is not None:
            self.add_event_handler(Events.EPOCH_STARTED, self._count_epoch_lookups)

    def _count_epoch_lookups(self, _engine: DistillationTrainer | None = None) -> None:
        self._epoch_lookups = (self.teacher_cache.hits, self.teacher_cache.misses)

    def _autocast(self, dtype: torch.dtype | None = None) -> AbstractContextManager:
        """Autocast of a forward pass: ``dtype`` when given, else the ``amp`` settings, else none."""
        if dtype is not None:
            return torch.autocast(self.state.device.type, dtype=dtype)
        return torch.autocast(self.state.device.type, **self.amp_kwargs) if self.amp else nullcontext()

    def _network_input(self, inputs: torch.Tensor) -> torch.Tensor:
        """The batch as the networks take it: a plain tensor when compiled (pytorch#117026), channels-last if set."""
        if self.compile and isinstance(inputs, MetaTensor):
            inputs = inputs.as_tensor()
        if self.channels_last and inputs.ndim in _CHANNELS_LAST:
            inputs = inputs.contiguous(memory_format=_CHANNELS_LAST[inputs.ndim])
        return inputs

    def teacher_forward(self, inputs: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, dict]:
        """The teacher's logits and tapped features for a batch, exactly as an iteration computes them.

        The teacher runs in eval mode under ``torch.no_grad()``, under ``teacher_autocast`` when set. Not
        ``torch.inference_mode()``: it measured no faster here (docs/performance.md) and its tensors cannot be saved
        for backward, which a loss multiplying student by teacher tensors would need.

        Args:
            inputs: the network input batch (already on the device, see :meth:`_network_input`).
            args: extra positional arguments of the inferer.
            kwargs: extra keyword arguments of the inferer.

        Returns:
            ``(teacher_logits, {tap name: features})``.
        """
        unwrap_network(self.teacher).eval()
        with torch.no_grad(), self._autocast(self.teacher_autocast), self.teacher_feature_taps as taps:
            logits = self.inferer(inputs, self.teacher, *args, **kwargs)
        return logits, taps.features

    def cached_teacher_forward(
        self, images: torch.Tensor, inputs: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, dict]:
        """:meth:`teacher_forward` through ``teacher_cache``: the teacher runs only on the samples not stored yet.

        Also puts the epoch's hit rate (hits ÷ samples looked up since the epoch started) into
        ``self.state.metrics["teacher_cache_hit_rate"]``.

        Args:
            images: the batch's images as the data loader gave them (on the CPU), which key the samples.
            inputs: the network input batch (already on the device, see :meth:`_network_input`).
            args: extra positional arguments of the inferer (refused: they do not key the cache).
            kwargs: extra keyword arguments of the inferer (refused likewise).

        Returns:
            ``(teacher_logits, {tap name: features})`` of the whole batch, in batch order.

        Raises:
            ValueError: when the trainer has no ``teacher_cache``, or extra inferer arguments are given.
        """
        if self.teacher_cache is None:
            raise ValueError("cached_teacher_forward needs a teacher_cache; use teacher_forward")
        if args or kwargs:
            raise ValueError(
                "teacher_cache keys the teacher's outputs by the image alone, but this batch passes extra inferer "
                f"arguments ({len(args)} positional, keywords {sorted(kwargs)}); use teacher_cache=None"
            )
        cache = self.teacher_cache
        outputs = cache.outputs(images, inputs, lambda batch: self.teacher_forward(self._network_input(batch)))
        hits, misses = cache.hits - self._epoch_lookups[0], cache.misses - self._epoch_lookups[1]
        self.state.metrics[TEACHER_CACHE_HIT_RATE] = hits / (hits + misses) if hits + misses else 0.0
        return outputs

    def _iteration(self, engine: DistillationTrainer, batchdata: dict[str, torch.Tensor]) -> dict:
        """Run one distillation step; see the class docstring for what goes into ``engine.state.output``."""
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        inputs, targets = batch[0], batch[1]
        args, kwargs = (batch[2], batch[3]) if len(batch) == 4 else ((), {})
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        inputs = engine._network_input(inputs)
        if engine.teacher_cache is None:
            teacher_logits, teacher_features = engine.teacher_forward(inputs, *args, **kwargs)
        else:
            images = batchdata[Keys.IMAGE] if isinstance(batchdata, Mapping) else batchdata[0]
            teacher_logits, teacher_features = engine.cached_teacher_forward(images, inputs, *args, **kwargs)

        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        with engine._autocast():
            with engine.student_feature_taps as student_taps:
                engine.state.output[Keys.PRED] = engine.inferer(inputs, engine.network, *args, **kwargs)
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            step = {"iteration": engine.state.iteration} if engine.loss_takes_iteration else {}
            terms = engine.loss_function(
                engine.state.output[Keys.PRED],
                teacher_logits,
                targets,
                student_taps.features,
                teacher_features,
                **step,
            )
        loss = terms["loss"]
        engine.state.output[Keys.LOSS] = loss
        engine.state.output[LOSS_TERMS] = {name: value.detach() for name, value in terms.items() if name != "loss"}
        engine.fire_event(IterationEvents.LOSS_COMPLETED)

        if engine.scaler is not None:
            engine.scaler.scale(loss).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            loss.backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
