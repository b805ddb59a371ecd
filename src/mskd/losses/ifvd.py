"""Intra-class feature variation distillation (IFVD)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.utils import LossReduction
from torch import Tensor

from mskd.losses.base import DistillationTermLoss, check_real
from mskd.losses.regions import class_prototypes, label_regions, resize_to_common_size

__all__ = ["IntraClassFeatureVariationLoss", "intra_class_variation_map"]


def intra_class_variation_map(features: Tensor, regions: Tensor, eps: float = 1e-8) -> Tensor:
    """Cosine similarity of every pixel's feature to the centroid of its ground-truth class.

    As implemented, with class regions ``Y`` (one-hot, or area fractions of each class in each pixel)::

        v_k = sum_p Y_kp F_p / (sum_p Y_kp + eps)        # class centroids
        m_p = cos(F_p, sum_k Y_kp v_k)                   # one-hot: cos(F_p, v_{y_p})

    so a pixel shared between classes is compared with the area-weighted mix of their centroids.

    Args:
        features: ``B, C, *spatial`` features (2-D or 3-D).
        regions: ``B, K, *spatial`` class regions at the same resolution (one-hot or area fractions).
        eps: stabiliser of the centroid average and of the norms.

    Returns:
        ``B, *spatial`` map ``m_p`` (0 where a vector is zero).

    Raises:
        ValueError: When ``features`` and ``regions`` differ in their number of spatial dims.
    """
    centroids = class_prototypes(features, regions, eps)  # B, K, C
    per_pixel = torch.einsum("bk...,bkc->bc...", regions.to(features.dtype), centroids)  # v_{y_p}
    return (F.normalize(features, dim=1, eps=eps) * F.normalize(per_pixel, dim=1, eps=eps)).sum(dim=1)


class IntraClassFeatureVariationLoss(DistillationTermLoss):
    """Intra-class feature variation distillation: match each pixel's similarity to its class centroid.

    Reproduces IFVD (Wang et al., "Intra-class feature variation distillation for semantic segmentation",
    ECCV 2020). As implemented, with features (``B, C, *spatial``, images or volumes) resized to the common size (the
    larger extent along every axis, bilinear or trilinear; ``P`` pixels, or voxels) and soft class regions ``Y``
    (``K`` classes: the area fraction of each class in each feature pixel, one-hot labels at input resolution
    average-pooled to the common size, see :func:`mskd.losses.regions.label_regions`; one-hot where the labels are at
    the features' size), separately for student and teacher::

        v_k = sum_p Y_kp F_p / (sum_p Y_kp + eps)                   # class centroids, B, K, C
        m_p = cos(F_p, sum_k Y_kp v_k)                               # intra-class feature variation map, B, *spatial
        L_b = (1 / P) * sum_p (m^S_p - m^T_p)^2

    (with one-hot ``Y``, ``m_p = cos(F_p, v_{y_p})``), then ``reduction``. Every pixel has a label (background is a
    class), so every pixel counts, as IFVD's labelled pixels do, and every sample counts (a background-only slice
    still has a meaningful variation map). The maps are cosines within each network, so channel counts may differ;
    an absent class has no pixel and plays no part. Vectorised over classes and pixels (no Python loop).

    Args:
        eps: stabiliser of the centroid average and of the norms (``> 0``).
        reduction: {``"none"``, ``"mean"``, ``"sum"``} reduction over the batch. Defaults to ``"mean"``.

    Raises:
        TypeError: When ``eps`` is not a real number.
        ValueError: When ``eps <= 0`` or ``reduction`` is invalid.
    """

    def __init__(self, eps: float = 1e-8, reduction: LossReduction | str = LossReduction.MEAN) -> None:
        super().__init__(reduction=reduction)
        self.eps = check_real("eps", eps, minimum=0.0, strict=True)

    def per_sample(self, student: Tensor, teacher: Tensor, target: Tensor, teacher_logits: Tensor) -> Tensor:
        """Per-sample IFVD values.

        Args:
            student: student features ``B, C_s, *spatial_s`` (2-D or 3-D).
            teacher: teacher features ``B, C_t, *spatial_t`` (already detached).
            target: ground-truth labels ``B, 1, *spatial0``.
            teacher_logits: teacher logits ``B, K, *spatial0``; gives ``K``.

        Returns:
            ``(B,)`` per-sample values.
        """
        feat_s, feat_t = resize_to_common_size(student, teacher)
        regions = label_regions(target, feat_s.shape[2:], teacher_logits.shape[1], feat_s.dtype)
        map_s = intra_class_variation_map(feat_s, regions, self.eps)
        map_t = intra_class_variation_map(feat_t, regions, self.eps)
        return (map_s - map_t).pow(2).mean(dim=tuple(range(1, map_s.ndim)))
