"""Tests of ``PairwiseSimilarityDistillationLoss`` (SKD's pair-wise term)."""

from __future__ import annotations

import math

import pytest
import torch

from mskd.losses import PairwiseSimilarityDistillationLoss
from mskd.losses.skd import node_similarity
from tests.losses.inputs import random_inputs, zero_cases


def _pixels(height: int, width: int, *vectors: tuple[float, float]) -> torch.Tensor:
    """A ``1, 2, height, width`` feature map from its pixel vectors in row-major order."""
    return torch.tensor(vectors, dtype=torch.float32).T.reshape(1, 2, height, width)


def _call(loss: PairwiseSimilarityDistillationLoss, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    size = student.shape[-2:]
    return loss(student, teacher, torch.zeros(1, 1, *size), torch.zeros(1, 2, *size))


def test_hand_computed_pixels_as_nodes() -> None:
    # pool_size 2 on a 2x2 map: every pixel is a node.
    # teacher nodes (1,0), (1,0), (0,1), (0,1): a^T = [[1,1,0,0],[1,1,0,0],[0,0,1,1],[0,0,1,1]]
    # student nodes (1,0), (1,0), (1,0), (0,1): a^S = [[1,1,1,0],[1,1,1,0],[1,1,1,0],[0,0,0,1]]
    # they differ by 1 at (0,2), (1,2), (2,0), (2,1), (2,3), (3,2): 6 / N^2 = 6 / 16
    teacher = _pixels(2, 2, (1, 0), (1, 0), (0, 1), (0, 1))
    student = _pixels(2, 2, (1, 0), (1, 0), (1, 0), (0, 1))
    torch.testing.assert_close(
        _call(PairwiseSimilarityDistillationLoss(pool_size=2), student, teacher), torch.tensor(0.375)
    )
    # pool_size 8 is capped at the 2x2 map: the same nodes
    torch.testing.assert_close(
        _call(PairwiseSimilarityDistillationLoss(pool_size=8), student, teacher), torch.tensor(0.375)
    )
    # one node: a = [[1]] in both networks
    assert _call(PairwiseSimilarityDistillationLoss(pool_size=1), student, teacher).item() == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("pooling", "expected"),
    [
        # 1x4 map, pool_size 2 -> a 1x2 grid, each node pools a 1x2 patch.
        # student node 0 pools pixels (2, 1), (0, 1): avg (1, 1), max (2, 1); node 1 pools (1, 0), (1, 0): (1, 0).
        # teacher: every pixel (1, 0), a^T all ones. Off-diagonal pairs (2 of 4 entries) differ by 1 - cos.
        ("avg", 2 * (1 - 1 / math.sqrt(2)) ** 2 / 4),
        ("max", 2 * (1 - 2 / math.sqrt(5)) ** 2 / 4),
    ],
)
def test_hand_computed_pooling(pooling: str, expected: float) -> None:
    student = _pixels(1, 4, (2, 1), (0, 1), (1, 0), (1, 0))
    teacher = _pixels(1, 4, (1, 0), (1, 0), (1, 0), (1, 0))
    value = _call(PairwiseSimilarityDistillationLoss(pool_size=2, pooling=pooling), student, teacher)
    torch.testing.assert_close(value, torch.tensor(expected))


def test_node_similarity_hand() -> None:
    sim = node_similarity(_pixels(2, 2, (1, 0), (1, 1), (0, 0), (0, 1)), (2, 2))
    r = 1 / math.sqrt(2)
    expected = torch.tensor([[1.0, r, 0.0, 0.0], [r, 1.0, 0.0, r], [0.0, 0.0, 0.0, 0.0], [0.0, r, 0.0, 1.0]])
    torch.testing.assert_close(sim[0], expected)  # a zero node has similarity 0, no NaN


@pytest.mark.parametrize(("case", "student", "teacher"), zero_cases())
def test_zero_when_similarities_identical(case: str, student: torch.Tensor, teacher: torch.Tensor) -> None:
    _, _, target, teacher_logits = random_inputs()
    value = PairwiseSimilarityDistillationLoss(pool_size=4)(student, teacher, target, teacher_logits)
    assert value.item() == pytest.approx(0.0, abs=1e-10), case


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"pool_size": 0}, ValueError, "pool_size must be >= 1, got 0"),
        ({"pool_size": 2.0}, TypeError, "2.0"),
        ({"pooling": "mean"}, ValueError, "mean"),
        ({"eps": 0.0}, ValueError, "0.0"),
        ({"reduction": "avg"}, ValueError, "avg"),
    ],
)
def test_argument_errors(kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        PairwiseSimilarityDistillationLoss(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        # golden values: computed once with this implementation (after the hand-computed tests passed)
        ({}, 0.44295681),
        ({"pool_size": 2, "pooling": "max"}, 0.02757832),
    ],
)
def test_golden(kwargs: dict, expected: float) -> None:
    torch.manual_seed(0)
    value = PairwiseSimilarityDistillationLoss(**kwargs)(*random_inputs())
    assert value.item() == pytest.approx(expected, abs=1e-5)
