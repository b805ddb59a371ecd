"""Feature filtering distillation (FFD)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.utils import LossReduction
from torch import Tensor

from mskd.flags import as_flag
from mskd.losses.base import DistillationTermLoss, SampleValues, check_int, check_real
from mskd.losses.regions import (
    DEFAULT_MIN_REGION_FRACTION,
    class_prototypes,
    filtered_regions,
    region_balanced_weights,
    resize_to_common_size,
    spatial_axes,
)

__all__ = ["FeatureFilteringDistillationLoss", "channel_agnostic_map"]


def channel_agnostic_map(features: Tensor, eps: float = 1e-8) -> Tensor:
    """Channel-agnostic activation map with unit mean square per sample.

    As implemented, for features ``F`` of shape ``B, C, *spatial`` (``P`` pixels: ``H W``, or ``D H W`` voxels)::

        w = softmax_c(GAP(ReLU F))                     # B, C
        A = sum_c w_c * ReLU(F)_c                      # B, 1, *spatial
        A <- A * sqrt(P) / (||A||_2 + eps)             # L2 norm over space, per sample

    Args:
        features: ``B, C, *spatial`` feature map (2-D or 3-D).
        eps: stabiliser of the normalisation.

    Returns:
        ``B, 1, *spatial`` map ``A``; all zeros when ``ReLU F`` is zero.
    """
    act = F.relu(features)
    weights = torch.softmax(act.mean(dim=spatial_axes(act)), dim=1)  # B, C
    amap = torch.einsum("bc,bc...->b...", weights, act).unsqueeze(1)
    norm = torch.linalg.vector_norm(amap.flatten(1), dim=1).view(-1, *(1,) * (amap.ndim - 1))
    return amap * math.sqrt(math.prod(amap.shape[2:])) / (norm + eps)


class FeatureFilteringDistillationLoss(DistillationTermLoss):
    """Feature filtering distillation: region-balanced MSE of channel-agnostic maps on a filtered set of pixels.

    This is the project's reconstruction of MSKD's FFD term (Zhao et al., Comput Biol Med 2023, 107284), whose
    full equations are not published; it is built from the attention transfer of EMKD (Qin et al., TMI 2021) and
    the region-aware weighting of IFVD (Wang et al., ECCV 2020). As implemented, with student/teacher features
    ``F^S`` (``B, C_s, *spatial_s``) and ``F^T`` (``B, C_t, *spatial_t``), images (``h, w``) or volumes
    (``d, h, w``), resized to the common size (the larger extent along every axis, bilinear or trilinear), labels
    ``y`` (``B, 1, *spatial0``, ``K`` classes) and teacher logits ``z^T`` at input resolution (a pixel is a voxel
    in 3-D, ``P`` the number of pixels of the common size):

    1. ``A^S = channel_agnostic_map(F^S)``, ``A^T = channel_agnostic_map(F^T)`` (see :func:`channel_agnostic_map`).
    2. At input resolution, ``M_q = [argmax z^T_q = y_q] * [q in dilate(y > 0, band_radius)]``; the first factor
       only if ``filter_teacher_errors``; dilation by a ``(2r+1) x (2r+1)`` square in 2-D and a
       ``(2r+1) x (2r+1) x (2r+1)`` cube in 3-D (Chebyshev distance ``r``, see
       :func:`mskd.losses.regions.dilate_mask`), ``r`` in input pixels (voxels, along every axis whatever the voxel
       spacing), so the band covers the same part of the image at every stride; ``band_radius=0`` → organs only.
    3. Kept regions at the common size: ``R_k = area_pool(one_hot(y)_k * M)``, the fraction of each feature pixel
       that is class ``k`` and kept (:func:`mskd.losses.regions.filtered_regions`; a 1-pixel organ stays present at
       any stride).
    4. ``w_p = sum_k R_k,p / (K_present * max(|R_k|, n_min))`` with ``|R_k| = sum_p R_k,p``, ``K_present`` the number
       of classes (background included) with ``|R_k| > 0`` and ``n_min = min_region_fraction * P``
       (:func:`mskd.losses.regions.region_balanced_weights`; weights sum to 1 unless a region is below the floor).
    5. ``L_b = sum_p w_p * (A^S_p - A^T_p)^2``.
    6. Optional region-prototype term (``prototype_weight = λ_p > 0``): prototypes of the kept class regions
       ``v_k = sum_p R_k,p F_p / (sum_p R_k,p + eps)`` compared as unit vectors,
       ``L_b += λ_p * mean_{k: |R_k| > 0} ||v^S_k / ||v^S_k|| - v^T_k / ||v^T_k|| ||^2`` (each value in ``[0, 4]``).

    A sample counts only when ``M`` holds an organ (foreground) pixel (``sum_{k >= 1} |R_k| > 0``); the others (e.g.
    background-only slices) score 0 and are left out of the batch mean (see
    :class:`mskd.losses.base.SampleValues`). Then ``reduction``. Channel counts and spatial sizes of student and
    teacher may differ, except with the prototype term, which compares feature vectors and so needs
    ``C_s == C_t``. Vectorised over classes and pixels (no Python loop).

    Args:
        band_radius: width ``r >= 0``, in input pixels (voxels in 3-D, along every axis), of the background band
            kept around organs.
        filter_teacher_errors: drop pixels the teacher misclassifies.
        prototype_weight: weight ``λ_p >= 0`` of the region-prototype term; ``0`` (default) leaves it out.
        min_region_fraction: floor on a kept region's size in the region balance, as a fraction of the feature map
            (equivalently of the image), in ``[0, 1]``; ``0`` turns it off. Defaults to 0.001.
        eps: stabiliser of the map normalisation and of the prototypes (``> 0``).
        reduction: {``"none"``, ``"mean"``, ``"sum"``} reduction over the batch (over the samples that count).
            Defaults to ``"mean"``.

    Raises:
        TypeError: When an argument has the wrong type.
        ValueError: When ``band_radius < 0``, ``prototype_weight < 0``, ``min_region_fraction`` is outside
            ``[0, 1]``, ``eps <= 0`` or ``reduction`` is invalid; at call time, when ``prototype_weight > 0`` and the
            channel counts of student and teacher differ.
    """

    def __init__(
        self,
        band_radius: int = 4,
        filter_teacher_errors: bool = True,
        prototype_weight: float = 0.0,
        min_region_fraction: float = DEFAULT_MIN_REGION_FRACTION,
        eps: float = 1e-8,
        reduction: LossReduction | str = LossReduction.MEAN,
    ) -> None:
        super().__init__(reduction=reduction)
        self.band_radius = check_int("band_radius", band_radius, minimum=0)
        filter_teacher_errors = as_flag(filter_teacher_errors, "filter_teacher_errors")
        self.filter_teacher_errors = filter_teacher_errors
        self.prototype_weight = check_real("prototype_weight", prototype_weight, minimum=0.0)
        self.min_region_fraction = check_real("min_region_fraction", min_region_fraction, minimum=0.0, maximum=1.0)
        self.eps = check_real("eps", eps, minimum=0.0, strict=True)

    def per_sample(self, student: Tensor, teacher: Tensor, target: Tensor, teacher_logits: Tensor) -> SampleValues:
        """Per-sample FFD values and the samples whose kept set holds an organ pixel.

        Args:
            student: student features ``B, C_s, *spatial_s`` (2-D or 3-D).
            teacher: teacher features ``B, C_t, *spatial_t`` (already detached).
            target: ground-truth labels ``B, 1, *spatial0``.
            teacher_logits: teacher logits ``B, K, *spatial0``.

        Returns:
            :class:`mskd.losses.base.SampleValues` with ``(B,)`` values and valid samples.

        Raises:
            ValueError: When ``prototype_weight > 0`` and student and teacher channel counts differ.
        """
        if self.prototype_weight > 0 and student.shape[1] != teacher.shape[1]:
            raise ValueError(
                f"FFD's prototype term (prototype_weight={self.prototype_weight}) compares feature vectors and needs "
                f"equal channel counts, got student {tuple(student.shape)} and teacher {tuple(teacher.shape)}; "
                "set prototype_weight=0 or tap stages with matching channels."
            )
        feat_s, feat_t = resize_to_common_size(student, teacher)
        map_s = channel_agnostic_map(feat_s, self.eps)
        map_t = channel_agnostic_map(feat_t, self.eps)
        kept = filtered_regions(  # R_k ∩ M as area fractions, B, K, *spatial
            target, teacher_logits, feat_s.shape[2:], self.band_radius, self.filter_teacher_errors, map_s.dtype
        )
        counts = kept.sum(dim=spatial_axes(kept))  # B, K
        valid = counts[:, 1:].sum(dim=1) > 0  # M holds an organ pixel
        weights = region_balanced_weights(kept, min_region_fraction=self.min_region_fraction)  # zero outside M
        value = (weights * (map_s - map_t).pow(2)).sum(dim=tuple(range(1, weights.ndim)))
        if self.prototype_weight == 0:
            return SampleValues(value, valid)
        present = (counts > 0).to(value.dtype)  # B, K
        unit_s = F.normalize(class_prototypes(feat_s, kept, self.eps), dim=-1, eps=self.eps)
        unit_t = F.normalize(class_prototypes(feat_t, kept, self.eps), dim=-1, eps=self.eps)
        per_class = (unit_s - unit_t).pow(2).sum(dim=-1)  # B, K
        value = value + self.prototype_weight * (per_class * present).sum(dim=1) / present.sum(dim=1).clamp(min=1)
        return SampleValues(value, valid)
