"""Tests of ``LogitDistillationLoss`` and of the shared checks of ``DistillationTermLoss``."""

from __future__ import annotations

import math

import pytest
import torch

from mskd.losses import DistillationTermLoss, LogitDistillationLoss

LN_4_3 = math.log(4.0 / 3.0)


def _hand_inputs(temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """B=1, K=2, 2x2. Teacher logits 0 everywhere; student logits 0 except class 1 at (0, 0) = T ln 3.

    At (0, 0): p_T = (1/2, 1/2), p_S = softmax(0, ln 3) = (1/4, 3/4), so
    KL(p_T || p_S) = 1/2 ln(1/2 / 1/4) + 1/2 ln(1/2 / 3/4) = 1/2 ln(4/3); times T^2. Other pixels: KL = 0.
    Ground truth: class 1 at (0, 0) only.
    """
    teacher = torch.zeros(1, 2, 2, 2)
    student = torch.zeros(1, 2, 2, 2)
    student[0, 1, 0, 0] = temperature * math.log(3.0)
    target = torch.zeros(1, 1, 2, 2)
    target[0, 0, 0, 0] = 1
    return student, teacher, target


@pytest.mark.parametrize(
    ("temperature", "class_balanced", "expected"),
    [
        # plain: mean over 4 pixels of T^2 * 1/2 ln(4/3) at one pixel
        (1.0, False, 0.5 * LN_4_3 / 4),
        (2.0, False, 4 * 0.5 * LN_4_3 / 4),
        # balanced: class 1 region (1 pixel) has weight 1/2, background pixels 1/6 each but KL 0 there
        (1.0, True, 0.5 * 0.5 * LN_4_3),
        (2.0, True, 0.5 * 4 * 0.5 * LN_4_3),
    ],
)
def test_hand_computed(temperature: float, class_balanced: bool, expected: float) -> None:
    student, teacher, target = _hand_inputs(temperature)
    loss = LogitDistillationLoss(temperature=temperature, class_balanced=class_balanced)
    torch.testing.assert_close(loss(student, teacher, target, teacher), torch.tensor(expected))


def _filter_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """B=1, K=2, 2x2, T=1; ground truth class 1 at (0, 0), background elsewhere; student logits 0 everywhere.

    Teacher logits (0, ln 3) at (0, 0) (right: predicts class 1) and at (1, 1) (wrong: the label is background),
    (0, 0) elsewhere (right: ties go to class 0). At the two pixels p_T = (1/4, 3/4), p_S = (1/2, 1/2):
    KL = 1/4 ln(1/2) + 3/4 ln(3/2) = κ; 0 elsewhere.
    """
    teacher = torch.zeros(1, 2, 2, 2)
    teacher[0, 1, 0, 0] = teacher[0, 1, 1, 1] = math.log(3.0)
    target = torch.zeros(1, 1, 2, 2)
    target[0, 0, 0, 0] = 1
    return torch.zeros(1, 2, 2, 2), teacher, target


KAPPA = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)


@pytest.mark.parametrize(
    ("class_balanced", "band_radius", "filter_errors", "expected"),
    [
        # plain, no filter: 2 κ / 4 pixels; a band of 1 covers the whole 2x2 map: same
        (False, None, False, KAPPA / 2),
        (False, 1, False, KAPPA / 2),
        # teacher errors dropped: M = {(0,0), (0,1), (1,0)}, κ / 3
        (False, None, True, KAPPA / 3),
        # band 0: M = the organ {(0,0)}, κ / 1 (with or without the error filter: the teacher is right there)
        (False, 0, False, KAPPA),
        (False, 0, True, KAPPA),
        # balanced, no filter: class 1 weight 1/2 at (0,0), background 1/6 per pixel: κ/2 + κ/6
        (True, None, False, KAPPA / 2 + KAPPA / 6),
        # balanced, teacher errors dropped: (1,1) leaves the background region, κ at (0,0) weighted 1/2
        (True, None, True, KAPPA / 2),
        # balanced, band 0: only class 1 present, weight 1
        (True, 0, False, KAPPA),
    ],
)
def test_filter_hand_computed(
    class_balanced: bool, band_radius: int | None, filter_errors: bool, expected: float
) -> None:
    student, teacher, target = _filter_inputs()
    loss = LogitDistillationLoss(
        temperature=1.0,
        class_balanced=class_balanced,
        filter_band_radius=band_radius,
        filter_teacher_errors=filter_errors,
    )
    torch.testing.assert_close(loss(student, teacher, target, teacher), torch.tensor(expected))


