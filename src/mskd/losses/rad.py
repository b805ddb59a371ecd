"""Region affinity distillation (RAD), the region term of EMKD."""

from __future__ import annotations

import torch.nn.functional as F
from monai.utils import LossReduction
from torch import Tensor

from mskd.losses.base import DistillationTermLoss, SampleValues, check_real
from mskd.losses.regions import class_prototypes, label_regions, resize_to_common_size, spatial_axes

__all__ = ["RegionAffinityDistillationLoss", "background_affinity"]


def background_affinity(features: Tensor, regions: Tensor, eps: float = 1e-8) -> Tensor:
    """Cosine between the background prototype and each foreground class prototype.

    Args:
        features: ``B, C, *spatial`` features (2-D or 3-D).
        regions: ``B, K, *spatial`` class regions at the same resolution, one-hot or area fractions (class 0 is the
            background).
        eps: stabiliser of the prototype average and of the norms.

    Returns:
        ``B, K-1`` values ``cos(v_0, v_k)``, ``k = 1..K-1`` (0 where a prototype is zero, e.g. an absent class).
    """
    unit = F.normalize(class_prototypes(features, regions, eps), dim=-1, eps=eps)  # B, K, C
    return (unit[:, 1:] * unit[:, :1]).sum(dim=-1)


class RegionAffinityDistillationLoss(DistillationTermLoss):
    """Region affinity distillation: match the background-to-organ prototype affinities.

    Reproduces EMKD's RAD term (Qin et al., "Efficient medical image segmentation based on knowledge distillation",
    IEEE TMI 2021), extended from EMKD's single foreground class to ``K - 1`` classes. As implemented, with features
    (``B, C, *spatial``, images or volumes) resized to the common size (the larger extent along every axis, bilinear
    or trilinear) and soft class regions ``Y`` (``K`` classes: the area fraction of each class in each feature pixel,
    or voxel, see :func:`mskd.losses.regions.label_regions`), separately for student and teacher::

        v_k = sum_p Y_kp F_p / (sum_p Y_kp + eps)                       # class prototypes, B, K, C
        a_k = cos(v_0, v_k),  k = 1..K-1                                 # background-to-class affinity
        L_b = sum_{k in P} (a^S_k - a^T_k)^2 / max(|P|, 1)

    with ``P`` the foreground classes present in the sample (``sum_p Y_kp > 0``) when the background is present too.
    A sample without such a pair (background only, or no background) has nothing to distil: it scores 0 and is left
    out of the batch mean (see :class:`mskd.losses.base.SampleValues`). Then ``reduction``. EMKD adds 1 to the
    foreground pixel count instead of ``eps``, which
    biases small regions; here every prototype is an exact mean. Affinities are cosines within each network, so
    channel counts may differ. Vectorised over classes (no Python loop); absent classes are masked out.

    Args:
        eps: stabiliser of the prototype average and of the norms (``> 0``).
        reduction: {``"none"``, ``"mean"``, ``"sum"``} reduction over the batch (over the samples that count).
            Defaults to ``"mean"``.

    Raises:
        TypeError: When ``eps`` is not a real number.
        ValueError: When ``eps <= 0`` or ``reduction`` is invalid.
    """

    def __init__(self, eps: float = 1e-8, reduction: LossReduction | str = LossReduction.MEAN) -> None:
        super().__init__(reduction=reduction)
        self.eps = check_real("eps", eps, minimum=0.0, strict=True)

    def per_sample(self, student: Tensor, teacher: Tensor, target: Tensor, teacher_logits: Tensor) -> SampleValues:
        """Per-sample RAD values and the samples with a background/organ pair.

        Args:
            student: student features ``B, C_s, *spatial_s`` (2-D or 3-D).
            teacher: teacher features ``B, C_t, *spatial_t`` (already detached).
            target: ground-truth labels ``B, 1, *spatial0``.
            teacher_logits: teacher logits ``B, K, *spatial0``; gives ``K``.

        Returns:
            :class:`mskd.losses.base.SampleValues` with ``(B,)`` values and valid samples.
        """
        feat_s, feat_t = resize_to_common_size(student, teacher)
        regions = label_regions(target, feat_s.shape[2:], teacher_logits.shape[1], feat_s.dtype)
        present = regions.sum(dim=spatial_axes(regions)) > 0  # B, K
        pairs = (present[:, 1:] & present[:, :1]).to(feat_s.dtype)  # B, K-1: background and class k both present
        diff = background_affinity(feat_s, regions, self.eps) - background_affinity(feat_t, regions, self.eps)
        n_pairs = pairs.sum(dim=1)
        return SampleValues((diff.pow(2) * pairs).sum(dim=1) / n_pairs.clamp(min=1), n_pairs > 0)
