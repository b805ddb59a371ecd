"""Tests of ``ChannelWiseDistillationLoss`` (CWD)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mskd.losses import ChannelWiseDistillationLoss
from tests.losses.inputs import random_inputs

LN_4_3 = math.log(4.0 / 3.0)


def _hand_inputs(temperature: float) -> tuple[torch.Tensor, ...]:
    """B=1, K=2 logit channels over 1x2 positions. Teacher 0 everywhere; student channel 0 = (0, τ ln 3).

    Channel 0: φ^T = (1/2, 1/2), φ^S = softmax(0, ln 3) = (1/4, 3/4):
        KL = 1/2 ln(1/2 / 1/4) + 1/2 ln(1/2 / 3/4) = 1/2 ln(4/3).
    Channel 1: equal, KL = 0. Mean over the 2 channels, times τ^2: τ^2 / 4 * ln(4/3).
    """
    teacher = torch.zeros(1, 2, 1, 2)
    student = torch.zeros(1, 2, 1, 2)
    student[0, 0, 0, 1] = temperature * math.log(3.0)
    return student, teacher, torch.zeros(1, 1, 1, 2), teacher


@pytest.mark.parametrize(("temperature", "expected"), [(1.0, LN_4_3 / 4), (4.0, 16 * LN_4_3 / 4)])
def test_hand_computed(temperature: float, expected: float) -> None:
    value = ChannelWiseDistillationLoss(temperature=temperature)(*_hand_inputs(temperature))
    torch.testing.assert_close(value, torch.tensor(expected))


def test_zero_when_equal_up_to_a_constant_per_channel() -> None:
    # the spatial softmax ignores a per-channel offset
    torch.manual_seed(1)
    _, teacher, target, teacher_logits = random_inputs()
    student = teacher + torch.randn(2, 6, 1, 1)
    value = ChannelWiseDistillationLoss()(student, teacher, target, teacher_logits)
    assert value.item() == pytest.approx(0.0, abs=1e-6)


def test_spatial_sizes_may_differ() -> None:
    torch.manual_seed(2)
    small = torch.randn(2, 3, 4, 4)
    _, _, target, teacher_logits = random_inputs()
    loss = ChannelWiseDistillationLoss()
    upsampled = F.interpolate(small, size=(8, 8), mode="bilinear")
    assert loss(small, upsampled, target, teacher_logits).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(("c_s", "c_t"), [(4, 6), (3, 2)])
def test_different_channel_counts_are_rejected(c_s: int, c_t: int) -> None:
    student, teacher, target, teacher_logits = random_inputs(c_s=c_s, c_t=c_t)
    with pytest.raises(ValueError, match="needs equal channel counts") as info:
        ChannelWiseDistillationLoss()(student, teacher, target, teacher_logits)
    assert str(tuple(student.shape)) in str(info.value) and str(tuple(teacher.shape)) in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"temperature": 0.0}, ValueError, "temperature must be finite and > 0.0, got 0.0"),
        ({"temperature": float("inf")}, ValueError, "inf"),
        ({"temperature": True}, TypeError, "True"),
        ({"reduction": "avg"}, ValueError, "avg"),
    ],
)
def test_argument_errors(kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        ChannelWiseDistillationLoss(**kwargs)


@pytest.mark.parametrize(
    ("temperature", "expected"),
    [
        # golden values: computed once with this implementation (after the hand-computed tests passed)
        (4.0, 1.06719995),
        (1.0, 0.99960172),
    ],
)
def test_golden(temperature: float, expected: float) -> None:
    torch.manual_seed(0)
    _, _, target, teacher_logits = random_inputs()
    value = ChannelWiseDistillationLoss(temperature=temperature)(
        torch.randn_like(teacher_logits), teacher_logits, target, teacher_logits
    )
    assert value.item() == pytest.approx(expected, abs=1e-5)
