"""Feature filtering distillation (FFD)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.utils import LossReduction
from torch import Tensor

from mskd.losses.base import DistillationTermLoss, check_int, check_real
from mskd.losses.regions import (
    class_prototypes,
    distillation_filter,
    one_hot_labels,
    region_balanced_weights,
    resize_labels,
    resize_to_common_size,
)

__all__ = ["FeatureFilteringDistillationLoss", "channel_agnostic_map"]


def channel_agnostic_map(features: Tensor, eps: float = 1e-8) -> Tensor:
    """Channel-agnostic activation map with unit mean square per sample.

    As implemented, for features ``F`` of shape ``B, C, H, W``::

        w = softmax_c(GAP(ReLU F))                     # B, C
        A = sum_c w_c * ReLU(F)_c                      # B, 1, H, W
        A <- A * sqrt(H W) / (||A||_2 + eps)           # L2 norm over space, per sample

    Args:
        features: ``B, C, H, W`` feature map.
        eps: stabiliser of the normalisation.

    Returns:
        ``B, 1, H, W`` map ``A``; all zeros when ``ReLU F`` is zero.
    """
    act = F.relu(features)
    weights = torch.softmax(act.mean(dim=(2, 3)), dim=1)  # B, C
    amap = torch.einsum("bc,bchw->bhw", weights, act).unsqueeze(1)
    norm = torch.linalg.vector_norm(amap.flatten(1), dim=1).view(-1, 1, 1, 1)
    return amap * math.sqrt(amap.shape[-2] * amap.shape[-1]) / (norm + eps)


class FeatureFilteringDistillationLoss(DistillationTermLoss):
    """Feature filtering distillation: region-balanced MSE of channel-agnostic maps on a filtered set of pixels.

    This is the project's reconstruction of MSKD's FFD term (Zhao et al., Comput Biol Med 2023, 107284), whose
    full equations are not published; it is built from the attention transfer of EMKD (Qin et al., TMI 2021) and
    the region-aware weighting of IFVD (Wang et al., ECCV 2020). As implemented, with student/teacher features
    ``F^S`` (``B, C_s, h_s, w_s``) and ``F^T`` (``B, C_t, h_t, w_t``) resized to the common size ``H x W`` (the
    larger one, bilinear), labels ``y`` nearest-resized to ``H x W``, one-hot ``Y`` with ``K`` classes and the
    teacher prediction ``argmax z^T`` (at input resolution, nearest-resized to ``H x W``):

    1. ``A^S = channel_agnostic_map(F^S)``, ``A^T = channel_agnostic_map(F^T)`` (see :func:`channel_agnostic_map`).
    2. ``M_p = [argmax z^T_p = y_p] * [p in dilate(y > 0, band_radius)]``; the first factor only if
       ``filter_teacher_errors``; dilation by a ``(2r+1) x (2r+1)`` square; ``band_radius=0`` → organs only.
    3. ``w_p = 1 / (K_present * |R_k ∩ M|)`` for ``p in R_k ∩ M`` (``R_k`` ground-truth class regions,
       background included, ``K_present`` = number of classes with ``|R_k ∩ M| > 0``).
    4. ``L_b = sum_p M_p * w_p * (A^S_p - A^T_p)^2``; a sample with an empty ``M`` gives 0.
    5. Optional region-prototype term (``prototype_weight = λ_p > 0``): prototypes of the filtered class regions
       ``v_k = sum_p Y_kp M_p F_p / (sum_p Y_kp M_p + eps)`` compared as unit vectors,
       ``L_b += λ_p * mean_{k present in M} ||v^S_k / ||v^S_k|| - v^T_k / ||v^T_k|| ||^2`` (each value in ``[0, 4]``).

    Then ``reduction``. Channel counts and spatial sizes of student and teacher may differ, except with the
    prototype term, which compares feature vectors and so needs ``C_s == C_t``. Vectorised over classes and pixels
    (no Python loop).

    Args:
        band_radius: width ``r >= 0`` (pixels, at the common resolution) of the background band kept around organs.
        filter_teacher_errors: drop pixels the teacher misclassifies.
        prototype_weight: weight ``λ_p >= 0`` of the region-prototype term; ``0`` (default) leaves it out.
        eps: stabiliser of the map normalisation and of the prototypes (``> 0``).
        reduction: {``"none"``, ``"mean"``, ``"sum"``} reduction over the batch. Defaults to ``"mean"``.

    Raises:
        TypeError: When an argument has the wrong type.
        ValueError: When ``band_radius < 0``, ``prototype_weight < 0``, ``eps <= 0`` or ``reduction`` is invalid; at
            call time, when ``prototype_weight > 0`` and the channel counts of student and teacher differ.
    """

    def __init__(
        self,
        band_radius: int = 4,
        filter_teacher_errors: bool = True,
        prototype_weight: float = 0.0,
        eps: float = 1e-8,
        reduction: LossReduction | str = LossReduction.MEAN,
    ) -> None:
        super().__init__(reduction=reduction)
        self.band_radius = check_int("band_radius", band_radius, minimum=0)
        if not isinstance(filter_teacher_errors, bool):
            raise TypeError(f"filter_teacher_errors must be a bool, got {filter_teacher_errors!r}.")
        self.filter_teacher_errors = filter_teacher_errors
        self.prototype_weight = check_real("prototype_weight", prototype_weight, minimum=0.0)
        self.eps = check_real("eps", eps, minimum=0.0, strict=True)

    def per_sample(self, student: Tensor, teacher: Tensor, target: Tensor, teacher_logits: Tensor) -> Tensor:
        """Per-sample FFD values.

        Args:
            student: student features ``B, C_s, h_s, w_s``.
            teacher: teacher features ``B, C_t, h_t, w_t`` (already detached).
            target: ground-truth labels ``B, 1, H0, W0``.
            teacher_logits: teacher logits ``B, K, H0, W0``.

        Returns:
            ``(B,)`` per-sample values.

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
        labels = resize_labels(target, feat_s.shape[-2:])
        mask = distillation_filter(labels, teacher_logits, self.band_radius, self.filter_teacher_errors)
        regions = one_hot_labels(labels, teacher_logits.shape[1], dtype=map_s.dtype)
        weights = region_balanced_weights(regions, mask)  # zero outside M
        value = (weights * (map_s - map_t).pow(2)).sum(dim=(1, 2, 3))
        if self.prototype_weight == 0:
            return value
        kept = regions * mask.to(regions.dtype)  # R_k ∩ M (band_radius is an int here, so M is never None)
        present = (kept.sum(dim=(2, 3)) > 0).to(value.dtype)  # B, K
        unit_s = F.normalize(class_prototypes(feat_s, kept, self.eps), dim=-1, eps=self.eps)
        unit_t = F.normalize(class_prototypes(feat_t, kept, self.eps), dim=-1, eps=self.eps)
        per_class = (unit_s - unit_t).pow(2).sum(dim=-1)  # B, K
        return value + self.prototype_weight * (per_class * present).sum(dim=1) / present.sum(dim=1).clamp(min=1)