@pytest.mark.parametrize(
    ("min_region_fraction", "band_radius", "expected"),
    [
        # floor 0.5 * 4 = 2 pixels: class 1 (1 pixel) gets 1/(2*2) at (0,0), the background (3 pixels) 1/6 per
        # pixel, κ at (0,0) and (1,1): κ/4 + κ/6
        (0.5, None, KAPPA / 4 + KAPPA / 6),
        # floor 0.25 * 4 = 1 pixel: nothing below it, as without a floor: κ/2 + κ/6
        (0.25, None, KAPPA / 2 + KAPPA / 6),
        # band 0: only class 1 present, below a floor of 2 pixels: weight 1/2 instead of 1
        (0.5, 0, KAPPA / 2),
        (0.0, 0, KAPPA),
    ],
)
def test_min_region_fraction_hand_computed(
    min_region_fraction: float, band_radius: int | None, expected: float
) -> None:
    student, teacher, target = _filter_inputs()
    loss = LogitDistillationLoss(
        temperature=1.0, class_balanced=True, filter_band_radius=band_radius, min_region_fraction=min_region_fraction
    )
    torch.testing.assert_close(loss(student, teacher, target, teacher), torch.tensor(expected))


def test_fragment_weight_is_floored() -> None:
    # 32x32 (1024 pixels), T=1: class 1 a 16x8 block (128 pixels), class 2 one pixel; the student differs from the
    # teacher (KL κ) at one pixel of class 1 and at the fragment. Floor 0.01 * 1024 = 10.24 pixels:
    # L = κ / (3 * 128) + κ / (3 * 10.24); the fragment's per-pixel weight is 128 / 10.24 = 12.5 times that of
    # class 1 (without the floor: 128 times)
    target = torch.zeros(1, 1, 32, 32)
    target[..., 4:20, 8:16] = 1
    target[..., 30, 2] = 2
    teacher = torch.zeros(1, 3, 32, 32)
    teacher[0, 1, 30, 2] = teacher[0, 1, 5, 9] = math.log(3.0)  # p_T = (1/5, 3/5, 1/5) there
    student = torch.zeros(1, 3, 32, 32)
    p_t = torch.tensor([1.0, 3.0, 1.0]) / 5
    kappa = (p_t * (p_t * 3).log()).sum().item()  # KL(p_T || uniform)
    for fraction, fragment_weight in ((0.0, 1 / 3), (0.01, 1 / (3 * 10.24))):
        loss = LogitDistillationLoss(temperature=1.0, class_balanced=True, min_region_fraction=fraction)
        value = loss(student, teacher, target, teacher)
        torch.testing.assert_close(value, torch.tensor(kappa / (3 * 128) + kappa * fragment_weight))


def test_min_region_fraction_without_class_balance_warns() -> None:
    with pytest.warns(UserWarning, match=r"min_region_fraction=0.01 .*class_balanced=False"):
        LogitDistillationLoss(min_region_fraction=0.01)


@pytest.mark.parametrize("class_balanced", [False, True])
def test_filter_empty_mask_gives_zero(class_balanced: bool) -> None:
    # no organ and a band of 0: nothing is kept
    student, teacher, _ = _filter_inputs()
    loss = LogitDistillationLoss(class_balanced=class_balanced, filter_band_radius=0, reduction="none")
    value = loss(student, teacher, torch.zeros(1, 1, 2, 2), teacher)
    assert torch.equal(value, torch.zeros(1))


def _random_inputs(batch: int = 2, classes: int = 3, size: int = 8) -> tuple[torch.Tensor, ...]:
    student = torch.randn(batch, classes, size, size)
    teacher = torch.randn(batch, classes, size, size)
    target = torch.randint(0, classes, (batch, 1, size, size))
    return student, teacher, target


@pytest.mark.parametrize("class_balanced", [False, True])
def test_zero_when_equal(class_balanced: bool) -> None:
    torch.manual_seed(1)
    _, teacher, target = _random_inputs()
    value = LogitDistillationLoss(class_balanced=class_balanced)(teacher.clone(), teacher, target, teacher)
    torch.testing.assert_close(value, torch.tensor(0.0), atol=1e-6, rtol=0)


@pytest.mark.parametrize("class_balanced", [False, True])
def test_finite_with_absent_class_and_no_foreground(class_balanced: bool) -> None:
    torch.manual_seed(2)
    student, teacher, target = _random_inputs(classes=4)
    target = target.clamp(max=1)  # classes 2 and 3 absent
    target[1] = 0  # second sample: background only
    value = LogitDistillationLoss(class_balanced=class_balanced, reduction="none")(student, teacher, target, teacher)
    assert value.shape == (2,)
    assert torch.isfinite(value).all()
    assert (value > 0).all()


def test_gradients_reach_student_only() -> None:
    torch.manual_seed(3)
    student, teacher, target = _random_inputs()
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    LogitDistillationLoss(class_balanced=True)(student, teacher, target, teacher).backward()
    assert student.grad is not None and torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_reductions() -> None:
    torch.manual_seed(4)
    student, teacher, target = _random_inputs(batch=3)
    none = LogitDistillationLoss(reduction="none")(student, teacher, target, teacher)
    assert none.shape == (3,)
    torch.testing.assert_close(LogitDistillationLoss(reduction="sum")(student, teacher, target, teacher), none.sum())
    torch.testing.assert_close(LogitDistillationLoss(reduction="mean")(student, teacher, target, teacher), none.mean())


