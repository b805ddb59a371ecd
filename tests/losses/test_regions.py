"""Tests of the shared helpers in ``mskd.losses.regions``."""

from __future__ import annotations

import pytest
import torch

from mskd.losses.regions import (
    check_labels,
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

# 4x4 hand case: background 11 pixels, class 1 a 2x2 block (4 pixels), class 2 a single pixel.
LABELS_4X4 = torch.tensor(
    [
        [0, 0, 0, 0],
        [0, 1, 1, 0],
        [0, 1, 1, 0],
        [0, 0, 0, 2],
    ]
).view(1, 1, 4, 4)


def test_region_balanced_weights_hand_4x4() -> None:
    # K_present = 3, so each region gets total weight 1/3:
    # background 1/(3*11) = 1/33, class 1 1/(3*4) = 1/12, class 2 1/(3*1) = 1/3.
    weights = region_balanced_weights(one_hot_labels(LABELS_4X4, 3))
    expected = torch.tensor([1 / 33, 1 / 12, 1 / 3])[LABELS_4X4]
    assert weights.shape == (1, 1, 4, 4)
    torch.testing.assert_close(weights, expected)
    torch.testing.assert_close(weights.sum(), torch.tensor(1.0))


def test_region_balanced_weights_hand_4x4_with_mask() -> None:
    # mask keeps rows 0..2: background 4 + 2 + 2 = 8 pixels, class 1 4 pixels, class 2 (row 3) dropped.
    # K_present = 2: background 1/(2*8) = 1/16, class 1 1/(2*4) = 1/8, everything outside the mask 0.
    # The kept regions R_k ∩ M come from label_regions (at the labels' own size: the one-hot times M).
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    mask[..., :3, :] = True
    weights = region_balanced_weights(label_regions(LABELS_4X4, (4, 4), 3, torch.float32, mask))
    expected = torch.tensor([1 / 16, 1 / 8, 0.0])[LABELS_4X4] * mask
    torch.testing.assert_close(weights, expected)
    torch.testing.assert_close(weights.sum(), torch.tensor(1.0))


@pytest.mark.parametrize(
    ("min_region_fraction", "per_class", "total"),
    [
        # 16 pixels; regions background 11, class 1 4, class 2 1 pixel; K_present = 3
        (0.0, [1 / 33, 1 / 12, 1 / 3], 1.0),  # no floor
        (1 / 16, [1 / 33, 1 / 12, 1 / 3], 1.0),  # floor 1 pixel: nothing below it
        (0.125, [1 / 33, 1 / 12, 1 / 6], 5 / 6),  # floor 2 pixels: class 2 gets 1/(3*2), total 1/3 + 1/3 + 1/6
        (0.5, [1 / 33, 1 / 24, 1 / 24], 1 / 3 + 1 / 6 + 1 / 24),  # floor 8 pixels: classes 1 and 2 floored
    ],
)
def test_region_balanced_weights_floor_hand_4x4(min_region_fraction: float, per_class: list, total: float) -> None:
    weights = region_balanced_weights(one_hot_labels(LABELS_4X4, 3), min_region_fraction=min_region_fraction)
    torch.testing.assert_close(weights, torch.tensor(per_class)[LABELS_4X4])
    torch.testing.assert_close(weights.sum(), torch.tensor(total))


@pytest.mark.parametrize(("min_region_fraction", "ratio"), [(0.0, 20.0), (0.02, 10.0), (0.05, 4.0), (0.1, 2.0)])
def test_region_balanced_weights_floor_ratio_10x10(min_region_fraction: float, ratio: float) -> None:
    # 10x10: class 1 a 4x5 block (20 pixels), class 2 a single pixel, background 79 pixels; floor f * 100 pixels.
    # Per-pixel weight of the fragment over that of class 1: 20 / max(1, floor) (floor <= 20), i.e. |R_large| / floor
    labels = torch.zeros(1, 1, 10, 10, dtype=torch.long)
    labels[..., 2:6, 3:8] = 1
    labels[..., 8, 1] = 2
    weights = region_balanced_weights(one_hot_labels(labels, 3), min_region_fraction=min_region_fraction)
    floor = max(1.0, min_region_fraction * 100)
    assert weights[0, 0, 8, 1].item() / weights[0, 0, 3, 4].item() == pytest.approx(ratio, rel=1e-6)
    torch.testing.assert_close(weights[0, 0, 8, 1], torch.tensor(1 / (3 * floor)))
    torch.testing.assert_close(weights[0, 0, 0, 0], torch.tensor(1 / (3 * 79)))  # background: above every floor


@pytest.mark.parametrize("min_region_fraction", [-0.1, 1.5, float("nan")])
def test_region_balanced_weights_floor_errors(min_region_fraction: float) -> None:
    with pytest.raises(ValueError, match=f"min_region_fraction must lie in \\[0, 1\\], got {min_region_fraction}"):
        region_balanced_weights(one_hot_labels(LABELS_4X4, 3), min_region_fraction=min_region_fraction)


def test_region_balanced_weights_soft_regions_sum_to_one() -> None:
    # soft regions (area fractions at a quarter of the size): counts are sums of fractions, the weights of a
    # sample still sum to 1 when no region is below the floor, and are 0 outside the kept set
    torch.manual_seed(0)
    labels = torch.randint(0, 4, (3, 1, 16, 16))
    mask = torch.rand(3, 1, 16, 16) > 0.3
    regions = label_regions(labels, (4, 4), 4, torch.float64, mask)
    weights = region_balanced_weights(regions, min_region_fraction=0.0)
    torch.testing.assert_close(weights.sum(dim=(1, 2, 3)), torch.ones(3, dtype=torch.float64))
    # per-pixel weight = sum_k fraction_k / (K_present * count_k)
    counts = regions.sum(dim=(2, 3))
    k_present = (counts > 0).sum(dim=1)
    expected = (regions / (k_present[:, None] * counts)[:, :, None, None]).sum(dim=1, keepdim=True)
    torch.testing.assert_close(weights, expected)


@pytest.mark.parametrize("num_classes", [2, 3, 5])
@pytest.mark.parametrize("use_mask", [False, True])
def test_region_balanced_weights_sum_to_one(num_classes: int, use_mask: bool) -> None:
    torch.manual_seed(num_classes)
    labels = torch.randint(0, num_classes, (4, 1, 6, 7))
    mask = torch.rand(4, 1, 6, 7) > 0.5 if use_mask else None
    if mask is not None:
        mask[:, :, 0, 0] = True  # at least one pixel per sample
    # default floor 0.001 * 42 pixels < 1 pixel: no region is below it
    weights = region_balanced_weights(label_regions(labels, (6, 7), num_classes, torch.float32, mask))
    torch.testing.assert_close(weights.sum(dim=(1, 2, 3)), torch.ones(4))
    assert (weights >= 0).all()


def test_region_balanced_weights_background_only_and_empty_mask() -> None:
    regions = one_hot_labels(torch.zeros(2, 1, 3, 3, dtype=torch.long), 3)
    mask = torch.ones(2, 1, 3, 3, dtype=torch.bool)
    mask[1] = False
    weights = region_balanced_weights(regions * mask)
    torch.testing.assert_close(weights[0], torch.full((1, 3, 3), 1 / 9))
    assert torch.equal(weights[1], torch.zeros(1, 3, 3))  # empty mask: all zero, no NaN


@pytest.mark.parametrize(
    ("radius", "rows", "cols"),
    [
        (0, slice(1, 2), slice(1, 2)),  # identity
        (1, slice(0, 3), slice(0, 3)),  # 3x3 square around (1, 1)
        (2, slice(0, 4), slice(0, 4)),  # 5x5 square, clipped at the border
    ],
)
def test_dilate_mask_band(radius: int, rows: slice, cols: slice) -> None:
    mask = torch.zeros(1, 1, 6, 6, dtype=torch.bool)
    mask[0, 0, 1, 1] = True
    expected = torch.zeros(1, 1, 6, 6, dtype=torch.bool)
    expected[0, 0, rows, cols] = True
    assert torch.equal(dilate_mask(mask, radius), expected)


def test_dilate_mask_negative_radius() -> None:
    with pytest.raises(ValueError, match="-1"):
        dilate_mask(torch.zeros(1, 1, 2, 2), -1)


@pytest.mark.parametrize(
    ("shapes", "expected"),
    [
        (((1, 4, 4, 4), (1, 6, 8, 8)), (8, 8)),
        (((1, 4, 8, 8), (1, 6, 4, 4)), (8, 8)),
        (((1, 4, 8, 4), (1, 6, 4, 8)), (8, 8)),
        (((1, 4, 5, 7), (1, 6, 5, 7)), (5, 7)),
    ],
)
def test_common_size(shapes: tuple[tuple[int, ...], ...], expected: tuple[int, int]) -> None:
    assert common_size(*(torch.zeros(s) for s in shapes)) == expected


def test_resize_features() -> None:
    x = torch.arange(16.0).view(1, 1, 4, 4)
    assert resize_features(x, (4, 4)) is x
    y = resize_features(torch.full((2, 3, 2, 2), 5.0), (4, 4))
    assert y.shape == (2, 3, 4, 4)
    torch.testing.assert_close(y, torch.full((2, 3, 4, 4), 5.0))


def test_resize_labels_and_teacher_prediction() -> None:
    labels = torch.tensor([[0.0, 1.0], [2.0, 1.0]]).view(1, 1, 2, 2)
    up = resize_labels(labels, (4, 4))
    assert up.dtype == torch.long
    expected = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 1, 1], [2, 2, 1, 1]]).view(1, 1, 4, 4)
    assert torch.equal(up, expected)
    assert torch.equal(resize_labels(up, (2, 2)), labels.long())
    logits = one_hot_labels(expected, 3) * 3.0  # argmax recovers the labels
    assert torch.equal(teacher_prediction(logits, (2, 2)), labels.long())


