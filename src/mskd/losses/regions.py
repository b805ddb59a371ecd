"""Shared helpers of the distillation losses: resizing, class regions, dilation band, region-balanced weights.

Every loss that needs one of these pieces of logic imports it from here, so that the resizing conventions and the
region balance are defined exactly once. Every helper takes ``B, C, *spatial`` tensors with two spatial dims
(``B, C, H, W``, an image) or three (``B, C, D, H, W``, a volume); the operations are picked once from the number of
spatial dims (:func:`spatial_dims`): bilinear or trilinear interpolation, 2-D or 3-D pooling, so 2-D and 3-D inputs
share one implementation, and a volume of depth 1 gives the values of the image it holds. A "pixel" below is a
voxel in 3-D.

- feature maps are compared at a common size, the larger of the two along every axis (:func:`common_size`); the
  smaller map is resized with (bi/tri)linear interpolation, ``align_corners=False`` (:func:`resize_features`);
- class regions at a feature map's size are the *area fractions* of each class (soft one-hot; volume fractions in
  3-D): the one-hot labels at input resolution, average-pooled to the feature size, or nearest-upsampled where the
  feature map is larger (:func:`resize_regions`, :func:`label_regions`); a class is present in a sample iff its
  fractions sum to more than 0, so a 1-pixel organ stays present at any stride;
- :func:`distillation_filter` is the pixel filter ``M`` of FFD (organ band, teacher correct), computed once at input
  resolution (band radius in input pixels, voxels in 3-D), also usable on the logit term; :func:`filtered_regions`
  are the kept class regions ``R_k ∩ M`` at a feature map's size (area fractions of ``one_hot(y)_k * M``);
- :func:`region_balanced_weights` gives every (soft) class region present in a sample the same total weight, with a
  floor on the region size;
- :func:`class_prototypes` are the weighted average features of (soft) class regions (RGD nodes, RAD, IFVD, FFD
  prototypes);
- :func:`resize_labels` and :func:`teacher_prediction` resize hard label maps with nearest-neighbour interpolation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks import one_hot
from torch import Tensor

__all__ = [
    "DEFAULT_MIN_REGION_FRACTION",
    "check_labels",
    "check_same_spatial_dims",
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
    "spatial_axes",
    "spatial_dims",
    "teacher_prediction",
]

DEFAULT_MIN_REGION_FRACTION = 1e-3
"""Default floor on a region's size in :func:`region_balanced_weights`, as a fraction of the map's pixels."""

# the operations of each number of spatial dims, picked in one place
_LINEAR_MODE = {2: "bilinear", 3: "trilinear"}
_ADAPTIVE_AVG_POOL = {2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}
_MAX_POOL = {2: F.max_pool2d, 3: F.max_pool3d}


def spatial_dims(value: Tensor, name: str = "input") -> int:
    """The number of spatial dims of a ``B, C, *spatial`` tensor: 2 (``B, C, H, W``) or 3 (``B, C, D, H, W``).

    Args:
        value: the tensor.
        name: argument name used in the error message.

    Returns:
        ``value.ndim - 2``.

    Raises:
        ValueError: When ``value`` is neither 4-D nor 5-D.
    """
    if value.ndim not in (4, 5):
        raise ValueError(
            f"{name} must be a 4-D tensor (B, C, H, W), got shape {tuple(value.shape)}; a volume is a 5-D tensor "
            "(B, C, D, H, W)."
        )
    return value.ndim - 2


def spatial_axes(value: Tensor) -> tuple[int, ...]:
    """The spatial axes ``(2, ..., ndim - 1)`` of a ``B, C, *spatial`` tensor (``(2, 3)`` for ``B, C, H, W``)."""
    return tuple(range(2, value.ndim))


def check_same_spatial_dims(name: str, value: Tensor, reference_name: str, reference: Tensor) -> int:
    """Check that two ``B, C, *spatial`` tensors have the same number of spatial dims (both 2-D or both 3-D).

    Args:
        name: name of ``value`` in the error message.
        value: the tensor to check.
        reference_name: name of ``reference`` in the error message.
        reference: the tensor it must agree with.

    Returns:
        The common number of spatial dims (2 or 3).

    Raises:
        ValueError: When either tensor is neither 4-D nor 5-D, or their numbers of spatial dims differ (the message
            names both shapes).
    """
    dims, expected = spatial_dims(value, name), spatial_dims(reference, reference_name)
    if dims != expected:
        raise ValueError(
            f"{name} {tuple(value.shape)} has {dims} spatial dims but {reference_name} {tuple(reference.shape)} has "
            f"{expected}; all inputs of one call must be 2-D (B, C, H, W) or all 3-D (B, C, D, H, W)."
        )
    return dims


def _size(size: Sequence[int], value: Tensor, name: str) -> tuple[int, ...]:
    """``size`` as a tuple of ints, one per spatial axis of ``value`` (the error names ``name`` and both)."""
    size = tuple(int(s) for s in size)
    if len(size) != spatial_dims(value, name):
        raise ValueError(
            f"size {size} must give one extent per spatial axis of {name} {tuple(value.shape)} ({value.ndim - 2} axes)."
        )
    return size


def check_labels(labels: Tensor, num_classes: int) -> None:
    """Check that a label map holds integer values in ``0..num_classes-1``.

    Args:
        labels: label map ``B, 1, *spatial`` of any dtype.
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


