"""Pair-wise similarity distillation, the pair-wise term of structured knowledge distillation (SKD)."""

from __future__ import annotations

import torch.nn.functional as F
from monai.utils import LossReduction, look_up_option
from torch import Tensor

from mskd.losses.base import DistillationTermLoss, check_int, check_real
from mskd.losses.regions import resize_to_common_size

__all__ = ["PairwiseSimilarityDistillationLoss", "node_similarity"]

_POOLING = {"avg": F.adaptive_avg_pool2d, "max": F.adaptive_max_pool2d}


def node_similarity(features: Tensor, grid: tuple[int, int], pooling: str = "avg", eps: float = 1e-8) -> Tensor:
    """Cosine similarity matrix of the nodes of a pooled feature map.

    Args:
        features: ``B, C, H, W`` features.
        grid: node grid ``(n_h, n_w)``; adaptive pooling gives ``N = n_h n_w`` nodes.
        pooling: ``"avg"`` or ``"max"`` adaptive pooling.
        eps: lower bound of the node norms.

    Returns:
        ``B, N, N`` matrix ``a_ij = cos(f_i, f_j)`` (0 where a node is zero).
    """
    nodes = _POOLING[pooling](features, grid).flatten(2)  # B, C, N
    unit = F.normalize(nodes, dim=1, eps=eps)
    return unit.transpose(1, 2) @ unit


class PairwiseSimilarityDistillationLoss(DistillationTermLoss):
    """Pair-wise similarity distillation: match the cosine similarity matrix of pooled feature nodes.

    Reproduces the pair-wise term of SKD (Liu et al., "Structured knowledge distillation for semantic
    segmentation", CVPR 2019). As implemented, with features resized to the common size ``H x W`` (the larger one,
    bilinear) and pooled (adaptive average or max pooling) to a grid of ``n_h x n_w = min(pool_size, H) x
    min(pool_size, W)`` nodes ``f_i`` (``N = n_h n_w``), separately for student and teacher::

        a_ij = f_i . f_j / (||f_i|| ||f_j||)                         # B, N, N
        L_b  = (1 / N^2) * sum_ij (a^S_ij - a^T_ij)^2

    then ``reduction``. SKD max-pools patches and divides by a detached norm; here the pooling is an option
    (``"avg"`` default) and the cosine is differentiated in full. The pair-wise term is quadratic in the number of
    nodes by design: time and memory ``O(B N^2 C)`` with ``N <= pool_size^2``, so the pooling bounds it whatever
    the resolution (``pool_size=8``: 64 nodes, 4096 pairs). Similarities are within each network, so channel counts
    may differ; labels and teacher logits are not used. Vectorised (no Python loop).

    Args:
        pool_size: nodes per side ``>= 1`` of the pooling grid (capped by the feature size). Defaults to 8.
        pooling: {``"avg"``, ``"max"``} adaptive pooling that forms the nodes. Defaults to ``"avg"``.
        eps: lower bound of the node norms (``> 0``).
        reduction: {``"none"``, ``"mean"``, ``"sum"``} reduction over the batch. Defaults to ``"mean"``.

    Raises:
        TypeError: When an argument has the wrong type.
        ValueError: When ``pool_size < 1``, ``pooling`` is not ``"avg"`` or ``"max"``, ``eps <= 0`` or
            ``reduction`` is invalid.
    """

    def __init__(
        self,
        pool_size: int = 8,
        pooling: str = "avg",
        eps: float = 1e-8,
        reduction: LossReduction | str = LossReduction.MEAN,
    ) -> None:
        super().__init__(reduction=reduction)
        self.pool_size = check_int("pool_size", pool_size, minimum=1)
        self.pooling = look_up_option(pooling, sorted(_POOLING))
        self.eps = check_real("eps", eps, minimum=0.0, strict=True)

    def per_sample(self, student: Tensor, teacher: Tensor, target: Tensor, teacher_logits: Tensor) -> Tensor:
        """Per-sample pair-wise values.

        Args:
            student: student features ``B, C_s, h_s, w_s``.
            teacher: teacher features ``B, C_t, h_t, w_t`` (already detached).
            target: ground-truth labels ``B, 1, H0, W0`` (unused).
            teacher_logits: teacher logits ``B, K, H0, W0`` (unused).

        Returns:
            ``(B,)`` per-sample values.
        """
        feat_s, feat_t = resize_to_common_size(student, teacher)
        grid = (min(self.pool_size, feat_s.shape[-2]), min(self.pool_size, feat_s.shape[-1]))
        sim_s = node_similarity(feat_s, grid, self.pooling, self.eps)
        sim_t = node_similarity(feat_t, grid, self.pooling, self.eps)
        return (sim_s - sim_t).pow(2).mean(dim=(1, 2))
