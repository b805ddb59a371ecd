"""Shared helpers of the distillation losses: resizing, class regions, dilation band, region-balanced weights.

Every loss that needs one of these pieces of logic imports it from here, so that the resizing conventions and the
region balance are defined exactly once:

- feature maps are compared at a common size, the larger of the two (:func:`common_size`); the smaller map is
  resized with bilinear interpolation, ``align_corners=False`` (:func:`resize_features`);
- class regions at a feature map's size are the *area fractions* of each class (soft one-hot): the one-hot labels
  at input resolution, average-pooled to the feature size, or nearest-upsampled where the feature map is larger
  (:func:`resize_regions`, :func:`label_regions`); a class is present in a sample iff its fractions sum to more
  than 0, so a 1-pixel organ stays present at any stride;
- :func:`distillation_filter` is the pixel filter ``M`` of FFD (organ band, teacher correct), computed once at input
  resolution (band radius in input pixels), also usable on the logit term; :func:`filtered_regions` are the kept
  class regions ``R_k ∩ M`` at a feature map's size (area fractions of ``one_hot(y)_k * M``);
- :func:`region_balanced_weights` gives every (soft) class region present in a sample the same total weight, with a
  floor on the region size;
- :func:`class_prototypes` are the weighted average features of (soft) class regions (RGD nodes, RAD, IFVD, FFD
  prototypes);
- :func:`resize_labels` and :func:`teacher_prediction` resize hard label maps with nearest-neighbour interpolation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks import one_hot
from torch import Tensor

__all__ = [
    "DEFAULT_MIN_REGION_FRACTION",
    "check_labels",
    "class_prototypes",
    "common_size",
    "dilate_mask",
    "distillation_filter",
    "filtered_regions",
    "label_regions",
    "one_hot_labels",
    "region_balanced_weights",
    "resize_features",
    "resize_labels",
    "resize_regions",
    "resize_to_common_size",
    "teacher_prediction",
]

DEFAULT_MIN_REGION_FRACTION = 1e-3
"""Default floor on a region's size in :func:`region_balanced_weights`, as a fraction of the map's pixels."""


def check_labels(labels: Tensor, num_classes: int) -> None:
    """Check that a label map holds integer values in ``0..num_classes-1``.

    Args:
        labels: label map ``B, 1, H, W`` of any dtype.
        num_classes: number of classes ``K``.

    Raises:
        ValueError: When a value is negative, ``>= num_classes`` or not an integer.
    """
    if labels.numel() == 0:
        return
    if labels.is_floating_point() and not torch.equal(labels, labels.round()):
        raise ValueError("target must hold integer class indices, got non-integer values.")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise ValueError(f"target values must lie in 0..{num_classes - 1} (K={num_classes}), got range {low}..{high}.")


def common_size(*features: Tensor) -> tuple[int, int]:
    """The common comparison size of feature maps: the larger height and the larger width.

    Args:
        features: tensors ``B, C, h, w``.

    Returns:
        ``(max h, max w)``; when one map is at least as large as the other in both dimensions, its size.
    """
    return max(int(f.shape[-2]) for f in features), max(int(f.shape[-1]) for f in features)


def resize_features(features: Tensor, size: Sequence[int]) -> Tensor:
    """Resize a feature map ``B, C, h, w`` to ``size`` with bilinear interpolation (``align_corners=False``).

    Args:
        features: feature map ``B, C, h, w``.
        size: target ``(H, W)``.

    Returns:
        ``features`` unchanged if it already has that size, else the resized ``B, C, H, W`` map.
    """
    size = (int(size[0]), int(size[1]))
    if tuple(features.shape[-2:]) == size:
        return features
    return F.interpolate(features, size=size, mode="bilinear", align_corners=False)


def resize_to_common_size(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """Resize student and teacher feature maps to their :func:`common_size` (bilinear, see :func:`resize_features`).

    Args:
        student: ``B, C_s, h_s, w_s`` feature map.
        teacher: ``B, C_t, h_t, w_t`` feature map.

    Returns:
        ``(student, teacher)``, both ``B, C, H, W`` with ``(H, W) = common_size(student, teacher)``.
    """
    size = common_size(student, teacher)
    return resize_features(student, size), resize_features(teacher, size)


def resize_labels(labels: Tensor, size: Sequence[int]) -> Tensor:
    """Resize a label map ``B, 1, h, w`` (any dtype) to ``size`` with nearest-neighbour interpolation.

    Args:
        labels: label map ``B, 1, h, w`` holding integer values.
        size: target ``(H, W)``.

    Returns:
        ``B, 1, H, W`` ``torch.long`` label map.
    """
    size = (int(size[0]), int(size[1]))
    if tuple(labels.shape[-2:]) == size:
        return labels.long()
    return F.interpolate(labels.float(), size=size, mode="nearest").long()


def teacher_prediction(teacher_logits: Tensor, size: Sequence[int]) -> Tensor:
    """The teacher's hard prediction ``argmax_k z^T`` at input resolution, nearest-resized to ``size``.

    Args:
        teacher_logits: ``B, K, H, W`` teacher logits.
        size: target ``(h, w)``.

    Returns:
        ``B, 1, h, w`` ``torch.long`` predicted labels.
    """
    size = (int(size[0]), int(size[1]))
    logits = teacher_logits.detach()
    if tuple(logits.shape[-2:]) != size:
        # nearest-neighbour resizing only selects pixels, so it commutes with the per-pixel argmax: selecting first
        # gives the same labels and takes the argmax over the (usually much smaller) feature grid
        logits = F.interpolate(logits, size=size, mode="nearest")
    return logits.argmax(dim=1, keepdim=True)


def one_hot_labels(labels: Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """One-hot encode a label map.

    Args:
        labels: ``B, 1, H, W`` label map with values in ``0..num_classes-1`` (any dtype).
        num_classes: number of classes ``K``.
        dtype: dtype of the result.

    Returns:
        ``B, K, H, W`` one-hot tensor ``Y`` with ``Y_kp = [y_p = k]``.
    """
    return one_hot(labels.long(), num_classes=num_classes, dtype=dtype, dim=1)


def resize_regions(regions: Tensor, size: Sequence[int]) -> Tensor:
    """Resize region masks (one-hot or soft) to ``size`` by area: each output pixel holds the fraction it covers.

    As implemented, per dimension: where the output is smaller, adaptive average pooling (``F.adaptive_avg_pool2d``:
    the mean of the input pixels each output pixel covers); where it is larger, nearest-neighbour upsampling (each
    output pixel takes the value of the input pixel it lies in). The total mass ``sum_p R_p / (H W)`` is kept exactly
    when the sizes divide, a non-zero region stays non-zero at any size, and one-hot masks give fractions that sum
    to 1 over the classes at every pixel.

    Args:
        regions: ``B, N, H0, W0`` masks (any ``N``; float).
        size: target ``(H, W)``.

    Returns:
        ``regions`` unchanged if it already has that size, else the ``B, N, H, W`` area fractions.
    """
    size = (int(size[0]), int(size[1]))
    height, width = int(regions.shape[-2]), int(regions.shape[-1])
    if (height, width) == size:
        return regions
    pooled = (min(height, size[0]), min(width, size[1]))
    if pooled != (height, width):
        regions = F.adaptive_avg_pool2d(regions, pooled)
    if pooled != size:
        regions = F.interpolate(regions, size=size, mode="nearest")
    return regions


def label_regions(
    target: Tensor, size: Sequence[int], num_classes: int, dtype: torch.dtype, mask: Tensor | None = None
) -> Tensor:
    """Soft class regions of ``target`` at a feature map's ``size``: the area fraction of each class in each pixel.

    As implemented::

        R_k = resize_regions(one_hot(y)_k * M)                # one-hot at input resolution, then area-pooled

    with ``M`` the optional ``mask`` at input resolution (all pixels when ``None``), so ``R_k`` at a feature pixel is
    the fraction of it that is class ``k`` (and kept). Class ``k`` is present in a sample iff ``sum_p R_k,p > 0``.

    Args:
        target: labels ``B, 1, H0, W0`` (any dtype).
        size: the feature map's ``(H, W)``.
        num_classes: ``K``.
        dtype: dtype of the result (the features' dtype).
        mask: optional ``B, 1, H0, W0`` binary mask ``M`` at the resolution of ``target``.

    Returns:
        ``B, K, H, W`` area fractions in ``[0, 1]`` (one-hot at the labels' own size without ``mask``).
    """
    regions = one_hot_labels(target, num_classes, dtype)
    if mask is not None:
        regions = regions * mask.to(dtype)
    return resize_regions(regions, size)


def dilate_mask(mask: Tensor, radius: int) -> Tensor:
    """Binary dilation by a ``(2r+1) x (2r+1)`` square (``max_pool2d`` with stride 1, padding ``r``).

    Args:
        mask: ``B, 1, H, W`` binary mask (bool or 0/1 values).
        radius: ``r >= 0``; ``0`` returns the mask unchanged.

    Returns:
        ``B, 1, H, W`` bool mask of pixels within Chebyshev distance ``r`` of a set pixel.

    Raises:
        ValueError: When ``radius < 0``.
    """
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius!r}.")
    mask = mask.bool()
    if radius == 0:
        return mask
    return F.max_pool2d(mask.float(), kernel_size=2 * radius + 1, stride=1, padding=radius) > 0


def region_balanced_weights(regions: Tensor, *, min_region_fraction: float = DEFAULT_MIN_REGION_FRACTION) -> Tensor:
    """Per-pixel weights that give every present class region the same total weight, with a floor on region size.

    ``regions`` are the (kept) class regions ``R_k ∩ M``, one-hot or soft (area fractions, see
    :func:`filtered_regions`). As implemented, with ``|R_k ∩ M| = sum_p R_k,p`` (a sum of fractions), ``K_present``
    the number of classes with ``|R_k ∩ M| > 0`` in the sample and the floor ``n_min = min_region_fraction * H W``::

        w_p = sum_k R_k,p / (K_present * max(|R_k ∩ M|, n_min))      (one-hot regions: the term of p's class)

    A region at least as large as the floor gets total weight ``1 / K_present``; a smaller one (a 1-pixel fragment)
    gets ``|R_k ∩ M| / (K_present n_min)``, so its per-pixel weight is at most ``1 / (K_present n_min)`` instead of
    ``1 / K_present``. The weights of a sample sum to at most 1, exactly 1 when no present region is below the
    floor, and are all 0 (no NaN) when no region is present. Vectorised over batch and classes.

    Args:
        regions: ``B, K, H, W`` kept class regions (one-hot or area fractions, float).
        min_region_fraction: floor on a region's size as a fraction of the map's ``H W`` pixels, in ``[0, 1]``;
            ``0`` turns the floor off. Defaults to ``DEFAULT_MIN_REGION_FRACTION`` (0.001).

    Returns:
        ``B, 1, H, W`` weights with the dtype of ``regions`` (float).

    Raises:
        ValueError: When ``min_region_fraction`` is not in ``[0, 1]``.
    """
    if not 0.0 <= min_region_fraction <= 1.0:
        raise ValueError(f"min_region_fraction must lie in [0, 1], got {min_region_fraction!r}.")
    if not regions.is_floating_point():
        regions = regions.float()
    counts = regions.sum(dim=(2, 3))  # B, K: |R_k ∩ M|
    present = counts > 0
    k_present = present.sum(dim=1, keepdim=True).clamp(min=1)  # B, 1
    floor = min_region_fraction * regions.shape[-2] * regions.shape[-1]
    # absent classes (count 0, possibly with a floor of 0) divide 0 by 1, never by 0
    sizes = torch.where(present, counts.clamp(min=floor), torch.ones_like(counts))
    per_class = present.to(regions.dtype) / (k_present * sizes)  # B, K
    return (regions * per_class[:, :, None, None]).sum(dim=1, keepdim=True)


def distillation_filter(
    labels: Tensor, teacher_logits: Tensor, band_radius: int | None, filter_teacher_errors: bool
) -> Tensor | None:
    """FFD's pixel filter ``M`` at input resolution: organ pixels plus a background band, where the teacher is right.

    As implemented, at the resolution of ``labels`` and ``teacher_logits`` (the input)::

        M_p = [p in dilate(y > 0, band_radius)] * [argmax z^T_p = y_p]

    the first factor only when ``band_radius`` is not ``None`` (``0`` keeps the organs only, dilation by a
    ``(2r+1) x (2r+1)`` square, ``r`` in input pixels, so the band covers the same part of the image whatever the
    stride of the feature map it is later pooled to), the second only when ``filter_teacher_errors``.

    Args:
        labels: ``B, 1, H, W`` ground-truth labels at input resolution (any dtype).
        teacher_logits: ``B, K, H, W`` teacher logits at input resolution.
        band_radius: band width ``r >= 0`` in input pixels, or ``None`` for no band filter.
        filter_teacher_errors: drop pixels the teacher misclassifies.

    Returns:
        ``B, 1, H, W`` bool mask, or ``None`` when neither filter is on (every pixel kept).
    """
    labels = labels.long()
    mask = None if band_radius is None else dilate_mask(labels > 0, band_radius)
    if filter_teacher_errors:
        correct = teacher_prediction(teacher_logits, labels.shape[-2:]) == labels
        mask = correct if mask is None else mask & correct
    return mask


def filtered_regions(
    target: Tensor,
    teacher_logits: Tensor,
    size: Sequence[int],
    band_radius: int | None,
    filter_teacher_errors: bool,
    dtype: torch.dtype,
) -> Tensor:
    """The class regions kept by :func:`distillation_filter`, as area fractions at ``size``: ``R_k ∩ M``.

    As implemented: ``M = distillation_filter(y, z^T, band_radius, filter_teacher_errors)`` once at input resolution,
    then ``label_regions(y, size, K, dtype, M)``, i.e. ``resize_regions(one_hot(y)_k * M)``: the fraction of each
    pixel of the ``size`` map that is class ``k`` and kept. With neither filter, :func:`label_regions`.

    Args:
        target: ground-truth labels ``B, 1, H0, W0``.
        teacher_logits: teacher logits ``B, K, H0, W0``; give ``K``.
        size: the feature map's ``(H, W)``.
        band_radius: band width ``r >= 0`` in input pixels, or ``None``.
        filter_teacher_errors: drop pixels the teacher misclassifies.
        dtype: dtype of the result.

    Returns:
        ``B, K, H, W`` kept area fractions.
    """
    mask = distillation_filter(target, teacher_logits, band_radius, filter_teacher_errors)
    return label_regions(target, size, teacher_logits.shape[1], dtype, mask)


def class_prototypes(features: Tensor, regions: Tensor, eps: float = 1e-8) -> Tensor:
    """Region prototypes (weighted average features) ``v_k = sum_p Y_kp F_p / (sum_p Y_kp + eps)``.

    Args:
        features: ``B, C, H, W`` features.
        regions: ``B, N, H, W`` region masks or weights ``Y >= 0`` at the same resolution (one-hot classes, area
            fractions from :func:`label_regions`, or any ``N`` masks).
        eps: stabiliser of the division (an empty region gives a zero prototype).

    Returns:
        ``B, N, C`` prototypes, in the dtype of ``features``.
    """
    regions = regions.to(features.dtype)  # a float64 teacher may meet float32 masks
    counts = regions.sum(dim=(2, 3))  # B, N
    return torch.einsum("bkhw,bchw->bkc", regions, features) / (counts.unsqueeze(-1) + eps)
