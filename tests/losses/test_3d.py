"""Volumes (``B, C, D, H, W``): every distillation term and helper in 3-D, with the one implementation of images.

- a volume of depth 1 gives the value and the gradient of the image it holds, for every term (grids with more depth
  cells than the depth included) and for the composite loss with every term on;
- hand-computed 2x2x2 (and other small) cases for KD, class-balanced KD, CWD and the region helpers (area fractions,
  the dilation cube, region-balanced weights, prototypes, grids);
- permuting the spatial axes of every input in the same way changes nothing;
- mixed 2-D / 3-D inputs and per-axis grids of the wrong length are refused with the argument and both shapes named.

The per-term contract (gradients, reductions, absent classes, ...) runs on volumes in ``test_term_contract.py``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import pytest
import torch
from monai.losses import DiceCELoss

from mskd.losses import (
    ChannelWiseDistillationLoss,
    DistillationLoss,
    FeatureFilteringDistillationLoss,
    ImportanceMapDistillationLoss,
    IntraClassFeatureVariationLoss,
    LogitDistillationLoss,
    PairwiseSimilarityDistillationLoss,
    RegionAffinityDistillationLoss,
    RegionGraphDistillationLoss,
)
from mskd.losses.regions import (
    class_prototypes,
    common_size,
    dilate_mask,
    distillation_filter,
    filtered_regions,
    label_regions,
    one_hot_labels,
    region_balanced_weights,
    resize_features,
    resize_labels,
    resize_regions,
    resize_to_common_size,
    teacher_prediction,
)
from mskd.losses.rgd import grid_subregions
from mskd.losses.skd import node_similarity
from tests.losses.test_term_contract import IDS, TERMS, _inputs

# float64, so that "the same value" can be checked to rounding
TIGHT = {"rtol": 1e-12, "atol": 1e-15}


def _with_depth(counts: tuple[int, ...], depth: int, axis: int) -> tuple[int, ...]:
    """Per-axis counts of a volume whose slice axis is ``axis`` (2: ``B, C, D, H, W``; -1: ``B, C, H, W, D``)."""
    return (depth, *counts) if axis == 2 else (*counts, depth)


# grids given per axis or with more cells than the depth: (id, image factory, volume factory(axis, **kw), kind)
GRID_CASES: list[tuple[str, Callable[..., object], Callable[..., object], str]] = [
    (
        "rgd-3-cells-on-depth-1",  # 3 cells along a depth of 1: two empty (absent) cells per class
        lambda **kw: RegionGraphDistillationLoss(subregions=3, **kw),
        lambda axis, **kw: RegionGraphDistillationLoss(subregions=3, **kw),
        "features",
    ),
    (
        "rgd-per-axis",
        lambda **kw: RegionGraphDistillationLoss(subregions=(2, 3), **kw),
        lambda axis, **kw: RegionGraphDistillationLoss(subregions=_with_depth((2, 3), 5, axis), **kw),
        "features",
    ),
    (
        "skd-per-axis",  # the depth count is capped by the depth
        lambda **kw: PairwiseSimilarityDistillationLoss(pool_size=(3, 2), **kw),
        lambda axis, **kw: PairwiseSimilarityDistillationLoss(pool_size=_with_depth((3, 2), 4, axis), **kw),
        "features",
    ),
    (
        "skd-max-2",
        lambda **kw: PairwiseSimilarityDistillationLoss(pool_size=2, pooling="max", **kw),
        lambda axis, **kw: PairwiseSimilarityDistillationLoss(pool_size=2, pooling="max", **kw),
        "features",
    ),
]
DEPTH_ONE_CASES = [
    (name, factory, lambda axis, factory=factory, **kw: factory(**kw), kind) for name, factory, kind in TERMS
] + GRID_CASES


def _float64(args: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    return [a.double() if a.is_floating_point() else a for a in args]


# ---------------------------------------------------------------------------------------------------------------------
# a volume of depth 1 is the image it holds


@pytest.mark.parametrize("axis", [2, -1], ids=["BCDHW", "BCHWD"])
@pytest.mark.parametrize(
    ("name", "image_factory", "volume_factory", "kind"),
    DEPTH_ONE_CASES,
    ids=[c[0] for c in DEPTH_ONE_CASES],
)
def test_depth_one_volume_equals_image(
    name: str, image_factory: Callable, volume_factory: Callable, kind: str, axis: int
) -> None:
    # the slice axis first (B, C, D, H, W) or last (MONAI's B, C, H, W, D)
    torch.manual_seed(20)
    student, teacher, target, teacher_logits = _float64(_inputs(kind, batch=3))
    target[1] = 0  # a background-only sample (left out of the mean by FFD, RGD, RAD)
    student.requires_grad_(True)
    volume_student = student.detach().unsqueeze(axis).requires_grad_(True)
    image = image_factory(reduction="none")(student, teacher, target, teacher_logits)
    volume = volume_factory(axis, reduction="none")(
        volume_student, teacher.unsqueeze(axis), target.unsqueeze(axis), teacher_logits.unsqueeze(axis)
    )
    assert volume.shape == (3,)
    torch.testing.assert_close(volume, image, **TIGHT)
    image.sum().backward()
    volume.sum().backward()
    torch.testing.assert_close(volume_student.grad.squeeze(axis), student.grad, **TIGHT)


def _composite() -> DistillationLoss:
    both = ["equal", "small"]
    return DistillationLoss(
        DiceCELoss(to_onehot_y=True, softmax=True),
        {
            "kd": {"loss": LogitDistillationLoss(), "weight": 0.1},
            "kd_cb": {"loss": LogitDistillationLoss(class_balanced=True, filter_band_radius=1), "weight": 0.2},
            "cwd": {"loss": ChannelWiseDistillationLoss(), "weight": 0.3},
            "cwd_features": {"loss": ChannelWiseDistillationLoss(), "weight": 0.3, "stages": ["equal"]},
            "ffd": {"loss": FeatureFilteringDistillationLoss(prototype_weight=0.5), "weight": 0.9, "stages": ["equal"]},
            "ffd_small": {"loss": FeatureFilteringDistillationLoss(band_radius=1), "weight": 0.9, "stages": ["small"]},
            "rgd": {"loss": RegionGraphDistillationLoss(subregions=2), "weight": 0.9, "stages": both},
            "imd": {"loss": ImportanceMapDistillationLoss(), "weight": 0.4, "stages": both},
            "rad": {"loss": RegionAffinityDistillationLoss(), "weight": 0.5, "stages": both},
            "ifvd": {"loss": IntraClassFeatureVariationLoss(), "weight": 0.6, "stages": both},
            "skd": {"loss": PairwiseSimilarityDistillationLoss(pool_size=3), "weight": 0.7, "stages": both},
        },
    )


def test_depth_one_volume_equals_image_for_the_composite_loss() -> None:
    torch.manual_seed(21)
    g = {"dtype": torch.float64}
    student_logits = torch.randn(2, 3, 8, 8, **g, requires_grad=True)
    teacher_logits = torch.randn(2, 3, 8, 8, **g)
    target = torch.randint(0, 3, (2, 1, 8, 8))
    student_features = {
        "equal": torch.randn(2, 6, 4, 4, **g, requires_grad=True),
        "small": torch.randn(2, 4, 2, 2, **g, requires_grad=True),
    }
    teacher_features = {"equal": torch.randn(2, 6, 8, 8, **g), "small": torch.randn(2, 8, 4, 4, **g)}
    image = _composite()(student_logits, teacher_logits, target, student_features, teacher_features)

    def volume(x: torch.Tensor) -> torch.Tensor:
        return x.detach().unsqueeze(2).requires_grad_(x.requires_grad)

    v_logits, v_features = volume(student_logits), {k: volume(v) for k, v in student_features.items()}
    out = _composite()(
        v_logits,
        volume(teacher_logits),
        target.unsqueeze(2),
        v_features,
        {k: volume(v) for k, v in teacher_features.items()},
    )
    assert list(out) == list(image) and len(out) == 13
    for key, value in image.items():
        torch.testing.assert_close(out[key], value, **TIGHT, msg=key)
    image["loss"].backward()
    out["loss"].backward()
    torch.testing.assert_close(v_logits.grad.squeeze(2), student_logits.grad, **TIGHT)
    for key, value in student_features.items():
        assert value.grad.abs().sum() > 0
        torch.testing.assert_close(v_features[key].grad.squeeze(2), value.grad, **TIGHT)


# ---------------------------------------------------------------------------------------------------------------------
# hand-computed volumes

# KL(p || uniform) over K = 2 classes for p = [1/4, 3/4] (the softmax of [0, log 3])
KL_QUARTER = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)


def _kd_logits(voxels: list[tuple[int, int, int]], scale: float = 1.0) -> torch.Tensor:
    """``1, 2, 2, 2, 2`` logits, ``[0, scale * log 3]`` at ``voxels`` and flat elsewhere."""
    logits = torch.zeros(1, 2, 2, 2, 2, dtype=torch.float64)
    for voxel in voxels:
        logits[(0, 1, *voxel)] = scale * math.log(3.0)
    return logits


@pytest.mark.parametrize(
    ("temperature", "scale", "expected"),
    [
        # flat student; the teacher is [1/4, 3/4] at 3 of the 8 voxels and flat at the others: 3 KL / 8
        (1.0, 1.0, 3 * KL_QUARTER / 8),
        # T = 2 on logits 2 log 3: the same softmax, times T^2 = 4
        (2.0, 2.0, 4 * 3 * KL_QUARTER / 8),
    ],
)
def test_kd_hand_2x2x2(temperature: float, scale: float, expected: float) -> None:
    teacher = _kd_logits([(0, 0, 0), (1, 0, 1), (1, 1, 1)], scale)
    student = torch.zeros_like(teacher, requires_grad=True)
    target = torch.zeros(1, 1, 2, 2, 2)
    value = LogitDistillationLoss(temperature=temperature)(student, teacher, target, teacher)
    torch.testing.assert_close(value, torch.tensor(expected, dtype=torch.float64))
    value.backward()
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0


def test_kd_on_a_volume_is_the_mean_of_its_slices() -> None:
    # plain KD is a mean over voxels: with equal slices, the mean of the per-slice (2-D) values
    torch.manual_seed(22)
    student, teacher = torch.randn(2, 3, 4, 5, 6, dtype=torch.float64), torch.randn(2, 3, 4, 5, 6, dtype=torch.float64)
    target = torch.randint(0, 3, (2, 1, 4, 5, 6))
    loss = LogitDistillationLoss(reduction="none")
    slices = torch.stack(
        [loss(student[:, :, d], teacher[:, :, d], target[:, :, d], teacher[:, :, d]) for d in range(4)]
    )
    torch.testing.assert_close(loss(student, teacher, target, teacher), slices.mean(dim=0), **TIGHT)


# labels of the class-balanced cases: class 1 at (0, 0, 0) and (1, 1, 1), background at the other 6 voxels
LABELS_2X2X2 = torch.tensor([[[1, 0], [0, 0]], [[0, 0], [0, 1]]]).view(1, 1, 2, 2, 2)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        # the teacher is [1/4, 3/4] at (0, 0, 0) (class 1) and (0, 1, 0) (background); weights 1/(2*2) for class 1
        # and 1/(2*6) for the background: c/4 + c/12
        ({}, KL_QUARTER / 4 + KL_QUARTER / 12),
        # floor 0.5 * 8 = 4 voxels: class 1 (2 voxels) gets 1/(2*4) per voxel, the background (6) still 1/12
        ({"min_region_fraction": 0.5}, KL_QUARTER / 8 + KL_QUARTER / 12),
        # organs only (band radius 0): K_present = 1, each class-1 voxel weighs 1/2
        ({"filter_band_radius": 0}, KL_QUARTER / 2),
        # a band of 1 voxel covers the whole 2x2x2 cube: as without a filter
        ({"filter_band_radius": 1}, KL_QUARTER / 4 + KL_QUARTER / 12),
    ],
)
def test_class_balanced_kd_hand_2x2x2(kwargs: dict, expected: float) -> None:
    teacher = _kd_logits([(0, 0, 0), (0, 1, 0)])
    student = torch.zeros_like(teacher)
    value = LogitDistillationLoss(temperature=1.0, class_balanced=True, **kwargs)(
        student, teacher, LABELS_2X2X2, teacher
    )
    torch.testing.assert_close(value, torch.tensor(expected, dtype=torch.float64))


# KL(p || uniform over 8 voxels) for p = 8/15 at one voxel and 1/15 at the other 7 (the softmax of log 8 and zeros)
KL_CWD = 8 / 15 * math.log(64 / 15) + 7 / 15 * math.log(8 / 15)


@pytest.mark.parametrize(
    ("temperature", "scale", "student_size", "expected"),
    [
        # channel 0: the teacher peaks at one voxel, the student is flat; channel 1: both flat (KL 0); mean over C
        (1.0, 1.0, (2, 2, 2), KL_CWD / 2),
        # tau = 2 on a peak of 2 log 8: the same distributions, times tau^2 = 4
        (2.0, 2.0, (2, 2, 2), 4 * KL_CWD / 2),
        # a 1x1x1 student is trilinearly resized to a constant 2x2x2 map: flat again
        (1.0, 1.0, (1, 1, 1), KL_CWD / 2),
    ],
)
def test_cwd_hand_2x2x2(temperature: float, scale: float, student_size: tuple, expected: float) -> None:
    teacher = torch.zeros(1, 2, 2, 2, 2, dtype=torch.float64)
    teacher[0, 0, 1, 0, 1] = scale * math.log(8.0)
    student = torch.full((1, 2, *student_size), 0.7, dtype=torch.float64, requires_grad=True)
    labels, logits = torch.zeros(1, 1, 2, 2, 2), torch.zeros(1, 3, 2, 2, 2)
    value = ChannelWiseDistillationLoss(temperature=temperature)(student, teacher, labels, logits)
    torch.testing.assert_close(value, torch.tensor(expected, dtype=torch.float64))
    value.backward()
    assert torch.isfinite(student.grad).all() and student.grad[0, 0].abs().sum() > 0


def test_label_regions_hand_4x4x4_to_2x2x2() -> None:
    # class 1 a 2x2x2 block at voxels 1..2 of every axis: one voxel in each of the 8 cells (1/8 everywhere); class 2
    # the voxel (3, 3, 3), in cell (1, 1, 1); the background is the rest
    labels = torch.zeros(1, 1, 4, 4, 4, dtype=torch.long)
    labels[..., 1:3, 1:3, 1:3] = 1
    labels[..., 3, 3, 3] = 2
    regions = label_regions(labels, (2, 2, 2), 3, torch.float64)
    expected = torch.zeros(1, 3, 2, 2, 2, dtype=torch.float64)
    expected[0, 0] = 7 / 8
    expected[0, 0, 1, 1, 1] = 6 / 8
    expected[0, 1] = 1 / 8
    expected[0, 2, 1, 1, 1] = 1 / 8
    torch.testing.assert_close(regions, expected)


def test_resize_regions_hand_mixed_up_and_down_3d() -> None:
    # 2x2x2 labels to (1, 2, 4): the depth is averaged (area), the height kept, the width nearest-doubled
    labels = torch.tensor([[[0, 1], [1, 1]], [[0, 0], [1, 0]]]).view(1, 1, 2, 2, 2)
    regions = resize_regions(one_hot_labels(labels, 2, torch.float64), (1, 2, 4))
    class_1 = torch.tensor([[0.0, 0.0, 0.5, 0.5], [1.0, 1.0, 0.5, 0.5]], dtype=torch.float64)
    torch.testing.assert_close(regions[0, 1, 0], class_1)
    torch.testing.assert_close(regions.sum(dim=1), torch.ones(1, 1, 2, 4, dtype=torch.float64))
    x = torch.rand(1, 2, 3, 3, 3)
    assert resize_regions(x, (3, 3, 3)) is x


@pytest.mark.parametrize(
    ("radius", "box"),
    [
        (0, (slice(1, 2), slice(2, 3), slice(3, 4))),  # identity
        (1, (slice(0, 3), slice(1, 4), slice(2, 5))),  # the 3x3x3 cube around (1, 2, 3)
        (2, (slice(0, 4), slice(0, 5), slice(1, 5))),  # the 5x5x5 cube, clipped at the borders
    ],
)
def test_dilate_mask_cube_hand(radius: int, box: tuple[slice, ...]) -> None:
    mask = torch.zeros(1, 1, 5, 5, 5, dtype=torch.bool)
    mask[0, 0, 1, 2, 3] = True
    expected = torch.zeros_like(mask)
    expected[(0, 0, *box)] = True
    assert torch.equal(dilate_mask(mask, radius), expected)


@pytest.mark.parametrize("radius", [1, 2, 3])
def test_dilate_mask_3d_is_the_chebyshev_ball(radius: int) -> None:
    # brute force: a voxel is set iff some set voxel lies within Chebyshev distance r (max over the axes)
    mask = torch.rand(2, 1, 6, 7, 5, generator=torch.Generator().manual_seed(radius)) > 0.93
    grid = torch.stack(torch.meshgrid(*(torch.arange(n) for n in mask.shape[2:]), indexing="ij"), dim=-1).view(-1, 3)
    chebyshev = (grid[:, None, :] - grid[None, :, :]).abs().amax(dim=-1)  # P, P
    for b in range(2):
        expected = ((chebyshev <= radius) & mask[b, 0].flatten()[None, :]).any(dim=1).view(mask.shape[2:])
        assert torch.equal(dilate_mask(mask, radius)[b, 0], expected)


def test_distillation_filter_hand_3d() -> None:
    # labels on a 3x1x5 volume: the organ at (1, 0, 2); the teacher is wrong at (0, 0, 1) and (2, 0, 4)
    labels = torch.zeros(1, 1, 3, 1, 5, dtype=torch.long)
    labels[0, 0, 1, 0, 2] = 1
    predicted = labels.clone()
    predicted[0, 0, 0, 0, 1] = 1
    predicted[0, 0, 2, 0, 4] = 1
    logits = one_hot_labels(predicted, 2)
    band = torch.zeros(1, 1, 3, 1, 5, dtype=torch.bool)
    band[..., 1:4] = True  # within one voxel of (1, 0, 2): every depth, columns 1..3
    assert torch.equal(distillation_filter(labels, logits, 1, False), band)
    assert torch.equal(distillation_filter(labels, logits, 0, False), labels.bool())
    correct = predicted == labels
    assert torch.equal(distillation_filter(labels, logits, None, True), correct)
    both = band & correct
    assert both.sum() == 8  # the 9 voxels of the band less the error at (0, 0, 1)
    assert torch.equal(distillation_filter(labels, logits, 1, True), both)


# 2x2x2: background 5 voxels, class 1 two voxels, class 2 one voxel
LABELS_3CLASS = torch.tensor([[[0, 0], [0, 1]], [[0, 1], [2, 0]]]).view(1, 1, 2, 2, 2)


@pytest.mark.parametrize(
    ("min_region_fraction", "per_class", "total"),
    [
        (0.0, [1 / 15, 1 / 6, 1 / 3], 1.0),  # each present class gets 1/3
        (0.25, [1 / 15, 1 / 6, 1 / 6], 5 / 6),  # floor 2 voxels: class 2 (1 voxel) gets 1/(3*2)
    ],
)
def test_region_balanced_weights_hand_2x2x2(min_region_fraction: float, per_class: list, total: float) -> None:
    weights = region_balanced_weights(
        one_hot_labels(LABELS_3CLASS, 3, torch.float64), min_region_fraction=min_region_fraction
    )
    assert weights.shape == (1, 1, 2, 2, 2)
    torch.testing.assert_close(weights, torch.tensor(per_class, dtype=torch.float64)[LABELS_3CLASS])
    torch.testing.assert_close(weights.sum(), torch.tensor(total, dtype=torch.float64))


def test_class_prototypes_hand_2x2x2() -> None:
    # one channel 1..8 over the 2x2x2 voxels; class 0 the first slice, class 1 the second, class 2 absent
    features = torch.arange(1.0, 9.0, dtype=torch.float64).view(1, 1, 2, 2, 2)
    labels = torch.tensor([0, 1]).view(1, 1, 2, 1, 1).expand(1, 1, 2, 2, 2)
    prototypes = class_prototypes(features, one_hot_labels(labels, 3))
    assert prototypes.shape == (1, 3, 1) and prototypes.dtype == torch.float64
    torch.testing.assert_close(prototypes[0, :, 0], torch.tensor([2.5, 6.5, 0.0], dtype=torch.float64))


def test_sizes_resizing_and_nearest_labels_3d() -> None:
    assert common_size(torch.zeros(1, 4, 2, 4, 4), torch.zeros(1, 6, 1, 8, 2)) == (2, 8, 4)
    student, teacher = resize_to_common_size(torch.full((2, 3, 1, 2, 2), 5.0), torch.ones(2, 5, 2, 4, 1))
    assert student.shape == (2, 3, 2, 4, 2) and teacher.shape == (2, 5, 2, 4, 2)
    torch.testing.assert_close(student, torch.full_like(student, 5.0))  # trilinear keeps a constant map
    x = torch.rand(1, 1, 2, 3, 4)
    assert resize_features(x, (2, 3, 4)) is x
    labels = torch.tensor([[[0, 1], [2, 1]], [[1, 1], [0, 2]]]).view(1, 1, 2, 2, 2)
    up = labels.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3).repeat_interleave(2, dim=4)
    assert torch.equal(resize_labels(labels, (4, 4, 4)), up)
    assert torch.equal(resize_labels(up, (2, 2, 2)), labels)
    assert torch.equal(teacher_prediction(one_hot_labels(up, 3) * 3.0, (2, 2, 2)), labels)


@pytest.mark.parametrize("stride", [1, 2, 4, 8])
def test_filtered_regions_kept_fraction_does_not_depend_on_stride_3d(stride: int) -> None:
    # 32^3 labels, a 4^3 organ at voxels 12..15; a band of 2 voxels makes M the 8^3 cube 10..17: 1/64 of the volume
    # at every stride (the band is counted in input voxels), the organ 1/512
    labels = torch.zeros(1, 1, 32, 32, 32, dtype=torch.long)
    labels[..., 12:16, 12:16, 12:16] = 1
    size = (32 // stride,) * 3
    kept = filtered_regions(labels, one_hot_labels(labels, 2), size, 2, True, torch.float64)
    assert kept.shape == (1, 2, *size)
    voxels = math.prod(size)
    torch.testing.assert_close(kept.sum() / voxels, torch.tensor(1 / 64, dtype=torch.float64))
    torch.testing.assert_close(kept[0, 1].sum() / voxels, torch.tensor(1 / 512, dtype=torch.float64))


@pytest.mark.parametrize(
    ("cells", "nodes", "voxels_per_node"),
    [
        (2, 8, 1),  # 2x2x2 cells over a 2x2x2 volume: one voxel each
        ((1, 2, 2), 4, 2),  # no cut along the depth: each node holds both slices
        ((3, 2, 2), 12, 1),  # 3 cells along a depth of 2: cells 0 and 1 hold a slice each, cell 2 is empty
    ],
)
def test_grid_subregions_3d(cells: int | tuple[int, ...], nodes: int, voxels_per_node: int) -> None:
    regions = torch.ones(1, 1, 2, 2, 2)
    split = grid_subregions(regions, cells)
    assert split.shape == (1, nodes, 2, 2, 2)
    torch.testing.assert_close(split.sum(dim=1, keepdim=True), regions)  # the cells partition the volume
    sizes = split.sum(dim=(2, 3, 4))[0]
    assert set(sizes.tolist()) <= {0.0, float(voxels_per_node)}
    if cells == 2:  # row-major: node 4 d + 2 h + w holds voxel (d, h, w)
        for d, h, w in torch.cartesian_prod(*(torch.arange(2),) * 3).tolist():
            assert split[0, 4 * d + 2 * h + w, d, h, w] == 1.0
    if cells == (3, 2, 2):
        assert sizes[8:].sum() == 0 and (sizes[:8] == 1).all()


def test_node_similarity_3d_hand() -> None:
    # a 2x1x1 grid over a 2x2x2 volume: node 0 the mean (1, 0) of the first slice, node 1 the mean (1, 1) of the second
    features = torch.zeros(1, 2, 2, 2, 2)
    features[0, 0] = 1.0
    features[0, 1, 1] = 1.0
    r = 1 / math.sqrt(2)
    torch.testing.assert_close(node_similarity(features, (2, 1, 1))[0], torch.tensor([[1.0, r], [r, 1.0]]))
    assert node_similarity(features, (2, 2, 2)).shape == (1, 8, 8)


# ---------------------------------------------------------------------------------------------------------------------
# invariance to a permutation of the spatial axes


@pytest.mark.parametrize("order", [(0, 1, 4, 2, 3), (0, 1, 3, 4, 2), (0, 1, 2, 4, 3)], ids=["whd", "hwd", "dwh"])
@pytest.mark.parametrize(("name", "factory", "kind"), TERMS, ids=IDS)
def test_permuting_the_spatial_axes_changes_nothing(
    name: str, factory: Callable, kind: str, order: tuple[int, ...]
) -> None:
    # pixel-wise terms (KD, CWD) and every other term without an axis-specific setting: the band is a cube, the
    # resizing and pooling are the same along every axis and a grid with one count for every axis only renumbers
    # its cells (the graphs are the same up to a relabelling of the nodes)
    torch.manual_seed(23)
    args = _float64(_inputs(kind, dims=3))
    value = factory(reduction="none")(*args)
    permuted = factory(reduction="none")(*(a.permute(order) for a in args))
    torch.testing.assert_close(permuted, value, rtol=1e-10, atol=1e-13)


# ---------------------------------------------------------------------------------------------------------------------
# errors

_IMAGE = {
    "student": torch.zeros(2, 3, 4, 4),
    "teacher": torch.zeros(2, 3, 4, 4),
    "target": torch.zeros(2, 1, 4, 4),
    "teacher_logits": torch.zeros(2, 3, 4, 4),
}
_VOLUME = {name: value.unsqueeze(2) for name, value in _IMAGE.items()}


@pytest.mark.parametrize(
    "factory", [LogitDistillationLoss, FeatureFilteringDistillationLoss, RegionGraphDistillationLoss]
)
@pytest.mark.parametrize(
    ("base", "odd", "named"),
    [
        (_IMAGE, "student", "student"),  # a 3-D student among 2-D inputs
        (_VOLUME, "teacher", "teacher"),  # 2-D teacher features with a 3-D student
        (_VOLUME, "target", "target"),  # 2-D labels with 3-D logits
        (_IMAGE, "teacher_logits", "student"),  # 3-D teacher logits: the first input that disagrees is named
    ],
)
def test_mixed_2d_and_3d_inputs_name_the_argument_and_both_shapes(
    factory: Callable, base: dict, odd: str, named: str
) -> None:
    other = _VOLUME if base is _IMAGE else _IMAGE
    args = dict(base, **{odd: other[odd]})
    with pytest.raises(ValueError, match="all inputs of one call must be 2-D") as info:
        factory()(**args)
    message = str(info.value)
    assert message.startswith(f"{named} {tuple(args[named].shape)} has")
    assert str(tuple(args["teacher_logits"].shape)) in message


def test_composite_with_a_2d_stage_for_3d_logits() -> None:
    logits = torch.zeros(2, 3, 1, 4, 4)
    loss = DistillationLoss(
        DiceCELoss(to_onehot_y=True, softmax=True),
        {"ffd": {"loss": FeatureFilteringDistillationLoss(), "stages": ["low"]}},
    )
    with pytest.raises(ValueError, match=r"student \(2, 4, 2, 2\) has 2 spatial dims.*\(2, 3, 1, 4, 4\) has 3"):
        loss(
            logits,
            logits,
            torch.zeros(2, 1, 1, 4, 4),
            {"low": torch.zeros(2, 4, 2, 2)},
            {"low": torch.zeros(2, 4, 2, 2)},
        )


@pytest.mark.parametrize("shape", [(2, 3, 4), (2, 3, 1, 1, 4, 4)])
def test_neither_image_nor_volume(shape: tuple[int, ...]) -> None:
    args = dict(_IMAGE, student=torch.zeros(shape))
    message = f"student must be a 4-D tensor (B, C, H, W), got shape {shape}; a volume is a 5-D tensor (B, C, D, H, W)."
    with pytest.raises(ValueError, match=re.escape(message)):
        LogitDistillationLoss()(**args)


@pytest.mark.parametrize(
    ("factory", "name", "value", "inputs"),
    [
        (RegionGraphDistillationLoss, "subregions", (2, 2, 2), _IMAGE),
        (RegionGraphDistillationLoss, "subregions", (2, 2), _VOLUME),
        (PairwiseSimilarityDistillationLoss, "pool_size", (4, 4, 4), _IMAGE),
        (PairwiseSimilarityDistillationLoss, "pool_size", [4, 4], _VOLUME),
    ],
)
def test_per_axis_grid_of_the_wrong_length(factory: Callable, name: str, value: object, inputs: dict) -> None:
    loss = factory(**{name: value})
    assert getattr(loss, name) == tuple(value)
    dims = inputs["student"].ndim - 2
    shape = tuple(inputs["student"].shape)
    match = re.escape(
        f"{name}={tuple(value)!r} gives {len(value)} per-axis counts but the features {shape} have {dims}"
    )
    with pytest.raises(ValueError, match=match):
        loss(**inputs)


@pytest.mark.parametrize("factory", [RegionGraphDistillationLoss, PairwiseSimilarityDistillationLoss])
@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        ((2,), ValueError, r"one count per spatial axis, \(n_h, n_w\) or \(n_d, n_h, n_w\), got 1: \(2,\)"),
        ((2, 2, 2, 2), ValueError, r"got 4: \(2, 2, 2, 2\)"),
        ((2, 0, 2), ValueError, r"\[1\] must be >= 1, got 0"),
        ((2, 1.5), TypeError, r"\[1\] must be an integer, got 1.5"),
        ({2: 2}, TypeError, r"an integer or a sequence of one integer per spatial axis"),
    ],
)
def test_grid_argument_errors(factory: Callable, value: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        factory(**{"subregions" if factory is RegionGraphDistillationLoss else "pool_size": value})


def test_grid_parameters_are_reported_per_axis() -> None:
    loss = DistillationLoss(
        DiceCELoss(), {"rgd": {"loss": RegionGraphDistillationLoss(subregions=[1, 2, 2]), "stages": ["low"]}}
    )
    assert loss.hyperparameters()["rgd_subregions"] == (1, 2, 2)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: common_size(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 2, 4, 4)), r"features\[1\] \(1, 1, 2, 4, 4\)"),
        (lambda: resize_to_common_size(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 2, 4, 4)), "teacher"),
        (lambda: resize_features(torch.zeros(1, 1, 2, 4, 4), (4, 4)), r"size \(4, 4\).*\(1, 1, 2, 4, 4\)"),
        (lambda: resize_regions(torch.zeros(1, 1, 4, 4), (2, 2, 2)), r"size \(2, 2, 2\).*\(1, 1, 4, 4\)"),
        (lambda: resize_labels(torch.zeros(1, 1, 4, 4), (1, 4, 4)), r"size \(1, 4, 4\)"),
        (lambda: teacher_prediction(torch.zeros(1, 2, 1, 4, 4), (4, 4)), r"teacher_logits \(1, 2, 1, 4, 4\)"),
        (
            lambda: label_regions(torch.zeros(1, 1, 1, 4, 4), (1, 4, 4), 2, torch.float32, torch.ones(1, 1, 4, 4)),
            r"mask \(1, 1, 4, 4\) has 2 spatial dims but target \(1, 1, 1, 4, 4\) has 3",
        ),
        (
            lambda: distillation_filter(torch.zeros(1, 1, 4, 4), torch.zeros(1, 2, 1, 4, 4), 1, True),
            r"labels \(1, 1, 4, 4\).*teacher_logits \(1, 2, 1, 4, 4\)",
        ),
        (
            lambda: class_prototypes(torch.zeros(1, 3, 1, 4, 4), torch.zeros(1, 2, 4, 4)),
            r"regions \(1, 2, 4, 4\).*features \(1, 3, 1, 4, 4\)",
        ),
        (lambda: dilate_mask(torch.zeros(1, 4, 4), 1), r"mask must be a 4-D tensor.*\(1, 4, 4\)"),
        (lambda: grid_subregions(torch.zeros(1, 2, 4, 4), (2, 2, 2)), r"cells=\(2, 2, 2\) gives 3 per-axis counts"),
        (lambda: node_similarity(torch.zeros(1, 2, 2, 4, 4), (2, 2)), r"grid \(2, 2\).*\(1, 2, 2, 4, 4\)"),
    ],
)
def test_helpers_refuse_mixed_dims(call: Callable[[], object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()
