"""Tests of the batch reduction of ``DistillationTermLoss`` over the samples that have something to distil."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from mskd.losses.base import DistillationTermLoss, SampleValues, check_real


class _FixedTerm(DistillationTermLoss):
    """A term whose per-sample values (and, optionally, valid samples) are given: ``values * student.sum()``."""

    def __init__(self, values: list[float], valid: list[bool] | None, reduction: str = "mean") -> None:
        super().__init__(reduction=reduction)
        self.values = torch.tensor(values)
        self.valid = None if valid is None else torch.tensor(valid)

    def per_sample(self, student: Tensor, teacher: Tensor, target: Tensor, teacher_logits: Tensor) -> Tensor:
        values = self.values * student.sum(dim=(1, 2, 3))  # differentiable in the student
        return values if self.valid is None else SampleValues(values, self.valid)


def _call(term: DistillationTermLoss, batch: int, requires_grad: bool = False) -> tuple[Tensor, Tensor]:
    student = torch.ones(batch, 1, 1, 1, requires_grad=requires_grad)
    zeros = torch.zeros(batch, 1, 1, 1)
    return term(student, zeros, zeros, zeros), student


@pytest.mark.parametrize(
    ("values", "valid", "reduction", "expected"),
    [
        # a plain tensor: every sample counts
        ([1.0, 2.0, 6.0], None, "mean", 3.0),
        ([1.0, 2.0, 6.0], None, "sum", 9.0),
        ([1.0, 2.0, 6.0], None, "none", [1.0, 2.0, 6.0]),
        # sample 1 has nothing to distil: mean (1 + 6) / 2, sum 1 + 6, none reports 0 for it
        ([1.0, 2.0, 6.0], [True, False, True], "mean", 3.5),
        ([1.0, 2.0, 6.0], [True, False, True], "sum", 7.0),
        ([1.0, 2.0, 6.0], [True, False, True], "none", [1.0, 0.0, 6.0]),
        # every sample valid: the plain reductions
        ([1.0, 2.0, 6.0], [True, True, True], "mean", 3.0),
        # no valid sample: 0, not 0 / 0
        ([1.0, 2.0, 6.0], [False, False, False], "mean", 0.0),
        ([1.0, 2.0, 6.0], [False, False, False], "sum", 0.0),
        ([1.0, 2.0, 6.0], [False, False, False], "none", [0.0, 0.0, 0.0]),
    ],
)
def test_reduce_over_valid_samples(
    values: list[float], valid: list[bool] | None, reduction: str, expected: float | list[float]
) -> None:
    value, _ = _call(_FixedTerm(values, valid, reduction), batch=3)
    torch.testing.assert_close(value, torch.tensor(expected))


def test_invalid_samples_get_no_gradient() -> None:
    # d mean / d student_b = values_b / n_valid for valid samples, 0 for the invalid one (whatever its value)
    term = _FixedTerm([2.0, 5.0, 4.0], [True, False, True])
    value, student = _call(term, batch=3, requires_grad=True)
    value.backward()
    torch.testing.assert_close(value, torch.tensor(3.0))
    torch.testing.assert_close(student.grad.flatten(), torch.tensor([1.0, 0.0, 2.0]))


def test_no_valid_sample_has_finite_zero_gradient() -> None:
    value, student = _call(_FixedTerm([1.0, 2.0], [False, False]), batch=2, requires_grad=True)
    value.backward()
    assert value.item() == 0.0
    assert torch.equal(student.grad, torch.zeros_like(student))


def test_sample_values_shapes_must_match() -> None:
    with pytest.raises(ValueError, match=r"\(3,\).*\(2,\)"):
        _call(_FixedTerm([1.0, 2.0, 3.0], [True, False]), batch=3)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"value": 1.5, "maximum": 1.0}, ValueError, r"x must be finite and >= 0.0 and <= 1.0, got 1.5"),
        ({"value": -0.1, "maximum": 1.0}, ValueError, r">= 0.0 and <= 1.0, got -0.1"),
        ({"value": float("inf"), "maximum": 1.0}, ValueError, "inf"),
    ],
)
def test_check_real_maximum(kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        check_real("x", **kwargs)
    assert check_real("x", 1.0, maximum=1.0) == 1.0 and check_real("x", 0, maximum=1.0) == 0.0
