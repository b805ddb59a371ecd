"""Feature filtering distillation (FFD)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.utils import LossReduction
from torch import Tensor

from mskd.losses.base import DistillationTermLoss, check_int, check_real
from mskd.losses.regions import (
    common_size,
    dilate_mask,
    one_hot_labels,
    region_balanced_weights,
    resize_features,
    resize_labels,
    teacher_prediction,
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
    4. ``L_b = sum_p M_p * w_p * (A^S_p - A^T_p)^2``; a sample with an empty ``M`` gives 0. Then ``reduction``.

    Channel counts and spatial sizes of student and teacher may differ.

    Args:
        band_radius: width ``r >= 0`` (pixels, at the common resolution) of the background band kept around organs.
        filter_teacher_errors: drop pixels the teacher misclassifies.
        eps: stabiliser of the map normalisation (``> 0``).
        reduction: {``"none"``, ``"mean"``, ``"sum"``} reduction over the batch. Defaults to ``"mean"``.

    Raises:
        TypeError: When an argument has the wrong type.
        ValueError: When ``band_radius < 0``, ``eps <= 0`` or ``reduction`` is invalid.
    """

    def __init__(
        self,
        band_radius: int = 4,
        filter_teacher_errors: bool = True,
        eps: float = 1e-8,
        reduction: LossReduction | str = LossReduction.MEAN,
    ) -> None:
        super().__init__(reduction=reduction)
        self.band_radius = check_int("band_radius", band_radius, minimum=0)
        if not isinstance(filter_teacher_errors, bool):
            raise TypeError(f"filter_teacher_errors must be a bool, got {filter_teacher_errors!r}.")
        self.filter_teacher_errors = filter_teacher_errors
        self.eps = check_real("eps", eps, minimum=0.0, strict=True)

    def filter_mask(self, labels: Tensor, teacher_logits: Tensor) -> Tensor:
        """The filter ``M`` at the resolution of ``labels``.

        Args:
            labels: ``B, 1, H, W`` labels at the common resolution.
            teacher_logits: ``B, K, H0, W0`` teacher logits at input resolution.

        Returns:
            ``B, 1, H, W`` bool mask.
        """
        mask = dilate_mask(labels > 0, self.band_radius)
        if self.filter_teacher_errors:
            mask = mask & (teacher_prediction(teacher_logits, labels.shape[-2:]) == labels)
        return mask

    def per_sample(self, student: Tensor, teacher: Tensor, target: Tensor, teacher_logits: Tensor) -> Tensor:
        """Per-sample FFD values.

        Args:
            student: student features ``B, C_s, h_s, w_s``.
            teacher: teacher features ``B, C_t, h_t, w_t`` (already detached).
            target: ground-truth labels ``B, 1, H0, W0``.
            teacher_logits: teacher logits ``B, K, H0, W0``.

        Returns:
            ``(B,)`` per-sample values.
        """
        size = common_size(student, teacher)
        map_s = channel_agnostic_map(resize_features(student, size), self.eps)
        map_t = channel_agnostic_map(resize_features(teacher, size), self.eps)
        labels = resize_labels(target, size)
        regions = one_hot_labels(labels, teacher_logits.shape[1], dtype=map_s.dtype)
        weights = region_balanced_weights(regions, self.filter_mask(labels, teacher_logits))  # zero outside M
        return (weights * (map_s - map_t).pow(2)).sum(dim=(1, 2, 3))
