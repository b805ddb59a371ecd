"""Common base class of the distillation terms.

Every distillation term of ``mskd`` is called the same way::

    loss(student, teacher, target, teacher_logits) -> Tensor

so that the composite :class:`mskd.losses.DistillationLoss` can treat logit and feature terms alike. This module
holds that uniform call signature, the input checks shared by all terms and the batch reduction, which averages over
the samples that have something to distil (:class:`SampleValues`). Inputs are images ``B, C, H, W`` or volumes
``B, C, D, H, W``, one kind for every input of a call; grid hyper-parameters (RGD's sub-regions, SKD's pooling grid)
are one count for every spatial axis or one per axis (:func:`check_cells`, :func:`cells_per_axis`). The maths treats
every spatial axis alike, so the slice axis of a volume may come anywhere (MONAI's volumes are ``B, C, H, W, D``);
per-axis settings follow the order of the tensors' axes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real
from typing import NamedTuple

import torch
from monai.utils import LossReduction, look_up_option
from torch import Tensor
from torch.nn.modules.loss import _Loss

from mskd.losses.regions import check_labels, check_same_spatial_dims, spatial_dims

__all__ = ["DistillationTermLoss", "SampleValues", "cells_per_axis", "check_cells", "check_int", "check_real"]


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
    spatial_dims(value, name)  # B, C, H, W or B, C, D, H, W
    return value


def check_cells(name: str, value: object) -> int | tuple[int, ...]:
    """Validate a grid hyper-parameter: one cell count for every spatial axis, or one per axis.

    Args:
        name: argument name used in the error message.
        value: an integer ``>= 1`` (the same count along every axis, 2-D or 3-D), or a sequence of 2 (``(n_h,
            n_w)``, for images) or 3 (for volumes) integers ``>= 1``, one per spatial axis in the order of the
            tensors' axes: ``(n_d, n_h, n_w)`` for ``B, C, D, H, W``, ``(n_h, n_w, n_d)`` for MONAI's
            ``B, C, H, W, D``.

    Returns:
        ``int(value)``, or the counts as a tuple of ints.

    Raises:
        TypeError: When ``value`` (or an entry) is not an integer, or is neither an integer nor a sequence.
        ValueError: When a count is ``< 1`` or a sequence does not hold 2 or 3 counts.
    """
    if isinstance(value, Integral) and not isinstance(value, bool):
        return check_int(name, value, minimum=1)
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise TypeError(
            f"{name} must be an integer or a sequence of one integer per spatial axis, got {value!r} "
            f"({type(value).__name__})."
        )
    if len(value) not in (2, 3):
        raise ValueError(
            f"{name} must give one count per spatial axis, (n_h, n_w) or (n_d, n_h, n_w), got {len(value)}: "
            f"{tuple(value)!r}."
        )
    return tuple(check_int(f"{name}[{axis}]", count, minimum=1) for axis, count in enumerate(value))


def cells_per_axis(name: str, cells: int | tuple[int, ...], features: Tensor) -> tuple[int, ...]:
    """The per-axis counts of a grid hyper-parameter (see :func:`check_cells`) for a ``B, C, *spatial`` map.

    Args:
        name: argument name used in the error message.
        cells: one count for every axis, or one per axis.
        features: the map the grid is laid over (2-D or 3-D).

    Returns:
        One count per spatial axis of ``features``: ``cells`` repeated, or ``cells`` itself.

    Raises:
        ValueError: When ``cells`` is a sequence whose length differs from the number of spatial dims of ``features``.
    """
    dims = spatial_dims(features, "features")
    if isinstance(cells, int):
        return (cells,) * dims
    if len(cells) != dims:
        raise ValueError(
            f"{name}={tuple(cells)!r} gives {len(cells)} per-axis counts but the features {tuple(features.shape)} have "
            f"{dims} spatial dims; give {dims} counts or one integer for every axis."
        )
    return tuple(cells)


class DistillationTermLoss(_Loss):
    """Base class of a teacher → student distillation term.

    Subclasses implement :meth:`per_sample`, which returns one value per batch item, either as a tensor (every sample
    counts) or as :class:`SampleValues` ``(values, valid)`` (only the samples with something to distil count);
    :meth:`forward` checks the inputs, detaches the teacher tensors (gradients reach the student only), runs
    :meth:`per_sample` in float32 (float64 inputs stay float64) with autocast disabled, and applies ``reduction``
    over the valid samples (see :meth:`reduce`).

    Shapes (``K`` = number of classes, taken from ``teacher_logits``), all ``B, C, *spatial`` with two spatial dims
    (``B, C, H, W``, images) or three (``B, C, D, H, W``, volumes), the same number for every input of one call:

    - ``student``: ``B, C_s, *spatial_s`` (logits ``B, K, *spatial`` for logit terms, tapped features otherwise).
    - ``teacher``: ``B, C_t, *spatial_t``.
    - ``target``: ``B, 1, *spatial`` ground-truth labels with integer values ``0..K-1`` (any dtype).
    - ``teacher_logits``: ``B, K, *spatial`` teacher logits at input resolution.

    Every term computes the same maths in 2-D and 3-D with one implementation (pixels are voxels in 3-D), treating
    every spatial axis alike (the slice axis may come anywhere: MONAI's volumes are ``B, C, H, W, D``), and a volume
    of depth 1 gives the value of the image it holds.

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
            student: student logits or features, ``B, C_s, *spatial_s`` (2-D or 3-D).
            teacher: teacher logits or features, ``B, C_t, *spatial_t`` (detached here).
            target: ground-truth label map ``B, 1, *spatial``.
            teacher_logits: teacher logits ``B, K, *spatial`` (detached here).

        Returns:
            The per-sample values ``(B,)`` reduced over the valid samples according to ``reduction``.

        Raises:
            TypeError: When an input is not a tensor.
            ValueError: When shapes are inconsistent (including a mix of 2-D and 3-D inputs) or labels are outside
                ``0..K-1``.
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
        """Checks shared by every term: 2-D or 3-D inputs alike, one batch size, ``target`` matching ``teacher_logits``.

        Args:
            student: student logits or features, ``B, C_s, *spatial_s``.
            teacher: teacher logits or features, ``B, C_t, *spatial_t``.
            target: ground-truth label map ``B, 1, *spatial``.
            teacher_logits: teacher logits ``B, K, *spatial``.

        Raises:
            TypeError: When an input is not a tensor.
            ValueError: When an input is neither 4-D (``B, C, H, W``) nor 5-D (``B, C, D, H, W``), an input has not
                as many spatial dims as ``teacher_logits`` (the message names it and both shapes), batch sizes
                differ, ``target`` is not ``B, 1, *spatial`` at the resolution of ``teacher_logits`` or holds values
                outside ``0..K-1``.
        """
        for name, value in (
            ("student", student),
            ("teacher", teacher),
            ("target", target),
            ("teacher_logits", teacher_logits),
        ):
            _check_tensor(name, value)
        for name, value in (("student", student), ("teacher", teacher), ("target", target)):
            check_same_spatial_dims(name, value, "teacher_logits", teacher_logits)
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