@pytest.mark.parametrize(
    ("student_shape", "teacher_shape"),
    [
        ((2, 3, 8, 8), (2, 4, 8, 8)),  # class counts differ
        ((2, 3, 4, 4), (2, 3, 8, 8)),  # spatial sizes differ
    ],
)
def test_shape_mismatch_names_both_shapes(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> None:
    teacher_logits = torch.zeros(2, 3, 8, 8)
    target = torch.zeros(2, 1, 8, 8)
    with pytest.raises(ValueError) as info:
        LogitDistillationLoss()(torch.zeros(student_shape), torch.zeros(teacher_shape), target, teacher_logits)
    assert str(student_shape) in str(info.value) and str(teacher_shape) in str(info.value)


def test_logits_must_match_teacher_logits_classes() -> None:
    logits = torch.zeros(2, 4, 8, 8)
    with pytest.raises(ValueError, match=r"\(2, 3, 8, 8\)"):
        LogitDistillationLoss()(logits, logits, torch.zeros(2, 1, 8, 8), torch.zeros(2, 3, 8, 8))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"temperature": 0.0}, ValueError, "0.0"),
        ({"temperature": -1.0}, ValueError, "-1.0"),
        ({"temperature": float("nan")}, ValueError, "nan"),
        ({"temperature": "4"}, TypeError, "'4'"),
        ({"class_balanced": 2}, ValueError, "class_balanced must be true or false, got 2"),
        ({"filter_teacher_errors": "nope"}, ValueError, "filter_teacher_errors must be true or false, got 'nope'"),
        ({"filter_band_radius": -1}, ValueError, "filter_band_radius must be >= 0, got -1"),
        ({"filter_band_radius": 1.0}, TypeError, "1.0"),
        (
            {"min_region_fraction": -0.5},
            ValueError,
            r"min_region_fraction must be finite and >= 0.0 and <= 1.0, got -0.5",
        ),
        ({"min_region_fraction": 1.5}, ValueError, r"<= 1.0, got 1.5"),
        ({"min_region_fraction": "0.01"}, TypeError, "'0.01'"),
        ({"reduction": "avg"}, ValueError, "avg"),
    ],
)
def test_argument_errors(kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        LogitDistillationLoss(**kwargs)


# Shared input checks of DistillationTermLoss, exercised through LogitDistillationLoss.
_GOOD = {
    "student": torch.zeros(2, 3, 4, 4),
    "teacher": torch.zeros(2, 3, 4, 4),
    "target": torch.zeros(2, 1, 4, 4),
    "teacher_logits": torch.zeros(2, 3, 4, 4),
}


@pytest.mark.parametrize(
    ("name", "value", "error", "match"),
    [
        ("student", [[0.0]], TypeError, "student must be a torch.Tensor"),
        ("teacher", torch.zeros(2, 3, 4), ValueError, r"teacher must be a 4-D.*\(2, 3, 4\)"),
        ("target", torch.zeros(2, 2, 4, 4), ValueError, r"one channel.*\(2, 2, 4, 4\)"),
        ("target", torch.zeros(2, 1, 5, 4), ValueError, r"\(2, 1, 5, 4\).*\(2, 3, 4, 4\)"),
        ("target", torch.full((2, 1, 4, 4), 3.0), ValueError, "0..2"),
        ("student", torch.zeros(1, 3, 4, 4), ValueError, r"student batch size 1"),
        ("teacher", torch.zeros(3, 3, 4, 4), ValueError, r"teacher batch size 3"),
    ],
)
def test_shared_input_checks(name: str, value: object, error: type[Exception], match: str) -> None:
    args = dict(_GOOD, **{name: value})
    with pytest.raises(error, match=match):
        LogitDistillationLoss()(**args)


def test_base_class_is_abstract() -> None:
    with pytest.raises(NotImplementedError):
        DistillationTermLoss()(**_GOOD)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        # golden values: computed once with this implementation (after the hand-computed tests passed)
        ({"class_balanced": False}, 0.71321970),
        ({"class_balanced": True}, 0.72243506),
        ({"filter_band_radius": 1, "filter_teacher_errors": True}, 0.61523330),
        ({"class_balanced": True, "filter_band_radius": 1, "filter_teacher_errors": True}, 0.59077233),
    ],
)
def test_golden(kwargs: dict, expected: float) -> None:
    torch.manual_seed(0)
    student = torch.randn(2, 3, 8, 8)
    teacher = torch.randn(2, 3, 8, 8)
    target = torch.randint(0, 3, (2, 1, 8, 8))
    value = LogitDistillationLoss(temperature=4.0, **kwargs)(student, teacher, target, teacher)
    assert value.item() == pytest.approx(expected, abs=1e-5)
