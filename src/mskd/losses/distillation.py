"""Composite distillation objective: segmentation loss plus a configured weighted sum of distillation terms."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any

import torch.nn as nn
from torch import Tensor
from torch.nn.modules.loss import _Loss

from mskd.losses.base import check_int

__all__ = ["DistillationLoss"]

_TERM_KEYS = frozenset({"loss", "weight", "stages"})
_RESERVED_NAMES = frozenset({"seg", "loss"})


@dataclass(frozen=True)
class _Term:
    loss: Callable[..., Tensor]
    weight: float
    stages: tuple[str, ...] | None


def _parse_weight(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"term {name!r}: weight must be a real number >= 0, got {value!r}.")
    weight = float(value)
    if not math.isfinite(weight) or weight < 0:
        raise ValueError(f"term {name!r}: weight must be finite and >= 0, got {value!r}.")
    return weight


def _parse_stages(name: str, value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ValueError(f"term {name!r}: stages must be a non-empty list of tap names, got {value!r}.")
    stages = tuple(value)
    if not stages or not all(isinstance(s, str) and s for s in stages):
        raise ValueError(f"term {name!r}: stages must be a non-empty list of non-empty tap names, got {value!r}.")
    if len(set(stages)) != len(stages):
        raise ValueError(f"term {name!r}: stages must not repeat a tap name, got {value!r}.")
    return stages


def _arguments(loss: object) -> dict[str, Any]:
    """The constructor arguments a loss keeps as attributes of the same name (``reduction`` left out)."""
    names = [
        p.name
        for p in inspect.signature(type(loss).__init__).parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in ("self", "reduction")
    ]
    return {name: getattr(loss, name) for name in names if hasattr(loss, name)}


class DistillationLoss(_Loss):
    """Segmentation loss plus a weighted sum of distillation terms whose weights live in the config.

    As implemented (torchdistill-style weighted sum)::

        total = seg_loss(z^S, y) + ramp(i) * sum_t weight_t * value_t
        value_t = loss_t(z^S, z^T, y, z^T)                               (logit term, no ``stages``)
        value_t = sum_{s in stages_t} loss_t(F^S_s, F^T_s, y, z^T)        (feature term)
        ramp(i) = min(1, i / warmup_iterations)   (1 when warmup_iterations is 0 or no iteration i is given)

    Teacher logits and features are detached. ``terms`` maps a term name to a mapping with the keys ``loss``
    (required, a callable with the uniform signature ``(student, teacher, target, teacher_logits)``), ``weight``
    (real ``>= 0``, default 1.0) and ``stages`` (optional non-empty list of tap names; makes it a feature term).
    Example::

        DistillationLoss(
            DiceCELoss(to_onehot_y=True, softmax=True),
            {
                "kd": {"loss": LogitDistillationLoss(temperature=4.0), "weight": 0.1},
                "ffd": {"loss": FeatureFilteringDistillationLoss(), "weight": 0.9, "stages": ["low", "high"]},
                "rgd": {"loss": RegionGraphDistillationLoss(), "weight": 0.9, "stages": ["low", "high"]},
            },
        )

    A term with weight exactly 0 is dropped silently: it is not computed and does not appear in the output, in
    :attr:`weights` or in :attr:`required_stages`. That is how a bundle config offers every baseline as a term whose
    weight defaults to 0 (switched on by setting its weight), without noise on every run.

    The warm-up ramp scales every distillation weight by ``min(1, iteration / warmup_iterations)`` (the
    segmentation loss is never scaled), so that distillation does not fight the segmentation loss while the
    student's features are still random; the trainer passes ``iteration`` (ignite's ``engine.state.iteration``,
    1 at the first step). The returned term values are always unweighted.

    Args:
        seg_loss: supervised loss called as ``seg_loss(student_logits, target)``.
        terms: the distillation terms, ``{name: {"loss": ..., "weight": ..., "stages": [...]}}``; ``None`` → none.
        warmup_iterations: length ``>= 0`` of the linear warm-up of the distillation weights, in iterations;
            0 (default) → no warm-up.

    Raises:
        TypeError: When ``seg_loss`` is not callable, ``terms`` is not a mapping, a term spec is not a mapping or
            ``warmup_iterations`` is not an integer.
        ValueError: When a term name is reserved (``"seg"``, ``"loss"``), empty or contains ``"."``; a term has
            unknown keys, no ``loss``, a non-callable ``loss``, a negative/NaN/infinite weight or empty stages;
            ``warmup_iterations < 0``.
    """

    def __init__(
        self,
        seg_loss: Callable[[Tensor, Tensor], Tensor],
        terms: Mapping[str, Mapping[str, Any]] | None = None,
        warmup_iterations: int = 0,
    ) -> None:
        super().__init__()
        if not callable(seg_loss):
            raise TypeError(f"seg_loss must be callable, got {seg_loss!r}.")
        self.seg_loss = seg_loss
        self.warmup_iterations = check_int("warmup_iterations", warmup_iterations, minimum=0)
        if terms is None:
            terms = {}
        if not isinstance(terms, Mapping):
            raise TypeError(f"terms must be a mapping of term name to term spec, got {type(terms).__name__}.")
        parsed: dict[str, _Term] = {}
        for name, spec in terms.items():
            if not isinstance(name, str) or not name or "." in name:
                raise ValueError(f"term names must be non-empty strings without '.', got {name!r}.")
            if name in _RESERVED_NAMES:
                raise ValueError(f"term name {name!r} is reserved (reserved: {sorted(_RESERVED_NAMES)}).")
            if not isinstance(spec, Mapping):
                raise TypeError(f"term {name!r}: spec must be a mapping, got {type(spec).__name__}.")
            unknown = sorted(set(spec) - _TERM_KEYS, key=str)
            if unknown:
                raise ValueError(f"term {name!r}: unknown keys {unknown}; allowed keys are {sorted(_TERM_KEYS)}.")
            if "loss" not in spec:
                raise ValueError(f"term {name!r}: missing required key 'loss' (got keys {sorted(spec, key=str)}).")
            if not callable(spec["loss"]):
                raise ValueError(f"term {name!r}: loss must be callable, got {spec['loss']!r}.")
            weight = _parse_weight(name, spec.get("weight", 1.0))
            stages = _parse_stages(name, spec.get("stages"))
            if weight == 0.0:  # switched off (a baseline left at its config default)
                continue
            parsed[name] = _Term(loss=spec["loss"], weight=weight, stages=stages)
        self._terms = parsed
        # register module losses so that .to(device) / state_dict see them
        self.term_losses = nn.ModuleDict({n: t.loss for n, t in parsed.items() if isinstance(t.loss, nn.Module)})

    @property
    def required_stages(self) -> tuple[str, ...]:
        """Sorted unique tap names used by the (active) feature terms."""
        return tuple(sorted({s for t in self._terms.values() for s in (t.stages or ())}))

    @property
    def weights(self) -> dict[str, float]:
        """Weight of every active term, in configuration order."""
        return {name: term.weight for name, term in self._terms.items()}

    def hyperparameters(self) -> dict[str, Any]:
        """What this loss computes, as flat names for tracking: its class and the segmentation loss's, the warm-up,
        and for each active term ``<term>_weight``, ``<term>_stages`` (feature terms) and ``<term>_<argument>`` for
        each constructor argument the term keeps (e.g. ``kd_temperature``, ``ffd_band_radius``); switched-off terms are
        absent, so a run's params are the ones in force."""
        params: dict[str, Any] = {
            "loss": type(self).__name__,
            "seg_loss": type(self.seg_loss).__name__,
            "distill_warmup_iterations": self.warmup_iterations,
        }
        for name, term in self._terms.items():
            params[f"{name}_weight"] = term.weight
            if term.stages is not None:
                params[f"{name}_stages"] = list(term.stages)
            params.update({f"{name}_{key}": value for key, value in _arguments(term.loss).items()})
        return params

    def warmup_factor(self, iteration: int | None = None) -> float:
        """The ramp ``min(1, iteration / warmup_iterations)`` applied to every distillation weight.

        Args:
            iteration: current training iteration (``>= 0``; ignite counts from 1), or ``None``.

        Returns:
            The factor in ``[0, 1]``; 1.0 when ``warmup_iterations`` is 0 or ``iteration`` is ``None``.

        Raises:
            TypeError: When ``iteration`` is not an integer (or ``None``).
            ValueError: When ``iteration < 0``.
        """
        if iteration is None or self.warmup_iterations == 0:
            return 1.0
        return min(1.0, check_int("iteration", iteration, minimum=0) / self.warmup_iterations)

    @staticmethod
    def _stage(features: Mapping[str, Tensor], term: str, stage: str, which: str) -> Tensor:
        if stage not in features:
            raise KeyError(
                f"term {term!r} needs stage {stage!r} from the {which} features, available stages: {sorted(features)}."
            )
        return features[stage]

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        target: Tensor,
        student_features: Mapping[str, Tensor] | None = None,
        teacher_features: Mapping[str, Tensor] | None = None,
        *,
        iteration: int | None = None,
    ) -> dict[str, Tensor]:
        """Compute the total loss and its parts.

        Args:
            student_logits: ``B, K, *spatial`` student logits: ``B, K, H, W`` for images, ``B, K, D, H, W`` for
                volumes (every term takes either, see :class:`mskd.losses.DistillationTermLoss`).
            teacher_logits: ``B, K, *spatial`` teacher logits (detached here).
            target: ``B, 1, *spatial`` ground-truth labels.
            student_features: tapped student features by stage name, ``B, C_s, *spatial_s`` with as many spatial
                dims as the logits.
            teacher_features: tapped teacher features by stage name (detached here), likewise.
            iteration: current training iteration for the warm-up ramp (see :meth:`warmup_factor`); ``None`` → no
                ramp.

        Returns:
            ``{"loss": total, "seg": seg_value, "<term>": unweighted term value, ...}``.

        Raises:
            TypeError: When a feature argument is not a mapping or ``iteration`` is not an integer.
            ValueError: When ``iteration < 0``; from a term, when its inputs mix 2-D and 3-D tensors (or are
                otherwise inconsistent).
            KeyError: When a stage needed by a feature term is missing from either feature mapping.
        """
        student_features = {} if student_features is None else student_features
        teacher_features = {} if teacher_features is None else teacher_features
        for arg, value in (("student_features", student_features), ("teacher_features", teacher_features)):
            if not isinstance(value, Mapping):
                raise TypeError(f"{arg} must be a mapping of stage name to tensor, got {type(value).__name__}.")
        ramp = self.warmup_factor(iteration)
        teacher_logits = teacher_logits.detach()
        seg = self.seg_loss(student_logits, target)
        values: dict[str, Tensor] = {}
        total = seg
        for name, term in self._terms.items():
            if term.stages is None:
                value = term.loss(student_logits, teacher_logits, target, teacher_logits)
            else:
                value = None
                for stage in term.stages:
                    feat_s = self._stage(student_features, name, stage, "student")
                    feat_t = self._stage(teacher_features, name, stage, "teacher").detach()
                    stage_value = term.loss(feat_s, feat_t, target, teacher_logits)
                    value = stage_value if value is None else value + stage_value
            values[name] = value
            total = total + (ramp * term.weight) * value
        return {"loss": total, "seg": seg, **values}
