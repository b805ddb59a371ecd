"""Pair-wise similarity distillation, the pair-wise term of structured knowledge distillation (SKD)."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from monai.utils import LossReduction, look_up_option
from torch import Tensor

from mskd.losses.base import DistillationTermLoss, cells_per_axis, check_cells, check_real
from mskd.losses.regions import resize_to_common_size, spatial_dims

__all__ = ["PairwiseSimilarityDistillationLoss", "node_similarity"]

# adaptive pooling by kind and number of spatial dims
_POOLING = {
    "avg": {2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d},
    "max": {2: F.adaptive_max_pool2d, 3: F.adaptive_max_pool3d},
}


def node_similarity(features: Tensor, grid: Sequence[int], pooling: str = "avg", eps: float = 1e-8) -> Tensor:
    """Cosine similarity matrix of the nodes of a pooled feature map.

    Args:
        features: ``B, C, *spatial`` features (2-D or 3-D).
        grid: node grid, one count per spatial axis in the order of the tensor's axes: ``(n_h, n_w)`` for an image,
            ``(n_d, n_h, n_w)`` for a ``B, C, D, H, W`` volume; adaptive pooling gives ``N = n_h n_w``
            (``n_d n_h n_w``) nodes, row-major.
        pooling: ``"avg"`` or ``"max"`` adaptive pooling.
        eps: lower bound of the node norms.

    Returns:
        ``B, N, N`` matrix ``a_ij = cos(f_i, f_j)`` (0 where a node is zero).

    Raises:
        ValueError: When ``grid`` does not give one count per spatial axis of ``features``.
    """
    dims = spatial_dims(features, "features")
    grid = tuple(int(n) for n in grid)
    if len(grid) != dims:
        raise ValueError(
            f"grid {grid} must give one node count per spatial axis of features {tuple(features.shape)} ({dims})."
        )
    nodes = _POOLING[pooling][dims](features, grid).flatten(2)  # B, C, N
    unit = F.normalize(nodes, dim=1, eps=eps)
    return unit.transpose(1, 2) @ unit


class PairwiseSimilarityDistillationLoss(DistillationTermLoss):
    """Pair-wise similarity distillation: match the cosine similarity matrix of pooled feature nodes.

    Reproduces the pair-wise term of SKD (Liu et al., "Structured knowledge distillation for semantic
    segmentation", CVPR 2019). As implemented, with features (``B, C, *spatial``, images or volumes) resized to the
    common size (``H x W`` or ``D x H x W``, the larger extent along every axis, bilinear or trilinear) and pooled
    (adaptive average or max pooling) to a grid of ``n_h x n_w = min(s_h, H) x min(s_w, W)`` nodes (``n_d x n_h x
    n_w`` for a volume, ``n_d = min(s_d, D)``) ``f_i`` (``N`` = their product), with ``s_a`` the ``pool_size`` of
    axis ``a``, separately for student and teacher::

        a_ij = f_i . f_j / (||f_i|| ||f_j||)                         # B, N, N
        L_b  = (1 / N^2) * sum_ij (a^S_ij - a^T_ij)^2

    then ``reduction``. SKD max-pools patches and divides by a detached norm; here the pooling is an option
    (``"avg"`` default) and the cosine is differentiated in full. The pair-wise term is quadratic in the number of
    nodes by design: time and memory ``O(B N^2 C)`` with ``N <= prod_a s_a``, so the pooling bounds it whatever
    the resolution (``pool_size=8``: 64 nodes, 4096 pairs, on an image; 512 nodes, 262144 pairs, on a volume: give
    volumes a per-axis size such as ``(2, 8, 8)``, in the order of the tensors' axes, to keep it small). The cap by
    the feature size makes a volume of depth 1 pool to the nodes of the image it holds. Similarities are within each
    network, so channel counts may differ; labels and teacher logits are not used. Vectorised (no Python loop).

    Args:
        pool_size: nodes per axis of the pooling grid (each capped by the feature size along that axis): one integer
            ``>= 1`` for every spatial axis, or one per axis in the order of the tensors' axes, ``(s_h, s_w)`` for
            images or ``(s_d, s_h, s_w)`` for volumes (its length must match the inputs' spatial dims, checked at
            call time). Defaults to 8.
        pooling: {``"avg"``, ``"max"``} adaptive pooling that forms the nodes. Defaults to ``"avg"``.
        eps: lower bound of the node norms (``> 0``).
        reduction: {``"none"``, ``"mean"``, ``"sum"``} reduction over the batch. Defaults to ``"mean"``.

    Raises:
        TypeError: When an argument has the wrong type.
        ValueError: When a ``pool_size`` count is ``< 1`` or a sequence of other than 2 or 3 counts, ``pooling``
            is not ``"avg"`` or ``"max"``, ``eps <= 0`` or ``reduction`` is invalid; at call time, when
            ``pool_size`` is a sequence whose length differs from the spatial dims of the inputs.
    """

    def __init__(
        self,
        pool_size: int | Sequence[int] = 8,
        pooling: str = "avg",
        eps: float = 1e-8,
        reduction: LossReduction | str = LossReduction.MEAN,
    ) -> None:
        super().__init__(reduction=reduction)
        self.pool_size = check_cells("pool_size", pool_size)
        self.pooling = look_up_option(pooling, sorted(_POOLING))
        self.eps = check_real("eps", eps, minimum=0.0, strict=True)

    def per_sample(self, student: Tensor, teacher: Tensor, target: Tensor, teacher_logits: Tensor) -> Tensor:
        """Per-sample pair-wise values.

        Args:
            student: student features ``B, C_s, *spatial_s`` (2-D or 3-D).
            teacher: teacher features ``B, C_t, *spatial_t`` (already detached).
            target: ground-truth labels ``B, 1, *spatial0`` (unused).
            teacher_logits: teacher logits ``B, K, *spatial0`` (unused).

        Returns:
            ``(B,)`` per-sample values.

        Raises:
            ValueError: When ``pool_size`` gives a number of per-axis counts other than the spatial dims.
        """
        pool_size = cells_per_axis("pool_size", self.pool_size, student)
        feat_s, feat_t = resize_to_common_size(student, teacher)
        grid = tuple(min(cells, int(extent)) for cells, extent in zip(pool_size, feat_s.shape[2:], strict=True))
        sim_s = node_similarity(feat_s, grid, self.pooling, self.eps)
        sim_t = node_similarity(feat_t, grid, self.pooling, self.eps)
        return (sim_s - sim_t).pow(2).mean(dim=(1, 2))
