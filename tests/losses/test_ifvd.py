"""Tests of ``IntraClassFeatureVariationLoss`` (IFVD)."""

from __future__ import annotations

import math

import pytest
import torch

from mskd.losses import IntraClassFeatureVariationLoss
from mskd.losses.ifvd import intra_class_variation_map
from mskd.losses.regions import label_regions, one_hot_labels
from tests.losses.inputs import random_inputs, zero_cases

R = 1 / math.sqrt(2)


def _pixels(*vectors: tuple[float, ...]) -> torch.Tensor:
    """A ``1, C, 2, 2`` feature map from four pixel vectors in row-major order."""
    return torch.tensor(vectors, dtype=torch.float32).T.reshape(1, -1, 2, 2)


# ground truth: background on the top row, class 1 on the bottom row
TARGET = torch.tensor([[0, 0], [1, 1]]).view(1, 1, 2, 2)
# teacher: each class region holds one vector -> every pixel equals its centroid, m^T = 1 everywhere
TEACHER = _pixels((1, 0), (1, 0), (0, 1), (0, 1))
# student: background (1, 0), (0, 1) -> centroid (1/2, 1/2), cosine 1/sqrt(2) at both; class 1 uniform -> 1
STUDENT = _pixels((1, 0), (0, 1), (1, 0), (1, 0))


@pytest.mark.parametrize(
    ("teacher", "classes", "expected"),
    [
        # mean over 4 pixels of (m^S - m^T)^2 = 2 (1/sqrt(2) - 1)^2 / 4
        (TEACHER, 2, (R - 1) ** 2 / 2),
        # K = 6: four absent classes, same value
        (TEACHER, 6, (R - 1) ** 2 / 2),
        # a 3-channel teacher with the same structure: same value
        (_pixels((1, 0, 0), (1, 0, 0), (0, 0, 2), (0, 0, 2)), 2, (R - 1) ** 2 / 2),
    ],
)
def test_hand_computed(teacher: torch.Tensor, classes: int, expected: float) -> None:
    value = IntraClassFeatureVariationLoss()(STUDENT, teacher, TARGET, torch.zeros(1, classes, 2, 2))
    torch.testing.assert_close(value, torch.tensor(expected))


def test_variation_map_hand() -> None:
    ifv = intra_class_variation_map(STUDENT, one_hot_labels(TARGET, 3))
    torch.testing.assert_close(ifv, torch.tensor([[[R, R], [1.0, 1.0]]]))


def test_variation_map_with_area_fractions_hand() -> None:
    # labels [0, 0, 0, 1] at 1x4 on a 1x2 feature map: cell 0 all background, cell 1 half background, half class 1.
    # Features (1, 0), (0, 1): v0 = ((1, 0) + 1/2 (0, 1)) / 1.5 = (2/3, 1/3), v1 = (0, 1); each cell is compared with
    # the area-weighted centroid sum_k Y_kp v_k: cell 0 with v0, cell 1 with (v0 + v1)/2 = (1/3, 2/3);
    # both cosines are (2/3) / sqrt(5/9) = 2/sqrt(5)
    features = _pixels((1, 0), (0, 1), (0, 0), (0, 0))[..., :1, :]  # 1, 2, 1, 2
    regions = label_regions(torch.tensor([0, 0, 0, 1]).view(1, 1, 1, 4), (1, 2), 2, torch.float32)
    torch.testing.assert_close(regions[0, :, 0], torch.tensor([[1.0, 0.5], [0.0, 0.5]]))
    ifv = intra_class_variation_map(features, regions)
    torch.testing.assert_close(ifv, torch.full((1, 1, 2), 2 / math.sqrt(5)))


@pytest.mark.parametrize(("case", "student", "teacher"), zero_cases())
def test_zero_when_maps_identical(case: str, student: torch.Tensor, teacher: torch.Tensor) -> None:
    _, _, target, teacher_logits = random_inputs()
    value = IntraClassFeatureVariationLoss()(student, teacher, target, teacher_logits)
    assert value.item() == pytest.approx(0.0, abs=1e-10), case


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"eps": -1.0}, ValueError, "eps must be finite and > 0.0, got -1.0"),
        ({"eps": None}, TypeError, "None"),
        ({"reduction": "max"}, ValueError, "max"),
    ],
)
def test_argument_errors(kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        IntraClassFeatureVariationLoss(**kwargs)


def test_batch_mismatch_is_rejected() -> None:
    student, teacher, target, teacher_logits = random_inputs()
    with pytest.raises(ValueError, match=r"student batch size 1 \(shape \(1, 4, 4, 4\)\)"):
        IntraClassFeatureVariationLoss()(student[:1], teacher, target, teacher_logits)


def test_golden() -> None:
    # golden value: computed once with this implementation (after the hand-computed tests passed)
    torch.manual_seed(0)
    value = IntraClassFeatureVariationLoss()(*random_inputs())
    assert value.item() == pytest.approx(0.40271306, abs=1e-5)
