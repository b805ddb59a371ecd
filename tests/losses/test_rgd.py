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
G = (1 + C) / 2  # that cosine mapped to [0, 1]: E+ = (1 + cos) / 2


def _hand_inputs(classes: int) -> tuple[torch.Tensor, ...]:
    """B=1, 2 channels, 2x2; ground truth: top row background, bottom row class 1 (other classes absent).

    Edges E+ = (1 + cos) / 2, so every present node has E+_ii = 1. A two-node graph with off-diagonal e has
    E+ + I = [[2, e], [e, 2]], D = (2 + e) I, Â = [[a, b], [b, a]] with a = 2/(2+e), b = e/(2+e) (a + b = 1), and
    Â^2 = [[a^2 + b^2, 2ab], [2ab, a^2 + b^2]] (rows also sum to 1).
    Teacher: background pixels (1, 0), class-1 pixels (0, 1) -> v0 = (1, 0), v1 = (0, 1), cosine 0: e = 1/2,
        Â^T = [[4/5, 1/5], [1/5, 4/5]].
    Student: background (1, 0), class 1 (1, 1) -> v1 = (1, 1), cosine c = 1/sqrt(2): e = (1 + c)/2 = g.
    Rows sum to 1 in both, so diagonal and off-diagonal differences are ±δ: order 1 gives 4 δ^2 / K_present^2
    = δ^2 with δ = b_S - b_T; order 2 adds δ2^2 with δ2 = 2 a_S b_S - 2 a_T b_T.
    """
    teacher = torch.tensor([[[1.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [1.0, 1.0]]]).unsqueeze(0)
    student = torch.tensor([[[1.0, 1.0], [1.0, 1.0]], [[0.0, 0.0], [1.0, 1.0]]]).unsqueeze(0)
    target = torch.tensor([[0, 0], [1, 1]]).view(1, 1, 2, 2)
    teacher_logits = torch.zeros(1, classes, 2, 2)
    return student, teacher, target, teacher_logits


def _two_node(e: float) -> tuple[float, float]:
    """``(a, b)``: diagonal and off-diagonal of Â for a two-node graph with edge ``e``."""
    return 2 / (2 + e), e / (2 + e)


A_S, B_S = _two_node(G)
A_T, B_T = _two_node(0.5)
ORDER_1 = (B_S - B_T) ** 2
ORDER_2 = ORDER_1 + (2 * A_S * B_S - 2 * A_T * B_T) ** 2


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

    E+ = (1 + cos) / 2: same-class nodes have cosine 1 (E+ 1), the diagonal is 1 (E+ + I: 2).
    Teacher nodes (1,0), (1,0) | (0,1), (0,1): cross-class cosine 0 (E+ 1/2):
        E+ + I = [[2,1,h,h],[1,2,h,h],[h,h,2,1],[h,h,1,2]], h = 1/2, D = 4 I.
    Student nodes (1,0), (1,0) | (1,1), (1,1): cross-class E+ g = (1 + c)/2, D = d I, d = 3 + 2g.
    Differences: diagonal 2/d - 2/4 (4 entries), same-class 1/d - 1/4 (4), cross-class g/d - h/4 (8);
    / N_present^2 = 16.
    """
    d = 3 + 2 * G
    expected = (4 * (2 / d - 2 / 4) ** 2 + 4 * (1 / d - 1 / 4) ** 2 + 8 * (G / d - 0.5 / 4) ** 2) / 16
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
    # E+ = (1 + cos)/2: 1 on the present diagonal, g between nodes 0 and 1; the absent node is isolated (identity)
    expected = torch.tensor([[2.0, G, 0.0], [G, 2.0, 0.0], [0.0, 0.0, 2.0 + G]]) / (2 + G)
    torch.testing.assert_close(graph[0], expected)


def test_graph_maps_cosines_to_unit_interval() -> None:
    # opposite, orthogonal, equal and zero prototypes: cos -1, 0, 1 and 0 -> E+ 0, 1/2, 1, 1/2 (all present)
    protos = torch.tensor([[[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]])
    graph = normalized_region_graph(protos, torch.ones(1, 4, dtype=torch.bool))
    edges = torch.tensor([[1.0, 0.0, 0.5, 0.5], [0.0, 1.0, 0.5, 0.5], [0.5, 0.5, 1.0, 0.5], [0.5, 0.5, 0.5, 0.5]])
    edges = edges + torch.eye(4)
    inv_sqrt = edges.sum(dim=1).rsqrt()
    torch.testing.assert_close(graph[0], inv_sqrt[:, None] * edges * inv_sqrt[None, :])


def test_negative_student_cosine_has_gradient() -> None:
    # teacher: v0 = (1, 0), v1 = (1, 1) -> cos +1/sqrt(2); student: v0 = (1, 0), v1 = (-1, 1) -> cos -1/sqrt(2).
    # With E+ = clamp(cos, 0) the student's edge was 0 with zero gradient: the loss was > 0 but never moved it.
    teacher = torch.tensor([[[1.0, 1.0], [1.0, 1.0]], [[0.0, 0.0], [1.0, 1.0]]]).unsqueeze(0)
    student = torch.tensor([[[1.0, 1.0], [-1.0, -1.0]], [[0.0, 0.0], [1.0, 1.0]]]).unsqueeze(0).requires_grad_(True)
    target = torch.tensor([[0, 0], [1, 1]]).view(1, 1, 2, 2)
    value = RegionGraphDistillationLoss(order=1)(student, teacher, target, torch.zeros(1, 2, 2, 2))
    value.backward()
    assert value.item() > 0
    assert torch.linalg.vector_norm(student.grad) > 1e-6
    _, b_s = _two_node((1 - C) / 2)
    torch.testing.assert_close(value.detach(), torch.tensor((b_s - B_S) ** 2))  # teacher edge (1 + c)/2 = G


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


def _mixed_batch() -> tuple[torch.Tensor, ...]:
    """B=2 random inputs: sample 0 holds several classes, sample 1 is background only (a single node)."""
    torch.manual_seed(13)
    student, teacher, target, teacher_logits = random_inputs()
    target[1] = 0
    return student, teacher, target, teacher_logits


def test_background_only_sample_does_not_dilute_the_mean() -> None:
    student, teacher, target, teacher_logits = _mixed_batch()
    student.requires_grad_(True)
    alone = RegionGraphDistillationLoss()(student[:1], teacher[:1], target[:1], teacher_logits[:1])
    mean = RegionGraphDistillationLoss()(student, teacher, target, teacher_logits)
    assert alone.item() > 0
    torch.testing.assert_close(mean, alone)  # not alone / 2
    none = RegionGraphDistillationLoss(reduction="none")(student, teacher, target, teacher_logits)
    torch.testing.assert_close(none, torch.stack([alone, torch.tensor(0.0)]))
    torch.testing.assert_close(
        RegionGraphDistillationLoss(reduction="sum")(student, teacher, target, teacher_logits), alone
    )
    mean.backward()
    assert torch.isfinite(student.grad).all() and torch.equal(student.grad[1], torch.zeros_like(student.grad[1]))


def test_background_only_sample_counts_with_subregion_nodes() -> None:
    # subregions=2 splits the background of sample 1 into 4 present nodes: a graph with something to distil
    student, teacher, target, teacher_logits = _mixed_batch()
    loss = RegionGraphDistillationLoss(subregions=2, reduction="none")
    none = loss(student, teacher, target, teacher_logits)
    assert none[1].item() > 0
    torch.testing.assert_close(
        RegionGraphDistillationLoss(subregions=2)(student, teacher, target, teacher_logits), none.mean()
    )


def test_no_sample_to_distil_gives_zero_and_finite_gradients() -> None:
    student, teacher, target, teacher_logits = _mixed_batch()
    student.requires_grad_(True)
    value = RegionGraphDistillationLoss()(student, teacher, torch.zeros_like(target), teacher_logits)
    value.backward()
    assert value.item() == 0.0 and torch.isfinite(student.grad).all()


@pytest.mark.parametrize(
    ("order", "subregions", "expected"),
    [
        # golden values: computed once with this implementation (after the hand-computed tests passed).
        # Changed on purpose with E+ = (1 + cos)/2 replacing clamp(cos, 0) (it maps every edge into [0, 1], so the
        # graphs differ less): were 0.02324867, 0.05912093, 0.02461141 (labels and features here are both 8x8, so
        # the area-fraction regions are the one-hot labels and do not change them)
        (1, 1, 0.00632952),
        (2, 1, 0.01168484),
        (2, 2, 0.00306996),
    ],
)
def test_golden(order: int, subregions: int, expected: float) -> None:
    torch.manual_seed(0)
    value = RegionGraphDistillationLoss(order=order, subregions=subregions)(*random_inputs())
    assert value.item() == pytest.approx(expected, abs=1e-5)
