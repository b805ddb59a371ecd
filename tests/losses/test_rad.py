"""Tests of ``RegionAffinityDistillationLoss`` (EMKD's RAD)."""

from __future__ import annotations

import math

import pytest
import torch

from mskd.losses import RegionAffinityDistillationLoss
from mskd.losses.rad import background_affinity
from mskd.losses.regions import label_regions, one_hot_labels
from tests.losses.inputs import random_inputs, zero_cases


def _pixels(*vectors: tuple[float, float]) -> torch.Tensor:
    """A ``1, 2, 2, 2`` feature map from four pixel vectors in row-major order."""
    return torch.tensor(vectors, dtype=torch.float32).T.reshape(1, 2, 2, 2)


# ground truth [[0, 0], [1, 2]]: background on the top row, class 1 at (1, 0), class 2 at (1, 1)
TARGET = torch.tensor([[0, 0], [1, 2]]).view(1, 1, 2, 2)
# teacher: v0 = (1, 0), v1 = (0, 1), v2 = (1, 1) -> a^T = (cos(v0, v1), cos(v0, v2)) = (0, 1/sqrt(2))
TEACHER = _pixels((1, 0), (1, 0), (0, 1), (1, 1))
# student: v0 = (1, 0), v1 = (1, 0), v2 = (0, 1) -> a^S = (1, 0)
STUDENT = _pixels((1, 0), (1, 0), (1, 0), (0, 1))


@pytest.mark.parametrize(
    ("target", "classes", "expected"),
    [
        # both foreground classes present: ((1 - 0)^2 + (0 - 1/sqrt(2))^2) / 2 = (1 + 1/2) / 2
        (TARGET, 3, 0.75),
        # K = 5, classes 3 and 4 absent: masked out, same value
        (TARGET, 5, 0.75),
        # class 2 relabelled background: v0 = mean of 3 pixels; teacher (3, 1)/3 vs v1 (0, 1): cos 1/sqrt(10);
        # student (2, 1)/3 vs v1 (1, 0): cos 2/sqrt(5) -> (2/sqrt(5) - 1/sqrt(10))^2
        (torch.tensor([[0, 0], [1, 0]]).view(1, 1, 2, 2), 3, (2 / math.sqrt(5) - 1 / math.sqrt(10)) ** 2),
        # no background: no pair, 0
        (torch.tensor([[1, 1], [1, 2]]).view(1, 1, 2, 2), 3, 0.0),
        # no foreground: no pair, 0
        (torch.zeros(1, 1, 2, 2, dtype=torch.long), 3, 0.0),
    ],
)
def test_hand_computed(target: torch.Tensor, classes: int, expected: float) -> None:
    value = RegionAffinityDistillationLoss()(STUDENT, TEACHER, target, torch.zeros(1, classes, 2, 2))
    torch.testing.assert_close(value, torch.tensor(expected))


def test_background_affinity_hand() -> None:
    affinity = background_affinity(TEACHER, one_hot_labels(TARGET, 4))
    # class 3 absent: zero prototype, affinity 0
    torch.testing.assert_close(affinity, torch.tensor([[0.0, 1 / math.sqrt(2), 0.0]]))


@pytest.mark.parametrize(("case", "student", "teacher"), zero_cases())
def test_zero_when_affinities_identical(case: str, student: torch.Tensor, teacher: torch.Tensor) -> None:
    _, _, target, teacher_logits = random_inputs()
    value = RegionAffinityDistillationLoss()(student, teacher, target, teacher_logits)
    assert value.item() == pytest.approx(0.0, abs=1e-10), case


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"eps": 0.0}, ValueError, "eps must be finite and > 0.0, got 0.0"),
        ({"eps": "1e-8"}, TypeError, "'1e-8'"),
        ({"reduction": "avg"}, ValueError, "avg"),
    ],
)
def test_argument_errors(kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        RegionAffinityDistillationLoss(**kwargs)


def test_labels_outside_the_classes_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"target values must lie in 0..1 \(K=2\), got range 0..2"):
        RegionAffinityDistillationLoss()(STUDENT, TEACHER, TARGET, torch.zeros(1, 2, 2, 2))


def test_background_only_sample_does_not_dilute_the_mean() -> None:
    # sample 1 has no foreground: no background/organ pair, nothing to distil
    torch.manual_seed(13)
    student, teacher, target, teacher_logits = random_inputs()
    target[1] = 0
    student.requires_grad_(True)
    alone = RegionAffinityDistillationLoss()(student[:1], teacher[:1], target[:1], teacher_logits[:1])
    mean = RegionAffinityDistillationLoss()(student, teacher, target, teacher_logits)
    assert alone.item() > 0
    torch.testing.assert_close(mean, alone)  # not alone / 2
    none = RegionAffinityDistillationLoss(reduction="none")(student, teacher, target, teacher_logits)
    torch.testing.assert_close(none, torch.stack([alone, torch.tensor(0.0)]))
    total = RegionAffinityDistillationLoss(reduction="sum")(student, teacher, target, teacher_logits)
    torch.testing.assert_close(total, alone)
    mean.backward()
    assert torch.isfinite(student.grad).all() and torch.equal(student.grad[1], torch.zeros_like(student.grad[1]))


@pytest.mark.parametrize(
    "target", [torch.zeros(2, 1, 8, 8, dtype=torch.long), torch.ones(2, 1, 8, 8, dtype=torch.long)]
)
def test_no_sample_to_distil_gives_zero_and_finite_gradients(target: torch.Tensor) -> None:
    # background only, or foreground only: no pair in any sample
    torch.manual_seed(14)
    student, teacher, _, teacher_logits = random_inputs()
    student.requires_grad_(True)
    value = RegionAffinityDistillationLoss()(student, teacher, target, teacher_logits)
    value.backward()
    assert value.item() == 0.0 and torch.isfinite(student.grad).all()


def test_small_organ_kept_at_deep_stride() -> None:
    # 64x64 labels, a 2x2 organ at rows/cols 37..38 (inside cell (2, 1) of a 4x4 map, missed by nearest resizing):
    # its prototype is the cell's feature, so the pair counts. Student = teacher except at that cell.
    torch.manual_seed(15)
    teacher = torch.randn(1, 3, 4, 4)
    student = teacher.clone()
    student[0, :, 2, 1] = torch.randn(3)
    target = torch.zeros(1, 1, 64, 64, dtype=torch.long)
    target[..., 37:39, 21:23] = 1
    value = RegionAffinityDistillationLoss(reduction="none")(student, teacher, target, torch.zeros(1, 2, 64, 64))
    regions = label_regions(target, (4, 4), 2, torch.float32)
    expected = (background_affinity(student, regions) - background_affinity(teacher, regions)).pow(2)[:, 0]
    assert expected.item() > 0
    torch.testing.assert_close(value, expected)


def test_golden() -> None:
    # golden value: computed once with this implementation (after the hand-computed tests passed)
    torch.manual_seed(0)
    value = RegionAffinityDistillationLoss()(*random_inputs())
    assert value.item() == pytest.approx(0.49991590, abs=1e-5)
