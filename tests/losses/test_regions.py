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
    one_hot_labels,
    region_balanced_weights,
    resize_features,
    resize_labels,
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
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    mask[..., :3, :] = True
    weights = region_balanced_weights(one_hot_labels(LABELS_4X4, 3), mask)
    expected = torch.tensor([1 / 16, 1 / 8, 0.0])[LABELS_4X4] * mask
    torch.testing.assert_close(weights, expected)
    torch.testing.assert_close(weights.sum(), torch.tensor(1.0))


@pytest.mark.parametrize("num_classes", [2, 3, 5])
@pytest.mark.parametrize("use_mask", [False, True])
def test_region_balanced_weights_sum_to_one(num_classes: int, use_mask: bool) -> None:
    torch.manual_seed(num_classes)
    labels = torch.randint(0, num_classes, (4, 1, 6, 7))
    mask = torch.rand(4, 1, 6, 7) > 0.5 if use_mask else None
    if mask is not None:
        mask[:, :, 0, 0] = True  # at least one pixel per sample
    weights = region_balanced_weights(one_hot_labels(labels, num_classes), mask)
    torch.testing.assert_close(weights.sum(dim=(1, 2, 3)), torch.ones(4))
    assert (weights >= 0).all()


def test_region_balanced_weights_background_only_and_empty_mask() -> None:
    regions = one_hot_labels(torch.zeros(2, 1, 3, 3, dtype=torch.long), 3)
    mask = torch.ones(2, 1, 3, 3, dtype=torch.bool)
    mask[1] = False
    weights = region_balanced_weights(regions, mask)
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
