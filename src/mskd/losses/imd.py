"""Importance map distillation (IMD), the attention-transfer term of EMKD."""

from __future__ import annotations

import torch.nn.functional as F
from monai.utils import LossReduction
from torch import Tensor

from mskd.losses.base import DistillationTermLoss, check_real
from mskd.losses.regions import resize_to_common_size

__all__ = ["ImportanceMapDistillationLoss", "importance_map"]


def importance_map(features: Tensor, power: float = 4.0, eps: float = 1e-8) -> Tensor:
    """Spatial importance map: the channel mean of ``|F|^p``, L2-normalised over space.

    As implemented, for features ``F`` of shape ``B, C, *spatial`` (``P`` pixels: ``H W``, or ``D H W`` voxels)::

        a = vec(mean_c |F_c|^p)            # B, P
        a <- a / max(||a||_2, eps)         # per sample

    Args:
        features: ``B, C, *spatial`` feature map (2-D or 3-D).
        power: exponent ``p >= 1``.
        eps: lower bound of the norm.

    Returns:
        ``B, P`` unit-norm maps (all zeros where ``F`` is zero).
    """
    magnitude = features.abs()
    # the map is normalised, so rescaling F by its per-sample maximum changes nothing but keeps |F|^p in range
    scale = magnitude.flatten(1).amax(dim=1).clamp(min=eps).detach().view(-1, *(1,) * (features.ndim - 1))
    amap = (magnitude / scale).pow(power).mean(dim=1).flatten(1)
    return F.normalize(amap, dim=1, eps=eps)


class ImportanceMapDistillationLoss(DistillationTermLoss):
    """Importance map distillation: squared distance between L2-normalised spatial attention maps.

    Reproduces EMKD's IMD term (Qin et al., "Efficient medical image segmentation based on knowledge distillation",
    IEEE TMI 2021), itself the attention transfer of Zagoruyko & Komodakis (ICLR 2017). As implemented, with
    student/teacher features ``F^S`` (``B, C_s, *spatial_s``) and ``F^T`` (``B, C_t, *spatial_t``), images or volumes,
    resized to the common size (``P`` pixels or voxels; the larger extent along every axis, bilinear or trilinear)::

        a^S = importance_map(F^S, p),  a^T = importance_map(F^T, p)          # B, P, unit norm
        L_b = sum_p (a^S_p - a^T_p)^2                                        # in [0, 2]

    then ``reduction``. EMKD raises ``F`` itself to the power ``p = 4``; ``|F|^p`` is the same for even ``p`` and
    keeps odd or fractional ``p`` well defined (``p >= 1``, so that the gradient at ``F = 0`` is finite). The maps
    are channel means, so channel counts may differ; labels and teacher logits are not used.

    Args:
        power: exponent ``p >= 1`` of the feature magnitudes. Defaults to 4.0 (EMKD).
        eps: lower bound of the norms (``> 0``).
        reduction: {``"none"``, ``"mean"``, ``"sum"``} reduction over the batch. Defaults to ``"mean"``.

    Raises:
        TypeError: When an argument has the wrong type.
        ValueError: When ``power < 1``, ``eps <= 0`` or ``reduction`` is invalid.
    """

    def __init__(
        self, power: float = 4.0, eps: float = 1e-8, reduction: LossReduction | str = LossReduction.MEAN
    ) -> None:
        super().__init__(reduction=reduction)
        self.power = check_real("power", power, minimum=1.0)
        self.eps = check_real("eps", eps, minimum=0.0, strict=True)

    def per_sample(self, student: Tensor, teacher: Tensor, target: Tensor, teacher_logits: Tensor) -> Tensor:
        """Per-sample IMD values.

        Args:
            student: student features ``B, C_s, *spatial_s`` (2-D or 3-D).
            teacher: teacher features ``B, C_t, *spatial_t`` (already detached).
            target: ground-truth labels ``B, 1, *spatial0`` (unused).
            teacher_logits: teacher logits ``B, K, *spatial0`` (unused).

        Returns:
            ``(B,)`` per-sample values.
        """
        feat_s, feat_t = resize_to_common_size(student, teacher)
        map_s = importance_map(feat_s, self.power, self.eps)
        map_t = importance_map(feat_t, self.power, self.eps)
        return (map_s - map_t).pow(2).sum(dim=1)
