"""Shared helpers of the distillation losses: resizing, one-hot labels, dilation band, region-balanced weights.

Every loss that needs one of these pieces of logic imports it from here, so that the resizing conventions and the
region balance are defined exactly once:

- feature maps are compared at a common size, the larger of the two (:func:`common_size`); the smaller map is
  resized with bilinear interpolation, ``align_corners=False`` (:func:`resize_features`);
- label maps and the teacher's prediction are resized with nearest-neighbour interpolation
  (:func:`resize_labels`, :func:`teacher_prediction`);
- :func:`region_balanced_weights` gives every ground-truth class region present in a sample the same total weight;
- :func:`distillation_filter` is the pixel filter of FFD (organ band, teacher correct), also usable on the logit term;
- :func:`class_prototypes` are the masked average features of class regions (RGD nodes, RAD, IFVD, FFD prototypes).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks import one_hot
from torch import Tensor

__all__ = [
    "label_regions",
    "check_labels",
    "class_prototypes",
    "common_size",
    "dilate_mask",
    "distillation_filter",
    "one_hot_labels",
    "region_balanced_weights",
    "resize_features",
    "resize_labels",
    "resize_to_common_size",
    "teacher_prediction",
]


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


def label_regions(target: Tensor, size: Sequence[int], num_classes: int, dtype: torch.dtype) -> Tensor:
    """One-hot class regions of ``target`` at a feature map's ``size``: ``one_hot_labels(resize_labels(...))``.

    Args:
        target: labels ``B, 1, H0, W0``.
        size: the feature map's ``(H, W)``.
        num_classes: ``K``.
        dtype: dtype of the result (the features' dtype).

    Returns:
        ``B, K, H, W`` one-hot regions.
    """
    return one_hot_labels(resize_labels(target, size), num_classes, dtype)


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


def region_balanced_weights(regions: Tensor, mask: Tensor | None = None) -> Tensor:
    """Per-pixel weights that give every present class region the same total weight.

    With ``R_k`` the region of class ``k`` (``regions[:, k] == 1``) restricted to ``mask`` (all pixels when
    ``mask`` is ``None``) and ``K_present`` the number of classes with ``|R_k ∩ M| > 0`` in the sample::

        w_p = 1 / (K_present * |R_k ∩ M|)   for p in R_k ∩ M,   0 elsewhere.

    The weights of a sample sum to 1 whenever ``M`` holds a labelled pixel, and are all 0 (no NaN) when ``M`` is
    empty. Vectorised over batch and classes.

    Args:
        regions: ``B, K, H, W`` one-hot ground truth ``Y``.
        mask: optional ``B, 1, H, W`` binary mask ``M``.

    Returns:
        ``B, 1, H, W`` weights with the dtype of ``regions`` (float).
    """
    if not regions.is_floating_point():
        regions = regions.float()
    if mask is not None:
        regions = regions * mask.to(regions.dtype)
    counts = regions.sum(dim=(2, 3))  # B, K: |R_k ∩ M|
    present = counts > 0
    k_present = present.sum(dim=1, keepdim=True).clamp(min=1)  # B, 1
    per_class = present.to(regions.dtype) / (k_present * counts.clamp(min=1))  # B, K
    return (regions * per_class[:, :, None, None]).sum(dim=1, keepdim=True)


def distillation_filter(
    labels: Tensor, teacher_logits: Tensor, band_radius: int | None, filter_teacher_errors: bool
) -> Tensor | None:
    """The pixel filter ``M`` of FFD: organ pixels plus a background band, where the teacher is right.

    As implemented::

        M_p = [p in dilate(y > 0, band_radius)] * [argmax z^T_p = y_p]

    the first factor only when ``band_radius`` is not ``None`` (``0`` keeps the organs only, dilation by a
    ``(2r+1) x (2r+1)`` square), the second only when ``filter_teacher_errors``.

    Args:
        labels: ``B, 1, H, W`` ground-truth labels at the resolution of the filter.
        teacher_logits: ``B, K, H0, W0`` teacher logits at input resolution (their argmax is nearest-resized).
        band_radius: band width ``r >= 0`` in pixels at the resolution of ``labels``, or ``None`` for no band filter.
        filter_teacher_errors: drop pixels the teacher misclassifies.

    Returns:
        ``B, 1, H, W`` bool mask, or ``None`` when neither filter is on (every pixel kept).
    """
    mask = None if band_radius is None else dilate_mask(labels > 0, band_radius)
    if filter_teacher_errors:
        correct = teacher_prediction(teacher_logits, labels.shape[-2:]) == labels
        mask = correct if mask is None else mask & correct
    return mask


def class_prototypes(features: Tensor, regions: Tensor, eps: float = 1e-8) -> Tensor:
    """Region prototypes (masked average features) ``v_k = sum_p Y_kp F_p / (sum_p Y_kp + eps)``.

    Args:
        features: ``B, C, H, W`` features.
        regions: ``B, N, H, W`` region masks ``Y`` at the same resolution (one-hot classes, or any ``N`` masks).
        eps: stabiliser of the division (an empty region gives a zero prototype).

    Returns:
        ``B, N, C`` prototypes, in the dtype of ``features``.
    """
    regions = regions.to(features.dtype)  # a float64 teacher may meet float32 masks
    counts = regions.sum(dim=(2, 3))  # B, N
    return torch.einsum("bkhw,bchw->bkc", regions, features) / (counts.unsqueeze(-1) + eps)
