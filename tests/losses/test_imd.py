"""Tests of ``ImportanceMapDistillationLoss`` (EMKD's IMD)."""

from __future__ import annotations

import math

import pytest
import torch

from mskd.losses import ImportanceMapDistillationLoss
from mskd.losses.imd import importance_map
from tests.losses.inputs import random_inputs, zero_cases

UNIFORM = torch.ones(1, 1, 2, 2)  # teacher: |F|^p = 1 everywhere -> a^T = (1/2, 1/2, 1/2, 1/2) for any p


def _student(*channels: list[list[float]]) -> torch.Tensor:
    return torch.tensor(channels).unsqueeze(0)


@pytest.mark.parametrize(
    ("student", "power", "expected"),
    [
        # a^S = (1, 0, 0, 0): sum (a^S - a^T)^2 = 1/4 + 3 * 1/4 = 1, whatever p
        (_student([[1.0, 0.0], [0.0, 0.0]]), 4.0, 1.0),
        # sum (a - b)^2 = |a|^2 + |b|^2 - 2 a.b = 2 - 2 a^S.a^T, a^T.a^S = (1/2) * sum a^S
        # p = 2: |F|^2 = (4, 1, 0, 0), a^S = (4, 1, 0, 0)/sqrt(17) -> 2 - 5/sqrt(17)
        (_student([[2.0, 1.0], [0.0, 0.0]]), 2.0, 2 - 5 / math.sqrt(17)),
        # p = 4: (16, 1, 0, 0)/sqrt(257) -> 2 - 17/sqrt(257); the sign of F does not matter (|F|^p)
        (_student([[-2.0, 1.0], [0.0, 0.0]]), 4.0, 2 - 17 / math.sqrt(257)),
        # p = 1: (2, 1, 0, 0)/sqrt(5) -> 2 - 3/sqrt(5)
        (_student([[-2.0, 1.0], [0.0, 0.0]]), 1.0, 2 - 3 / math.sqrt(5)),
        # two student channels, one teacher channel: mean_c |F|^2 = (2, 2, 0, 0) -> a^S = (1, 1, 0, 0)/sqrt(2)
        # -> 2 - 2/sqrt(2) = 2 - sqrt(2)
        (_student([[2.0, 0.0], [0.0, 0.0]], [[0.0, 2.0], [0.0, 0.0]]), 2.0, 2 - math.sqrt(2)),
    ],
)
def test_hand_computed(student: torch.Tensor, power: float, expected: float) -> None:
    target = torch.zeros(1, 1, 2, 2)
    value = ImportanceMapDistillationLoss(power=power)(student, UNIFORM, target, torch.zeros(1, 2, 2, 2))
    torch.testing.assert_close(value, torch.tensor(expected))


def test_importance_map_hand() -> None:
    amap = importance_map(_student([[2.0, 1.0], [0.0, 0.0]]), power=2.0)
    torch.testing.assert_close(amap, torch.tensor([[4.0, 1.0, 0.0, 0.0]]) / math.sqrt(17))
    assert torch.equal(importance_map(torch.zeros(2, 3, 4, 4)), torch.zeros(2, 16))


@pytest.mark.parametrize(("case", "student", "teacher"), zero_cases())
def test_zero_when_maps_identical(case: str, student: torch.Tensor, teacher: torch.Tensor) -> None:
    _, _, target, teacher_logits = random_inputs()
    value = ImportanceMapDistillationLoss()(student, teacher, target, teacher_logits)
    assert value.item() == pytest.approx(0.0, abs=1e-6), case


def test_large_features_do_not_overflow_float32() -> None:
    # |F|^4 of 1e12 overflows float32; the per-sample rescaling keeps the map exact
    torch.manual_seed(2)
    student, teacher, target, teacher_logits = random_inputs()
    reference = ImportanceMapDistillationLoss()(student, teacher, target, teacher_logits)
    value = ImportanceMapDistillationLoss()(student * 1e12, teacher * 1e12, target, teacher_logits)
    torch.testing.assert_close(value, reference)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"power": 0.5}, ValueError, "power must be finite and >= 1.0, got 0.5"),
        ({"power": -2}, ValueError, "-2"),
        ({"power": "4"}, TypeError, "'4'"),
        ({"eps": 0.0}, ValueError, "0.0"),
        ({"reduction": "avg"}, ValueError, "avg"),
    ],
)
def test_argument_errors(kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        ImportanceMapDistillationLoss(**kwargs)


def test_input_errors_are_readable() -> None:
    student, teacher, target, teacher_logits = random_inputs()
    with pytest.raises(ValueError, match=r"student must be a 4-D tensor \(B, C, H, W\), got shape \(4, 4, 4\)"):
        ImportanceMapDistillationLoss()(student[0], teacher, target, teacher_logits)


@pytest.mark.parametrize(
    ("power", "expected"),
    [
        # golden values: computed once with this implementation (after the hand-computed tests passed)
        (4.0, 1.39021206),
        (2.0, 0.61818004),
    ],
)
def test_golden(power: float, expected: float) -> None:
    torch.manual_seed(0)
    args = random_inputs()
    value = ImportanceMapDistillationLoss(power=power)(*args)
    assert value.item() == pytest.approx(expected, abs=1e-5)
