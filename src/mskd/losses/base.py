"""Common base class of the distillation terms.

Every distillation term of ``mskd`` is called the same way::

    loss(student, teacher, target, teacher_logits) -> Tensor

so that the composite :class:`mskd.losses.DistillationLoss` can treat logit and feature terms alike. This module
holds that uniform call signature, the input checks shared by all terms and the batch reduction, which averages over
the samples that have something to distil (:class:`SampleValues`).
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import NamedTuple

import torch
from monai.utils import LossReduction, look_up_option
from torch import Tensor
from torch.nn.modules.loss import _Loss

from mskd.losses.regions import check_labels

__all__ = ["DistillationTermLoss", "SampleValues", "check_int", "check_real"]


class SampleValues(NamedTuple):
    """Per-sample values of a term together with the samples that have something to distil.

    A term returns it from :meth:`DistillationTermLoss.per_sample` when some samples carry no signal for it (e.g. a
    background-only slice for a region term), so that they do not dilute the batch mean.

    Attributes:
        values: ``(B,)`` per-sample values (any value for an invalid sample: it is replaced by 0).
        valid: ``(B,)`` bool, whether each sample has something to distil.
    """

    values: Tensor
    valid: Tensor


def check_real(
    name: str, value: object, *, minimum: float = 0.0, maximum: float | None = None, strict: bool = False
) -> float:
    """Validate a real-valued hyper-parameter and return it as ``float``.

    Args:
        name: argument name used in the error message.
        value: the value to check (``bool`` is rejected).
        minimum: smallest allowed value.
        maximum: largest allowed value, or ``None`` for no upper bound.
        strict: if ``True`` the value must be strictly greater than ``minimum``.

    Returns:
        ``float(value)``.

    Raises:
        TypeError: When ``value`` is not a real number.
        ValueError: When ``value`` is not finite, is below (or, with ``strict``, equal to) ``minimum`` or above
            ``maximum``.
    """
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__}).")
    value = float(value)
    too_large = maximum is not None and value > maximum
    if not math.isfinite(value) or value < minimum or (strict and value == minimum) or too_large:
        bound = f"> {minimum}" if strict else f">= {minimum}"
        if maximum is not None:
            bound += f" and <= {maximum}"
        raise ValueError(f"{name} must be finite and {bound}, got {value!r}.")
    return value


def check_int(name: str, value: object, *, minimum: int = 0) -> int:
    """Validate an integer hyper-parameter and return it as ``int``.

    Args:
        name: argument name used in the error message.
        value: the value to check (``bool`` is rejected).
        minimum: smallest allowed value.

    Returns:
        ``int(value)``.

    Raises:
        TypeError: When ``value`` is not an integer.
        ValueError: When ``value < minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__}).")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}.")
    return int(value)


def _at_least_float32(value: Tensor) -> Tensor:
    """Upcast half/bfloat16 (and non-float) tensors to float32; float32/float64 are returned unchanged."""
    return value if value.dtype in (torch.float32, torch.float64) else value.float()


def _check_tensor(name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}.")
    if value.ndim != 4:
        raise ValueError(f"{name} must be a 4-D tensor (B, C, H, W), got shape {tuple(value.shape)}.")
    return value