def common_size(*features: Tensor) -> tuple[int, ...]:
    """The common comparison size of feature maps: the larger extent along every spatial axis.

    Args:
        features: tensors ``B, C, *spatial``, all 2-D (``B, C, h, w``) or all 3-D (``B, C, d, h, w``).

    Returns:
        ``(max h, max w)``, or ``(max d, max h, max w)``; when one map is at least as large as the others along every
        axis, its size.

    Raises:
        ValueError: When the maps differ in their number of spatial dims.
    """
    for index, value in enumerate(features[1:], start=1):
        check_same_spatial_dims(f"features[{index}]", value, "features[0]", features[0])
    return tuple(max(int(f.shape[axis]) for f in features) for axis in spatial_axes(features[0]))


def resize_features(features: Tensor, size: Sequence[int]) -> Tensor:
    """Resize a feature map to ``size``: bilinear (2-D) or trilinear (3-D) interpolation, ``align_corners=False``.

    Args:
        features: feature map ``B, C, *spatial`` (2-D or 3-D).
        size: target size, one extent per spatial axis: ``(H, W)`` or ``(D, H, W)``.

    Returns:
        ``features`` unchanged if it already has that size, else the resized ``B, C, *size`` map.

    Raises:
        ValueError: When ``size`` does not give one extent per spatial axis.
    """
    size = _size(size, features, "features")
    if tuple(features.shape[2:]) == size:
        return features
    return F.interpolate(features, size=size, mode=_LINEAR_MODE[len(size)], align_corners=False)