@pytest.mark.parametrize("size", [(28, 28), (7, 9), (56, 56), (13, 31)])
def test_teacher_prediction_equals_argmax_then_nearest_resize(size) -> None:
    # the definition (argmax at input resolution, then the label map nearest-resized), any ratio up or down
    logits = torch.randn(2, 9, 56, 56, generator=torch.Generator().manual_seed(0))
    expected = resize_labels(logits.argmax(dim=1, keepdim=True), size)
    assert torch.equal(teacher_prediction(logits, size), expected)


def test_one_hot_labels() -> None:
    onehot = one_hot_labels(LABELS_4X4.float(), 4, dtype=torch.float64)
    assert onehot.shape == (1, 4, 4, 4)
    assert onehot.dtype == torch.float64
    torch.testing.assert_close(onehot.sum(dim=(2, 3))[0], torch.tensor([11.0, 4.0, 1.0, 0.0], dtype=torch.float64))


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (torch.tensor([0, 3]), "0..2"),
        (torch.tensor([-1, 1]), "-1..1"),
        (torch.tensor([0.0, 0.5]), "integer"),
    ],
)
def test_check_labels_errors(labels: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_labels(labels.view(1, 1, 1, 2), 3)


def _filter_case() -> tuple[torch.Tensor, torch.Tensor]:
    """1x1x1x5 labels [0, 0, 0, 1, 0]; the teacher predicts [0, 1, 0, 1, 1] (wrong at columns 1 and 4)."""
    labels = torch.tensor([0, 0, 0, 1, 0]).view(1, 1, 1, 5)
    logits = one_hot_labels(torch.tensor([0, 1, 0, 1, 1]).view(1, 1, 1, 5), 2)
    return labels, logits


@pytest.mark.parametrize(
    ("band_radius", "filter_errors", "expected"),
    [
        (None, False, None),  # no filter at all
        (None, True, [1, 0, 1, 1, 0]),  # teacher right
        (0, False, [0, 0, 0, 1, 0]),  # organ only
        (1, False, [0, 0, 1, 1, 1]),  # organ and a band of 1
        (1, True, [0, 0, 1, 1, 0]),  # both
    ],
)
def test_distillation_filter(band_radius: int | None, filter_errors: bool, expected: list[int] | None) -> None:
    labels, logits = _filter_case()
    mask = distillation_filter(labels, logits, band_radius, filter_errors)
    if expected is None:
        assert mask is None
    else:
        assert mask.dtype == torch.bool and torch.equal(mask, torch.tensor(expected, dtype=torch.bool).view(1, 1, 1, 5))


def test_class_prototypes_hand() -> None:
    # one channel [1, 2, 3, 6] over 4 pixels; classes [0, 0, 1, 1], class 2 absent: means 1.5, 4.5 and 0
    features = torch.tensor([1.0, 2.0, 3.0, 6.0], dtype=torch.float64).view(1, 1, 1, 4)
    regions = one_hot_labels(torch.tensor([0, 0, 1, 1]).view(1, 1, 1, 4), 3)  # float32 masks
    prototypes = class_prototypes(features, regions)
    assert prototypes.shape == (1, 3, 1) and prototypes.dtype == torch.float64
    torch.testing.assert_close(prototypes[0, :, 0], torch.tensor([1.5, 4.5, 0.0], dtype=torch.float64))


def test_resize_to_common_size() -> None:
    student, teacher = torch.ones(2, 3, 4, 8), torch.ones(2, 5, 8, 4)
    resized_s, resized_t = resize_to_common_size(student, teacher)
    assert resized_s.shape == (2, 3, 8, 8) and resized_t.shape == (2, 5, 8, 8)


def test_resize_regions_hand() -> None:
    # down: area fractions of each 2x2 cell of LABELS_4X4; cell (1, 1) holds one pixel of each class and one of
    # background: [[1, 0], [0, 2]]
    fractions = resize_regions(one_hot_labels(LABELS_4X4, 3), (2, 2))
    expected = torch.tensor(
        [
            [[0.75, 0.75], [0.75, 0.5]],  # background
            [[0.25, 0.25], [0.25, 0.25]],  # class 1
            [[0.0, 0.0], [0.0, 0.25]],  # class 2
        ]
    ).unsqueeze(0)
    torch.testing.assert_close(fractions, expected)
    # up: nearest (each feature pixel takes the label of the input pixel it lies in)
    small = torch.tensor([[0, 1], [2, 1]]).view(1, 1, 2, 2)
    up = resize_regions(one_hot_labels(small, 3), (4, 4))
    torch.testing.assert_close(up, one_hot_labels(small.repeat_interleave(2, dim=-1).repeat_interleave(2, dim=-2), 3))
    # mixed: down in height (area over row pairs), up in width (nearest: each column twice)
    mixed = resize_regions(one_hot_labels(LABELS_4X4, 3), (2, 8))
    pairs = torch.tensor(
        [
            [[1.0, 0.5, 0.5, 1.0], [1.0, 0.5, 0.5, 0.5]],  # background
            [[0.0, 0.5, 0.5, 0.0], [0.0, 0.5, 0.5, 0.0]],  # class 1
            [[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.5]],  # class 2
        ]
    ).unsqueeze(0)
    torch.testing.assert_close(mixed, pairs.repeat_interleave(2, dim=-1))
    x = torch.rand(1, 2, 3, 3)
    assert resize_regions(x, (3, 3)) is x


def test_label_regions_hand_with_mask() -> None:
    # LABELS_4X4 with rows 0..2 kept, at 2x2: the top cells are unchanged (background 3/4, class 1 1/4); the bottom
    # cells keep row 2 only ([0, 1] and [1, 0]): background 1/4, class 1 1/4, class 2 (row 3) 0
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    mask[..., :3, :] = True
    regions = label_regions(LABELS_4X4, (2, 2), 3, torch.float64, mask)
    expected = torch.tensor(
        [[[0.75, 0.75], [0.25, 0.25]], [[0.25, 0.25], [0.25, 0.25]], [[0.0, 0.0], [0.0, 0.0]]], dtype=torch.float64
    ).unsqueeze(0)
    assert regions.dtype == torch.float64
    torch.testing.assert_close(regions, expected)


def test_label_regions_single_pixel_class_survives_deep_stride() -> None:
    # 64x64 labels, class 1 a large block, class 2 a single pixel at (37, 21); at 4x4 (stride 16) it lies in cell
    # (2, 1) with area fraction 1/256. Nearest resizing samples pixels (0, 16, 32, 48) and loses it.
    labels = torch.zeros(1, 1, 64, 64, dtype=torch.long)
    labels[..., 8:40, 30:60] = 1
    labels[..., 37, 21] = 2
    regions = label_regions(labels, (4, 4), 3, torch.float32)
    assert regions.shape == (1, 3, 4, 4)
    assert regions[0, 2].sum() > 0  # present
    torch.testing.assert_close(regions[0, 2, 2, 1], torch.tensor(1 / 256))
    torch.testing.assert_close(regions.sum(dim=1), torch.ones(1, 4, 4))  # fractions of each cell sum to 1
    features = torch.randn(1, 5, 4, 4, generator=torch.Generator().manual_seed(0))
    prototypes = class_prototypes(features, regions)
    torch.testing.assert_close(prototypes[0, 2], features[0, :, 2, 1])  # the feature of the cell that holds it


@pytest.mark.parametrize("stride", [1, 2, 4, 8, 16])
def test_filtered_regions_kept_fraction_does_not_depend_on_stride(stride: int) -> None:
    # 128x128 labels: a 16x16 organ at rows/cols 48..63; band radius 8 input pixels -> M is the 32x32 square
    # 40..71, i.e. 1024 / 16384 = 1/16 of the image at every stride. With the band counted in feature pixels the
    # kept fraction was 9/64 at stride 2 (8x8 organ + 8-pixel band = 24x24 of 64x64) and 1 at stride 16.
    labels = torch.zeros(1, 1, 128, 128, dtype=torch.long)
    labels[..., 48:64, 48:64] = 1
    logits = one_hot_labels(labels, 2)  # the teacher is right everywhere
    size = (128 // stride, 128 // stride)
    kept = filtered_regions(labels, logits, size, band_radius=8, filter_teacher_errors=True, dtype=torch.float64)
    assert kept.shape == (1, 2, *size)
    fraction = kept.sum() / (size[0] * size[1])
    torch.testing.assert_close(fraction, torch.tensor(1 / 16, dtype=torch.float64))
    torch.testing.assert_close(kept[0, 1].sum() / (size[0] * size[1]), torch.tensor(1 / 64, dtype=torch.float64))


def test_filtered_regions_without_filter_is_label_regions() -> None:
    torch.manual_seed(1)
    labels = torch.randint(0, 3, (2, 1, 8, 8))
    logits = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(
        filtered_regions(labels, logits, (4, 4), None, False, torch.float32),
        label_regions(labels, (4, 4), 3, torch.float32),
    )