class DistillationTermLoss(_Loss):
    """Base class of a teacher → student distillation term.

    Subclasses implement :meth:`per_sample`, which returns one value per batch item, either as a tensor (every sample
    counts) or as :class:`SampleValues` ``(values, valid)`` (only the samples with something to distil count);
    :meth:`forward` checks the inputs, detaches the teacher tensors (gradients reach the student only), runs
    :meth:`per_sample` in float32 (float64 inputs stay float64) with autocast disabled, and applies ``reduction``
    over the valid samples (see :meth:`reduce`).

    Shapes (``K`` = number of classes, taken from ``teacher_logits``):

    - ``student``: ``B, C_s, h_s, w_s`` (logits ``B, K, H, W`` for logit terms, tapped features otherwise).
    - ``teacher``: ``B, C_t, h_t, w_t``.
    - ``target``: ``B, 1, H, W`` ground-truth labels with integer values ``0..K-1`` (any dtype).
    - ``teacher_logits``: ``B, K, H, W`` teacher logits at input resolution.

    Args:
        reduction: {``"none"``, ``"mean"``, ``"sum"``} reduction over the batch of the per-sample values:
            ``"mean"`` averages over the valid samples (0 when there is none), ``"sum"`` sums them, ``"none"``
            returns shape ``(B,)`` with 0 for the invalid ones. Defaults to ``"mean"``.

    Raises:
        ValueError: When ``reduction`` is not one of ``"none"``, ``"mean"``, ``"sum"``.
    """

    def __init__(self, reduction: LossReduction | str = LossReduction.MEAN) -> None:
        super().__init__(reduction=look_up_option(reduction, LossReduction).value)

    def forward(self, student: Tensor, teacher: Tensor, target: Tensor, teacher_logits: Tensor) -> Tensor:
        """Compute the reduced distillation term.

        Args:
            student: student logits or features, ``B, C_s, h_s, w_s``.
            teacher: teacher logits or features, ``B, C_t, h_t, w_t`` (detached here).
            target: ground-truth label map ``B, 1, H, W``.
            teacher_logits: teacher logits ``B, K, H, W`` (detached here).

        Returns:
            The per-sample values ``(B,)`` reduced over the valid samples according to ``reduction``.

        Raises:
            TypeError: When an input is not a tensor.
            ValueError: When shapes are inconsistent or labels are outside ``0..K-1``.
        """
        self.check_inputs(student, teacher, target, teacher_logits)
        # computed in (at least) float32 outside autocast: region counts and prototype sums overflow float16
        with torch.autocast(device_type=student.device.type, enabled=False):
            per_sample = self.per_sample(
                _at_least_float32(student),
                _at_least_float32(teacher.detach()),
                target,
                _at_least_float32(teacher_logits.detach()),
            )
        return self.reduce(per_sample)

    def per_sample(
        self, student: Tensor, teacher: Tensor, target: Tensor, teacher_logits: Tensor
    ) -> Tensor | SampleValues:
        """Return the unreduced term: ``(B,)`` values, or :class:`SampleValues` with the samples that count.

        Implemented by subclasses (inputs already checked).
        """
        raise NotImplementedError

    @staticmethod
    def check_inputs(student: Tensor, teacher: Tensor, target: Tensor, teacher_logits: Tensor) -> None:
        """Checks shared by every term: 4-D tensors, one batch size, ``target`` matching ``teacher_logits``.

        Args:
            student: student logits or features, ``B, C_s, h_s, w_s``.
            teacher: teacher logits or features, ``B, C_t, h_t, w_t``.
            target: ground-truth label map ``B, 1, H, W``.
            teacher_logits: teacher logits ``B, K, H, W``.

        Raises:
            TypeError: When an input is not a tensor.
            ValueError: When an input is not 4-D, batch sizes differ, ``target`` is not ``B, 1, H, W`` at the
                resolution of ``teacher_logits`` or holds values outside ``0..K-1``.
        """
        for name, value in (
            ("student", student),
            ("teacher", teacher),
            ("target", target),
            ("teacher_logits", teacher_logits),
        ):
            _check_tensor(name, value)
        if target.shape[1] != 1:
            raise ValueError(f"target must have one channel (B, 1, H, W), got shape {tuple(target.shape)}.")
        if target.shape[0] != teacher_logits.shape[0] or target.shape[2:] != teacher_logits.shape[2:]:
            raise ValueError(
                f"target {tuple(target.shape)} and teacher_logits {tuple(teacher_logits.shape)} must share "
                "batch size and spatial size."
            )
        batch = teacher_logits.shape[0]
        for name, value in (("student", student), ("teacher", teacher)):
            if value.shape[0] != batch:
                raise ValueError(
                    f"{name} batch size {value.shape[0]} (shape {tuple(value.shape)}) differs from teacher_logits "
                    f"{tuple(teacher_logits.shape)}."
                )
        check_labels(target, teacher_logits.shape[1])

    def reduce(self, per_sample: Tensor | SampleValues) -> Tensor:
        """Apply ``reduction`` over the valid samples.

        As implemented, with values ``L_b`` and valid samples ``V`` (every sample for a plain tensor)::

            "none": [b in V] * L_b  (shape (B,))    "sum": sum_{b in V} L_b    "mean": sum_{b in V} L_b / max(|V|, 1)

        so a batch without a valid sample gives 0 (no NaN), and invalid samples get no gradient.

        Args:
            per_sample: ``(B,)`` values, or :class:`SampleValues` ``(values, valid)`` of shape ``(B,)`` each.

        Returns:
            The reduced value (a scalar), or the ``(B,)`` values for ``"none"``.

        Raises:
            ValueError: When ``values`` and ``valid`` differ in shape.
        """
        if isinstance(per_sample, SampleValues):
            values, valid = per_sample
            if values.shape != valid.shape:
                raise ValueError(
                    f"SampleValues needs values and valid of one shape, got {tuple(values.shape)} and "
                    f"{tuple(valid.shape)}."
                )
            values = torch.where(valid, values, torch.zeros_like(values))
            count = valid.sum().clamp(min=1).to(values.dtype)
        else:
            values, count = per_sample, None
        if self.reduction == LossReduction.MEAN.value:
            return values.mean() if count is None else values.sum() / count
        if self.reduction == LossReduction.SUM.value:
            return values.sum()
        return values