def resize_to_common_size(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """Resize student and teacher feature maps to their :func:`common_size` (see :func:`resize_features`).

    Args:
        student: ``B, C_s, *spatial_s`` feature map.
        teacher: ``B, C_t, *spatial_t`` feature map, with as many spatial dims as ``student``.

    Returns:
        ``(student, teacher)``, both ``B, C, *size`` with ``size = common_size(student, teacher)``.

    Raises:
        ValueError: When the maps differ in their number of spatial dims.
    """
    check_same_spatial_dims("teacher", teacher, "student", student)
    size = common_size(student, teacher)
    return resize_features(student, size), resize_features(teacher, size)


def resize_labels(labels: Tensor, size: Sequence[int]) -> Tensor:
    """Resize a label map ``B, 1, *spatial`` (any dtype) to ``size`` with nearest-neighbour interpolation.

    Args:
        labels: label map ``B, 1, *spatial`` (2-D or 3-D) holding integer values.
        size: target size, one extent per spatial axis.

    Returns:
        ``B, 1, *size`` ``torch.long`` label map.

    Raises:
        ValueError: When ``size`` does not give one extent per spatial axis.
    """
    size = _size(size, labels, "labels")
    if tuple(labels.shape[2:]) == size:
        return labels.long()
    return F.interpolate(labels.float(), size=size, mode="nearest").long()


def teacher_prediction(teacher_logits: Tensor, size: Sequence[int]) -> Tensor:
    """The teacher's hard prediction ``argmax_k z^T`` at input resolution, nearest-resized to ``size``.

    Args:
        teacher_logits: ``B, K, *spatial`` teacher logits (2-D or 3-D).
        size: target size, one extent per spatial axis.

    Returns:
        ``B, 1, *size`` ``torch.long`` predicted labels.

    Raises:
        ValueError: When ``size`` does not give one extent per spatial axis.
    """
    size = _size(size, teacher_logits, "teacher_logits")
    logits = teacher_logits.detach()
    if tuple(logits.shape[2:]) != size:
        # nearest-neighbour resizing only selects pixels, so it commutes with the per-pixel argmax: selecting first
        # gives the same labels and takes the argmax over the (usually much smaller) feature grid
        logits = F.interpolate(logits, size=size, mode="nearest")
    return logits.argmax(dim=1, keepdim=True)


def one_hot_labels(labels: Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """One-hot encode a label map.

    Args:
        labels: ``B, 1, *spatial`` label map with values in ``0..num_classes-1`` (any dtype).
        num_classes: number of classes ``K``.
        dtype: dtype of the result.

    Returns:
        ``B, K, *spatial`` one-hot tensor ``Y`` with ``Y_kp = [y_p = k]``.
    """
    return one_hot(labels.long(), num_classes=num_classes, dtype=dtype, dim=1)


def resize_regions(regions: Tensor, size: Sequence[int]) -> Tensor:
    """Resize region masks (one-hot or soft) to ``size`` by area: each output pixel holds the fraction it covers.

    As implemented, per axis: where the output is smaller, adaptive average pooling (``F.adaptive_avg_pool2d``, or
    ``F.adaptive_avg_pool3d`` for a volume: the mean of the input pixels each output pixel covers); where it is
    larger, nearest-neighbour upsampling (each output pixel takes the value of the input pixel it lies in). The
    total mass ``sum_p R_p / (number of pixels)`` is kept exactly when the sizes divide, a non-zero region stays
    non-zero at any size, and one-hot masks give fractions that sum to 1 over the classes at every pixel. An axis
    of equal extent (e.g. the depth 1 of a single-slice volume) is left as it is.

    Args:
        regions: ``B, N, *spatial`` masks (any ``N``; float; 2-D or 3-D).
        size: target size, one extent per spatial axis: ``(H, W)`` or ``(D, H, W)``.

    Returns:
        ``regions`` unchanged if it already has that size, else the ``B, N, *size`` area fractions.

    Raises:
        ValueError: When ``size`` does not give one extent per spatial axis.
    """
    size = _size(size, regions, "regions")
    current = tuple(int(s) for s in regions.shape[2:])
    if current == size:
        return regions
    pooled = tuple(min(have, want) for have, want in zip(current, size, strict=True))
    if pooled != current:
        regions = _ADAPTIVE_AVG_POOL[len(size)](regions, pooled)
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
    the fraction of it that is class ``k`` (and kept; a volume fraction in 3-D). Class ``k`` is present in a sample
    iff ``sum_p R_k,p > 0``.

    Args:
        target: labels ``B, 1, *spatial0`` (any dtype; 2-D or 3-D).
        size: the feature map's size, one extent per spatial axis of ``target``.
        num_classes: ``K``.
        dtype: dtype of the result (the features' dtype).
        mask: optional ``B, 1, *spatial0`` binary mask ``M`` at the resolution of ``target``.

    Returns:
        ``B, K, *size`` area fractions in ``[0, 1]`` (one-hot at the labels' own size without ``mask``).

    Raises:
        ValueError: When ``mask`` and ``target`` differ in their number of spatial dims, or ``size`` does not give
            one extent per spatial axis.
    """
    regions = one_hot_labels(target, num_classes, dtype)
    if mask is not None:
        check_same_spatial_dims("mask", mask, "target", target)
        regions = regions * mask.to(dtype)
    return resize_regions(regions, size)


def dilate_mask(mask: Tensor, radius: int) -> Tensor:
    """Binary dilation by a square (2-D) or a cube (3-D) of side ``2r+1``: the same structuring element on every axis.

    The structuring element is a ``(2r+1) x (2r+1)`` square for ``B, 1, H, W`` masks and a ``(2r+1) x (2r+1) x
    (2r+1)`` cube for ``B, 1, D, H, W`` volumes: the result holds every pixel (voxel) within Chebyshev distance ``r``
    of a set one, ``r`` counted in pixels (voxels) along each axis whatever the voxel spacing. As implemented, the
    square/cube is the product of ``2r+1`` lines along the axes, so the dilation is one max-pool per axis
    (``max_pool2d``/``max_pool3d``, stride 1, kernel ``2r+1`` and padding ``r`` along that axis only): the same mask
    as one max-pool with the full square/cube, for ``(2r+1) n`` instead of ``(2r+1)^n`` comparisons per pixel. The
    padding sets nothing outside the map, so a volume of depth 1 is dilated exactly as the slice it holds.

    Args:
        mask: ``B, 1, *spatial`` binary mask (bool or 0/1 values; 2-D or 3-D).
        radius: ``r >= 0``; ``0`` returns the mask unchanged.

    Returns:
        ``B, 1, *spatial`` bool mask of pixels within Chebyshev distance ``r`` of a set pixel.

    Raises:
        ValueError: When ``radius < 0`` or ``mask`` is neither 4-D nor 5-D.
    """
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius!r}.")
    dims = spatial_dims(mask, "mask")
    mask = mask.bool()
    if radius == 0:
        return mask
    dilated = mask.float()
    for axis in range(dims):
        kernel = tuple(2 * radius + 1 if a == axis else 1 for a in range(dims))
        padding = tuple(radius if a == axis else 0 for a in range(dims))
        dilated = _MAX_POOL[dims](dilated, kernel_size=kernel, stride=1, padding=padding)
    return dilated > 0


def region_balanced_weights(regions: Tensor, *, min_region_fraction: float = DEFAULT_MIN_REGION_FRACTION) -> Tensor:
    """Per-pixel weights that give every present class region the same total weight, with a floor on region size.

    ``regions`` are the (kept) class regions ``R_k ∩ M``, one-hot or soft (area fractions, see
    :func:`filtered_regions`). As implemented, with ``|R_k ∩ M| = sum_p R_k,p`` (a sum of fractions over all the
    pixels, or voxels, of the map), ``K_present`` the number of classes with ``|R_k ∩ M| > 0`` in the sample and the
    floor ``n_min = min_region_fraction * P`` (``P`` the number of pixels: ``H W``, or ``D H W`` for a volume)::

        w_p = sum_k R_k,p / (K_present * max(|R_k ∩ M|, n_min))      (one-hot regions: the term of p's class)

    A region at least as large as the floor gets total weight ``1 / K_present``; a smaller one (a 1-pixel fragment)
    gets ``|R_k ∩ M| / (K_present n_min)``, so its per-pixel weight is at most ``1 / (K_present n_min)`` instead of
    ``1 / K_present``. The weights of a sample sum to at most 1, exactly 1 when no present region is below the
    floor, and are all 0 (no NaN) when no region is present. Vectorised over batch and classes.

    Args:
        regions: ``B, K, *spatial`` kept class regions (one-hot or area fractions, float; 2-D or 3-D).
        min_region_fraction: floor on a region's size as a fraction of the map's ``P`` pixels, in ``[0, 1]``;
            ``0`` turns the floor off. Defaults to ``DEFAULT_MIN_REGION_FRACTION`` (0.001).

    Returns:
        ``B, 1, *spatial`` weights with the dtype of ``regions`` (float).

    Raises:
        ValueError: When ``min_region_fraction`` is not in ``[0, 1]`` or ``regions`` is neither 4-D nor 5-D.
    """
    if not 0.0 <= min_region_fraction <= 1.0:
        raise ValueError(f"min_region_fraction must lie in [0, 1], got {min_region_fraction!r}.")
    dims = spatial_dims(regions, "regions")
    if not regions.is_floating_point():
        regions = regions.float()
    counts = regions.sum(dim=spatial_axes(regions))  # B, K: |R_k ∩ M|
    present = counts > 0
    k_present = present.sum(dim=1, keepdim=True).clamp(min=1)  # B, 1
    floor = math.prod(regions.shape[2:], start=min_region_fraction)  # min_region_fraction * H * W (* D first)
    # absent classes (count 0, possibly with a floor of 0) divide 0 by 1, never by 0
    sizes = torch.where(present, counts.clamp(min=floor), torch.ones_like(counts))
    per_class = present.to(regions.dtype) / (k_present * sizes)  # B, K
    return (regions * per_class.view(*per_class.shape, *(1,) * dims)).sum(dim=1, keepdim=True)


def distillation_filter(
    labels: Tensor, teacher_logits: Tensor, band_radius: int | None, filter_teacher_errors: bool
) -> Tensor | None:
    """FFD's pixel filter ``M`` at input resolution: organ pixels plus a background band, where the teacher is right.

    As implemented, at the resolution of ``labels`` and ``teacher_logits`` (the input)::

        M_p = [p in dilate(y > 0, band_radius)] * [argmax z^T_p = y_p]

    the first factor only when ``band_radius`` is not ``None`` (``0`` keeps the organs only; dilation by a
    ``(2r+1) x (2r+1)`` square, or a ``(2r+1)^3`` cube for a volume, see :func:`dilate_mask`, ``r`` in input pixels
    (voxels), so the band covers the same part of the image whatever the stride of the feature map it is later
    pooled to), the second only when ``filter_teacher_errors``.

    Args:
        labels: ``B, 1, *spatial`` ground-truth labels at input resolution (any dtype; 2-D or 3-D).
        teacher_logits: ``B, K, *spatial`` teacher logits at input resolution.
        band_radius: band width ``r >= 0`` in input pixels (voxels), or ``None`` for no band filter.
        filter_teacher_errors: drop pixels the teacher misclassifies.

    Returns:
        ``B, 1, *spatial`` bool mask, or ``None`` when neither filter is on (every pixel kept).

    Raises:
        ValueError: When ``labels`` and ``teacher_logits`` differ in their number of spatial dims.
    """
    check_same_spatial_dims("labels", labels, "teacher_logits", teacher_logits)
    labels = labels.long()
    mask = None if band_radius is None else dilate_mask(labels > 0, band_radius)
    if filter_teacher_errors:
        correct = teacher_prediction(teacher_logits, labels.shape[2:]) == labels
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
        target: ground-truth labels ``B, 1, *spatial0`` (2-D or 3-D).
        teacher_logits: teacher logits ``B, K, *spatial0``; give ``K``.
        size: the feature map's size, one extent per spatial axis.
        band_radius: band width ``r >= 0`` in input pixels (voxels), or ``None``.
        filter_teacher_errors: drop pixels the teacher misclassifies.
        dtype: dtype of the result.

    Returns:
        ``B, K, *size`` kept area fractions.

    Raises:
        ValueError: When ``target`` and ``teacher_logits`` differ in their number of spatial dims, or ``size`` does
            not give one extent per spatial axis.
    """
    mask = distillation_filter(target, teacher_logits, band_radius, filter_teacher_errors)
    return label_regions(target, size, teacher_logits.shape[1], dtype, mask)


def class_prototypes(features: Tensor, regions: Tensor, eps: float = 1e-8) -> Tensor:
    """Region prototypes (weighted average features) ``v_k = sum_p Y_kp F_p / (sum_p Y_kp + eps)``.

    Args:
        features: ``B, C, *spatial`` features (2-D or 3-D).
        regions: ``B, N, *spatial`` region masks or weights ``Y >= 0`` at the same resolution (one-hot classes, area
            fractions from :func:`label_regions`, or any ``N`` masks).
        eps: stabiliser of the division (an empty region gives a zero prototype).

    Returns:
        ``B, N, C`` prototypes, in the dtype of ``features``.

    Raises:
        ValueError: When ``features`` and ``regions`` differ in their number of spatial dims.
    """
    check_same_spatial_dims("regions", regions, "features", features)
    regions = regions.to(features.dtype)  # a float64 teacher may meet float32 masks
    counts = regions.sum(dim=spatial_axes(regions))  # B, N
    return torch.einsum("bk...,bc...->bkc", regions, features) / (counts.unsqueeze(-1) + eps)
