"""Tests of ``RegionGraphDistillationLoss`` (RGD)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mskd.losses import RegionGraphDistillationLoss
from mskd.losses.regions import class_prototypes
from mskd.losses.rgd import grid_subregions, normalized_region_graph
from tests.losses.inputs import random_inputs, zero_cases

C = 1 / math.sqrt(2)  # cosine between (1, 0) and (1, 1)


def _hand_inputs(classes: int) -> tuple[torch.Tensor, ...]:
    """B=1, 2 channels, 2x2; ground truth: top row background, bottom row class 1 (other classes absent).

    Teacher: background pixels (1, 0), class-1 pixels (0, 1) -> v0 = (1, 0), v1 = (0, 1), cosine 0:
        E+ + I = 2 I, D = 2 I, Â^T = I, and every power of it is I.
    Student: background (1, 0), class 1 (1, 1) -> v1 = (1, 1), cosine c = 1/sqrt(2):
        E+ + I = [[2, c], [c, 2]], D = (2 + c) I, Â^S = [[2, c], [c, 2]] / (2 + c).
    Order 1: diffs -c/(2+c) (diagonal), c/(2+c) (off-diagonal): sum 4 c^2/(2+c)^2, / K_present^2 = 4.
    Order 2: (Â^S)^2 = [[4 + c^2, 4c], [4c, 4 + c^2]] / (2+c)^2; minus I: diagonal -4c/(2+c)^2,
        off-diagonal 4c/(2+c)^2: sum 4 * 16 c^2/(2+c)^4, / 4.
    """
    teacher = torch.tensor([[[1.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [1.0, 1.0]]]).unsqueeze(0)
    student = torch.tensor([[[1.0, 1.0], [1.0, 1.0]], [[0.0, 0.0], [1.0, 1.0]]]).unsqueeze(0)
    target = torch.tensor([[0, 0], [1, 1]]).view(1, 1, 2, 2)
    teacher_logits = torch.zeros(1, classes, 2, 2)
    return student, teacher, target, teacher_logits


ORDER_1 = C**2 / (2 + C) ** 2
ORDER_2 = ORDER_1 + 16 * C**2 / (2 + C) ** 4


@pytest.mark.parametrize(
    ("order", "classes", "expected"),
    [
        (1, 2, ORDER_1),
        (2, 2, ORDER_2),
        # K=3 with class 2 absent: only present pairs count, K_present = 2 -> same values
        (1, 3, ORDER_1),
        (2, 3, ORDER_2),
    ],
)
def test_hand_computed(order: int, classes: int, expected: float) -> None:
    value = RegionGraphDistillationLoss(order=order)(*_hand_inputs(classes))
    torch.testing.assert_close(value, torch.tensor(expected))


def test_subregions_hand_computed() -> None:
    """``subregions=2`` on the 2x2 hand case: every pixel is its own node, 4 present nodes (order 1).

    Teacher nodes (1,0), (1,0) | (0,1), (0,1): E+ + I = [[2,1,0,0],[1,2,0,0],[0,0,2,1],[0,0,1,2]], D = 3 I.
    Student nodes (1,0), (1,0) | (1,1), (1,1): E+ + I = [[2,1,c,c],[1,2,c,c],[c,c,2,1],[c,c,1,2]], D = d I, d = 3 + 2c.
    Differences: diagonal 2/d - 2/3 (4 entries), same-class 1/d - 1/3 (4), cross-class c/d (8); / N_present^2 = 16.
    """
    d = 3 + 2 * C
    expected = (4 * (2 / d - 2 / 3) ** 2 + 4 * (1 / d - 1 / 3) ** 2 + 8 * (C / d) ** 2) / 16
    value = RegionGraphDistillationLoss(order=1, subregions=2)(*_hand_inputs(2))
    torch.testing.assert_close(value, torch.tensor(expected))
    # a grid finer than the map only adds empty (absent) cells
    torch.testing.assert_close(RegionGraphDistillationLoss(order=1, subregions=3)(*_hand_inputs(2)), value)


def test_grid_subregions_hand() -> None:
    # 3x3 map, 2x2 grid: row/column cell floor(i * 2 / 3) = 0, 0, 1 -> cells [[0, 0, 1], [0, 0, 1], [2, 2, 3]]
    labels = torch.tensor([[0, 0, 1], [0, 1, 1], [1, 1, 1]]).view(1, 1, 3, 3)
    nodes = grid_subregions(F.one_hot(labels[:, 0], 2).permute(0, 3, 1, 2).float(), 2)
    assert nodes.shape == (1, 8, 3, 3)
    cells = torch.tensor([[0, 0, 1], [0, 0, 1], [2, 2, 3]])
    for k in range(2):
        for g in range(4):
            assert torch.equal(nodes[0, 4 * k + g], ((labels[0, 0] == k) & (cells == g)).float()), (k, g)
    regions = torch.rand(2, 3, 4, 4)
    assert grid_subregions(regions, 1) is regions


def test_graph_helpers_hand() -> None:
    student, _, target, _ = _hand_inputs(3)
    regions = F.one_hot(target[:, 0], 3).permute(0, 3, 1, 2).float()
    protos = class_prototypes(student, regions)
    torch.testing.assert_close(protos[0], torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]))
    graph = normalized_region_graph(protos, torch.tensor([[True, True, False]]))
    expected = torch.tensor([[2.0, C, 0.0], [C, 2.0, 0.0], [0.0, 0.0, 2.0 + C]]) / (2 + C)  # absent node isolated
    torch.testing.assert_close(graph[0], expected)


@pytest.mark.parametrize("subregions", [1, 3])
@pytest.mark.parametrize(("case", "student", "teacher"), zero_cases())
def test_zero_when_structure_identical(
    case: str, student: torch.Tensor, teacher: torch.Tensor, subregions: int
) -> None:
    _, _, target, teacher_logits = random_inputs()
    value = RegionGraphDistillationLoss(order=3, subregions=subregions)(student, teacher, target, teacher_logits)
    assert value.item() == pytest.approx(0.0, abs=1e-10), case


@pytest.mark.parametrize(
    ("c_s", "size_s", "c_t", "size_t"),
    [(4, 4, 6, 8), (6, 8, 4, 4), (3, 8, 3, 8), (2, 2, 7, 4)],
)
def test_different_channels_and_sizes(c_s: int, size_s: int, c_t: int, size_t: int) -> None:
    torch.manual_seed(4)
    student, teacher, target, teacher_logits = random_inputs(c_s=c_s, c_t=c_t, size_s=size_s, size_t=size_t)
    value = RegionGraphDistillationLoss(reduction="none")(student, teacher, target, teacher_logits)
    assert value.shape == (2,)
    assert torch.isfinite(value).all() and (value >= 0).all()


def test_finite_with_absent_class_no_foreground_and_zero_features() -> None:
    torch.manual_seed(5)
    student, teacher, target, teacher_logits = random_inputs(classes=4)
    target = target.clamp(max=1)  # classes 2 and 3 absent
    target[1] = 0  # second sample: background only -> a single node, identical graphs
    student[0, :, :, :] = 0.0  # first sample: all-zero student prototypes
    student.requires_grad_(True)
    value = RegionGraphDistillationLoss(reduction="none")(student, teacher, target, teacher_logits)
    assert torch.isfinite(value).all()
    assert value[1].item() == pytest.approx(0.0, abs=1e-12)
    value.sum().backward()
    assert torch.isfinite(student.grad).all()


def test_gradients_reach_student_only() -> None:
    torch.manual_seed(6)
    student, teacher, target, teacher_logits = random_inputs()
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    teacher_logits.requires_grad_(True)
    RegionGraphDistillationLoss()(student, teacher, target, teacher_logits).backward()
    assert student.grad is not None and torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    assert teacher.grad is None and teacher_logits.grad is None


def test_reductions() -> None:
    torch.manual_seed(7)
    args = random_inputs(batch=3)
    none = RegionGraphDistillationLoss(reduction="none")(*args)
    assert none.shape == (3,)
    torch.testing.assert_close(RegionGraphDistillationLoss(reduction="sum")(*args), none.sum())
    torch.testing.assert_close(RegionGraphDistillationLoss(reduction="mean")(*args), none.mean())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"order": 0}, ValueError, "order must be >= 1, got 0"),
        ({"order": -2}, ValueError, "-2"),
        ({"order": 1.5}, TypeError, "1.5"),
        ({"subregions": 0}, ValueError, "subregions must be >= 1, got 0"),
        ({"subregions": "2"}, TypeError, "'2'"),
        ({"eps": 0.0}, ValueError, "0.0"),
        ({"reduction": "avg"}, ValueError, "avg"),
    ],
)
def test_argument_errors(kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        RegionGraphDistillationLoss(**kwargs)


@pytest.mark.parametrize(
    ("order", "subregions", "expected"),
    [
        # golden values: computed once with this implementation (after the hand-computed tests passed)
        (1, 1, 0.02324867),
        (2, 1, 0.05912093),
        (2, 2, 0.02461141),
    ],
)
def test_golden(order: int, subregions: int, expected: float) -> None:
    torch.manual_seed(0)
    value = RegionGraphDistillationLoss(order=order, subregions=subregions)(*random_inputs())
    assert value.item() == pytest.approx(expected, abs=1e-5)
