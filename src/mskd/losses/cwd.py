"""Channel-wise distillation (CWD)."""

from __future__ import annotations

import torch.nn.functional as F
from monai.utils import LossReduction
from torch import Tensor

from mskd.losses.base import DistillationTermLoss, check_real
from mskd.losses.regions import resize_to_common_size

__all__ = ["ChannelWiseDistillationLoss"]


class ChannelWiseDistillationLoss(DistillationTermLoss):
    """Channel-wise distillation: KL divergence between per-channel spatial distributions.

    Reproduces CWD (Shu et al., "Channel-wise knowledge distillation for dense prediction", ICCV 2021). Each channel
    is turned into a distribution over the ``P`` positions (``H x W`` pixels, or ``D x H x W`` voxels for a volume)
    with a spatial softmax at temperature ``τ``, and the student imitates the teacher's distribution channel by
    channel. As implemented, with student/teacher maps ``y^S``, ``y^T`` (``B, C, *spatial``, 2-D or 3-D; logits
    ``B, K, *spatial`` or features) resized to the common size (the larger extent along every axis, bilinear or
    trilinear)::

        φ(y_c)_p = softmax_p(y_c / τ)                                          # over the P positions
        L_b = τ^2 / C * sum_c sum_p φ(y^T_c)_p (log φ(y^T_c)_p - log φ(y^S_c)_p)

    then ``reduction`` (``"mean"`` gives CWD's normalisation by ``B C``). Channel ``c`` of the student is compared
    with channel ``c`` of the teacher, so the channel counts must be equal: use it on the logits (as CWD does for
    segmentation) or on features of equal width. It is parameter-free by design (CWD aligns features of different
    widths with a learned 1x1 convolution, which this loss does not hold). Labels and teacher logits are not used.
    Vectorised over channels (no Python loop).

    Args:
        temperature: softmax temperature ``τ > 0``. Defaults to 4.0 (CWD).
        reduction: {``"none"``, ``"mean"``, ``"sum"``} reduction over the batch. Defaults to ``"mean"``.

    Raises:
        TypeError: When ``temperature`` is not a real number.
        ValueError: When ``temperature <= 0`` (or not finite) or ``reduction`` is invalid; at call time, when the
            student and teacher channel counts differ.
    """

    def __init__(self, temperature: float = 4.0, reduction: LossReduction | str = LossReduction.MEAN) -> None:
        super().__init__(reduction=reduction)
        self.temperature = check_real("temperature", temperature, minimum=0.0, strict=True)

    def per_sample(self, student: Tensor, teacher: Tensor, target: Tensor, teacher_logits: Tensor) -> Tensor:
        """Per-sample CWD values.

        Args:
            student: student logits or features ``B, C, *spatial_s`` (2-D or 3-D).
            teacher: teacher logits or features ``B, C, *spatial_t`` (already detached).
            target: ground-truth labels ``B, 1, *spatial0`` (unused).
            teacher_logits: teacher logits ``B, K, *spatial0`` (unused).

        Returns:
            ``(B,)`` per-sample values.

        Raises:
            ValueError: When student and teacher channel counts differ.
        """
        if student.shape[1] != teacher.shape[1]:
            raise ValueError(
                f"channel-wise distillation compares channel c of the student with channel c of the teacher and "
                f"needs equal channel counts, got student {tuple(student.shape)} and teacher {tuple(teacher.shape)}; "
                "apply it to the logits or to stages of equal width."
            )
        feat_s, feat_t = resize_to_common_size(student, teacher)
        t = self.temperature
        log_p_s = F.log_softmax(feat_s.flatten(2) / t, dim=2)  # B, C, P
        log_p_t = F.log_softmax(feat_t.flatten(2) / t, dim=2)
        kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=2)  # B, C
        return kl.mean(dim=1) * (t * t)
