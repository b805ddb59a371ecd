"""Pixel-wise logit distillation (Hinton KD applied per pixel)."""

from __future__ import annotations

import warnings

import torch.nn.functional as F
from monai.utils import LossReduction
from torch import Tensor

from mskd.flags import as_flag
from mskd.losses.base import DistillationTermLoss, check_int, check_real
from mskd.losses.regions import (
    DEFAULT_MIN_REGION_FRACTION,
    distillation_filter,
    filtered_regions,
    region_balanced_weights,
)

__all__ = ["LogitDistillationLoss"]


class LogitDistillationLoss(DistillationTermLoss):
    r"""Pixel-wise knowledge distillation on the segmentation logits.

    This is the project's reconstruction of the logit term of MSKD (Zhao et al., Comput Biol Med 2023, 107284),
    whose full equations are not published; it follows the pixel-wise KD of SKD (Liu et al., CVPR 2019) and EMKD
    (Qin et al., TMI 2021). As implemented, for logits ``z^S, z^T`` of shape ``B, K, *spatial`` (``B, K, H, W``
    images or ``B, K, D, H, W`` volumes; ``p`` runs over the ``P`` pixels, or voxels, ``P = H W`` or ``D H W``)::

        kl_p = T^2 * sum_k softmax(z^T_p / T)_k * (log softmax(z^T_p / T)_k - log softmax(z^S_p / T)_k)
        L_b  = sum_p M_p kl_p / max(sum_p M_p, 1)                                          (class_balanced=False)
        L_b  = sum_p w_p * kl_p,  w_p = 1 / (K_present max(|R_k ∩ M|, n_min)) for p in R_k ∩ M   (class_balanced=True)

    where ``R_k`` is the ground-truth region of class ``k`` in sample ``b``, ``K_present`` the number of classes
    with ``|R_k ∩ M| > 0``, ``n_min = min_region_fraction * P`` a floor on the region size, so that a 1-pixel
    fragment does not get the per-pixel weight of a whole region (see
    :func:`mskd.losses.regions.region_balanced_weights`; the weights of a sample sum to 1 unless a region is below
    the floor) and ``M`` FFD's pixel filter (:func:`mskd.losses.regions.distillation_filter`): organs plus a band of
    ``filter_band_radius`` input pixels (voxels; a square band in 2-D, a cube in 3-D) around them, where the teacher
    is right (``filter_teacher_errors``). With neither filter ``M`` is every pixel and the plain variant is the mean
    over the ``P`` pixels. A sample whose ``M`` is
    empty gives 0, and every sample counts in the batch mean. The per-sample values ``L_b`` are then reduced over the
    batch.

    Args:
        temperature: softmax temperature ``T > 0``. Defaults to 4.0.
        class_balanced: average the pixel values with region-balanced weights instead of a plain mean.
        filter_band_radius: keep only organ pixels and a background band of this many input pixels (voxels in 3-D,
            along every axis; ``>= 0``) around them; ``None`` (default) keeps every pixel.
        filter_teacher_errors: keep only pixels the teacher classifies correctly. Defaults to ``False``.
        min_region_fraction: floor ``n_min / P`` on a region's size in the class balance, in ``[0, 1]``; ``0``
            turns it off. Defaults to 0.001. Used with ``class_balanced=True`` only (another value without it warns).
        reduction: {``"none"``, ``"mean"``, ``"sum"``} reduction over the batch. Defaults to ``"mean"``.

    Raises:
        TypeError: When ``temperature`` or ``min_region_fraction`` is not a real number, ``filter_band_radius`` not an
            integer (or ``None``), ``class_balanced`` or ``filter_teacher_errors`` not a bool.
        ValueError: When ``temperature <= 0`` (or not finite), ``filter_band_radius < 0``, ``min_region_fraction`` is
            outside ``[0, 1]`` or ``reduction`` is invalid.
    """

    def __init__(
        self,
        temperature: float = 4.0,
        class_balanced: bool = False,
        filter_band_radius: int | None = None,
        filter_teacher_errors: bool = False,
        min_region_fraction: float = DEFAULT_MIN_REGION_FRACTION,
        reduction: LossReduction | str = LossReduction.MEAN,
    ) -> None:
        super().__init__(reduction=reduction)
        self.temperature = check_real("temperature", temperature, minimum=0.0, strict=True)
        # switches as a config or a command line spells them (``--kd_class_balanced false``), read once here
        class_balanced = as_flag(class_balanced, "class_balanced")
        filter_teacher_errors = as_flag(filter_teacher_errors, "filter_teacher_errors")
        self.class_balanced = class_balanced
        self.filter_band_radius = (
            None if filter_band_radius is None else check_int("filter_band_radius", filter_band_radius, minimum=0)
        )
        self.filter_teacher_errors = filter_teacher_errors
        self.min_region_fraction = check_real("min_region_fraction", min_region_fraction, minimum=0.0, maximum=1.0)
        if not class_balanced and self.min_region_fraction != DEFAULT_MIN_REGION_FRACTION:
            warnings.warn(
                f"min_region_fraction={self.min_region_fraction} has no effect with class_balanced=False (it floors "
                "the region sizes of the class balance); set class_balanced=True or leave it at its default.",
                stacklevel=2,
            )

    def per_sample(self, student: Tensor, teacher: Tensor, target: Tensor, teacher_logits: Tensor) -> Tensor:
        """Per-sample KD values.

        Args:
            student: student logits ``B, K, *spatial`` (2-D or 3-D).
            teacher: teacher logits ``B, K, *spatial`` (already detached).
            target: ground-truth labels ``B, 1, *spatial``.
            teacher_logits: teacher logits ``B, K, *spatial``; gives ``K``.

        Returns:
            ``(B,)`` per-sample values.

        Raises:
            ValueError: When student and teacher logits differ in shape (class count or spatial size), or their
                class count / spatial size differ from ``teacher_logits`` / ``target``.
        """
        if student.shape != teacher.shape:
            raise ValueError(
                f"student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)} must have the same "
                "shape (same number of classes and spatial size)."
            )
        if student.shape[1] != teacher_logits.shape[1] or student.shape[2:] != target.shape[2:]:
            raise ValueError(
                f"logits {tuple(student.shape)} must match the classes of teacher_logits "
                f"{tuple(teacher_logits.shape)} and the spatial size of target {tuple(target.shape)}."
            )
        t = self.temperature
        log_p_s = F.log_softmax(student / t, dim=1)
        log_p_t = F.log_softmax(teacher / t, dim=1)
        kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1, keepdim=True) * (t * t)  # B, 1, *spatial
        per_sample = tuple(range(1, kl.ndim))  # everything but the batch
        if self.class_balanced:
            regions = filtered_regions(  # R_k ∩ M at input resolution (the one-hot labels times M)
                target, teacher_logits, kl.shape[2:], self.filter_band_radius, self.filter_teacher_errors, kl.dtype
            )
            weights = region_balanced_weights(regions, min_region_fraction=self.min_region_fraction)
            return (weights * kl).sum(dim=per_sample)
        mask = distillation_filter(target, teacher_logits, self.filter_band_radius, self.filter_teacher_errors)
        if mask is None:
            return kl.mean(dim=per_sample)
        kept = mask.to(kl.dtype)
        return (kept * kl).sum(dim=per_sample) / kept.sum(dim=per_sample).clamp(min=1)
