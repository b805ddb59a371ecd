"""Region graph distillation (RGD)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.utils import LossReduction
from torch import Tensor

from mskd.losses.base import DistillationTermLoss, SampleValues, cells_per_axis, check_cells, check_int, check_real
from mskd.losses.regions import class_prototypes, label_regions, resize_to_common_size, spatial_axes

__all__ = ["RegionGraphDistillationLoss", "grid_subregions", "normalized_region_graph"]


def grid_subregions(regions: Tensor, cells: int | Sequence[int]) -> Tensor:
    """Split every region into the cells of a grid laid over the image (or volume), ``n_a`` cells along axis ``a``.

    Pixel (voxel) ``(i_1, ..., i_n)`` of a map of extents ``(S_1, ..., S_n)`` (``(H, W)`` or ``(D, H, W)``) lies in
    cell ``(floor(i_1 n_1 / S_1), ..., floor(i_n n_n / S_n))``; the node of region ``k`` in cell ``g`` is
    ``R_k ∩ cell_g``. An axis with fewer pixels than cells leaves the extra cells empty, so their nodes are empty
    (absent in the region graph): e.g. a volume of depth 1 split into 2 cells along the depth has the nodes of the
    slice it holds plus empty ones. Memory ``O(B K G P)``, ``G = n_1 ... n_n`` cells, ``P = S_1 ... S_n`` pixels.

    Args:
        regions: ``B, K, *spatial`` region masks (one-hot classes or area fractions; 2-D or 3-D).
        cells: cells per axis ``>= 1``: one integer for every axis (an ``s x s`` grid over an image, ``s x s x s``
            over a volume), or one per spatial axis in the order of the tensor's axes, ``(n_h, n_w)`` or
            ``(n_d, n_h, n_w)`` (``(n_h, n_w, n_d)`` for ``B, K, H, W, D``); one cell along every axis returns
            ``regions`` unchanged.

    Returns:
        ``B, K * G, *spatial`` masks, node ``k * G + g`` (class-major, cells row-major: the last axis fastest).

    Raises:
        TypeError: When ``cells`` is neither an integer nor a sequence of integers.
        ValueError: When a count is ``< 1`` or ``cells`` gives a number of counts other than the spatial dims of
            ``regions``.
    """
    counts = cells_per_axis("cells", check_cells("cells", cells), regions)
    if all(n == 1 for n in counts):
        return regions
    cell = torch.zeros((), dtype=torch.long, device=regions.device)
    for extent, n in zip(regions.shape[2:], counts, strict=True):
        index = torch.arange(extent, device=regions.device) * n // extent  # cell of each pixel along this axis
        cell = cell.unsqueeze(-1) * n + index  # row-major cell index over the axes so far
    dims = len(counts)
    grid = F.one_hot(cell, math.prod(counts)).permute(dims, *range(dims)).to(regions.dtype)  # G, *spatial
    return (regions.unsqueeze(2) * grid).flatten(1, 2)


def normalized_region_graph(prototypes: Tensor, present: Tensor, eps: float = 1e-8) -> Tensor:
    """Symmetrically normalised adjacency of the region graph.

    As implemented: ``E_ij = cos(v_i, v_j)``, ``E+ = (1 + E) / 2`` (cosines mapped to ``[0, 1]``: non-negative, so
    ``D^{-1/2}`` is defined, with gradient 1/2 everywhere, also where the cosine is negative) with the rows/columns
    of absent nodes set to 0, ``D = diag(rowsum(E+ + I))`` and ``Â = D^{-1/2} (E+ + I) D^{-1/2}`` (absent nodes are
    isolated: their row and column of ``Â`` are those of the identity). A zero prototype has cosine 0 (``E+ = 1/2``)
    with every node.

    Args:
        prototypes: ``B, K, C`` node features.
        present: ``B, K`` bool, whether each node's class is present.
        eps: lower bound of the prototype norms in the cosine.

    Returns:
        ``B, K, K`` adjacency ``Â``.
    """
    unit = prototypes / torch.linalg.vector_norm(prototypes, dim=-1, keepdim=True).clamp(min=eps)
    pair = (present.unsqueeze(2) & present.unsqueeze(1)).to(prototypes.dtype)
    edges = (1 + unit @ unit.transpose(1, 2)) / 2 * pair
    edges = edges + torch.eye(edges.shape[-1], dtype=edges.dtype, device=edges.device)
    inv_sqrt_deg = edges.sum(dim=-1).rsqrt()  # row sums >= 1
    return inv_sqrt_deg.unsqueeze(2) * edges * inv_sqrt_deg.unsqueeze(1)


class RegionGraphDistillationLoss(DistillationTermLoss):
    """Region graph distillation: match the multi-hop structure of class-prototype graphs.

    This is the project's reconstruction of MSKD's RGD term (Zhao et al., Comput Biol Med 2023, 107284), whose
    full equations are not published; it is built from the class-prototype graph of IFVD (Wang et al., ECCV 2020)
    and the region-affinity distillation of EMKD (Qin et al., TMI 2021). As implemented, with features
    (``B, C, *spatial``, images or volumes) resized to the common size (the larger extent along every axis, bilinear
    or trilinear) and soft class regions ``Y`` (``K`` classes: the area fraction of each class in each feature pixel,
    or voxel, one-hot labels at input resolution average-pooled to the common size, see
    :func:`mskd.losses.regions.label_regions`), separately for student and teacher:

    1. nodes ``v_n = sum_p Y_np F_p / (sum_p Y_np + eps)`` (``B, N, C``); ``present_n = sum_p Y_np > 0``; the
       regions ``Y_n`` are the ``K`` class regions (``subregions=1``), or each class region cut by a grid of
       ``G`` cells over the image or volume (``subregions=s``: ``s`` cells along every axis, ``G = s^2`` for an
       image, ``s^3`` for a volume; or one count per axis, ``G = n_h n_w`` or ``n_d n_h n_w``), ``N = K G`` nodes,
       see :func:`grid_subregions`;
    2. edges ``E_ij = cos(v_i, v_j)``; ``E+ = (1 + E) / 2`` (in ``[0, 1]``, gradient 1/2 also for negative
       cosines); rows/columns of absent nodes set to 0;
    3. ``Â = D^{-1/2} (E+ + I) D^{-1/2}``, ``D = diag(rowsum(E+ + I))``; ``Â_o = Â^o`` for ``o = 1..order``;
    4. ``L_b = sum_o sum_{i,j present} (Â^S_o,ij - Â^T_o,ij)^2 / max(N_present^2, 1)``.

    A sample counts only when at least two nodes are present (a single node has no edge: e.g. a background-only
    slice with ``subregions=1``); the others score 0 and are left out of the batch mean (see
    :class:`mskd.losses.base.SampleValues`). Then ``reduction``.

    Edges are cosines within each network, so student and teacher channel counts need not match. Vectorised over
    nodes (no Python loop over classes or cells); memory ``O(B N^2)`` for the graphs and ``O(B N P)`` for the
    node masks (``P`` pixels or voxels), ``N = K G``.

    In 3-D an integer ``subregions`` also cuts the depth: a grid finer than an axis leaves cells empty, and their
    nodes are absent (they play no part), so a volume of depth 1 gives the value of the image it holds. For a
    volume with few slices (or anisotropic voxels), give the slice axis its own count, e.g. ``(1, 2, 2)`` for
    ``B, C, D, H, W`` (``(2, 2, 1)`` for MONAI's ``B, C, H, W, D``).

    Args:
        order: highest matrix power ``o >= 1`` of the adjacency that is matched. Defaults to 2.
        subregions: grid cells that split each class region into sub-region nodes: one integer ``s >= 1`` for every
            spatial axis (``s x s`` cells over an image, ``s x s x s`` over a volume), or one count per axis,
            ``(n_h, n_w)`` for images or ``(n_d, n_h, n_w)`` for volumes, in the order of the tensors' axes (its
            length must match the inputs' spatial dims, checked at call time). Defaults to 1 (one node per class).
        eps: stabiliser of the prototype average and cosine (``> 0``).
        reduction: {``"none"``, ``"mean"``, ``"sum"``} reduction over the batch (over the samples that count).
            Defaults to ``"mean"``.

    Raises:
        TypeError: When an argument has the wrong type.
        ValueError: When ``order < 1``, a ``subregions`` count is ``< 1`` or a sequence of other than 2 or 3
            counts, ``eps <= 0`` or ``reduction`` is invalid; at call time, when ``subregions`` is a sequence whose
            length differs from the spatial dims of the inputs.
    """

    def __init__(
        self,
        order: int = 2,
        subregions: int | Sequence[int] = 1,
        eps: float = 1e-8,
        reduction: LossReduction | str = LossReduction.MEAN,
    ) -> None:
        super().__init__(reduction=reduction)
        self.order = check_int("order", order, minimum=1)
        self.subregions = check_cells("subregions", subregions)
        self.eps = check_real("eps", eps, minimum=0.0, strict=True)

    def per_sample(self, student: Tensor, teacher: Tensor, target: Tensor, teacher_logits: Tensor) -> SampleValues:
        """Per-sample RGD values and the samples with at least two nodes.

        Args:
            student: student features ``B, C_s, *spatial_s`` (2-D or 3-D).
            teacher: teacher features ``B, C_t, *spatial_t`` (already detached).
            target: ground-truth labels ``B, 1, *spatial0``.
            teacher_logits: teacher logits ``B, K, *spatial0``; gives ``K``.

        Returns:
            :class:`mskd.losses.base.SampleValues` with ``(B,)`` values and valid samples.

        Raises:
            ValueError: When ``subregions`` gives a number of per-axis counts other than the spatial dims.
        """
        cells = cells_per_axis("subregions", self.subregions, student)
        feat_s, feat_t = resize_to_common_size(student, teacher)
        regions = label_regions(target, feat_s.shape[2:], teacher_logits.shape[1], feat_s.dtype)
        regions = grid_subregions(regions, cells)
        present = regions.sum(dim=spatial_axes(regions)) > 0  # B, N
        graph_s = normalized_region_graph(class_prototypes(feat_s, regions, self.eps), present, self.eps)
        graph_t = normalized_region_graph(class_prototypes(feat_t, regions, self.eps), present, self.eps)
        pair = (present.unsqueeze(2) & present.unsqueeze(1)).to(graph_s.dtype)
        power_s, power_t = graph_s, graph_t
        total = ((power_s - power_t).pow(2) * pair).sum(dim=(1, 2))
        for _ in range(1, self.order):
            power_s, power_t = power_s @ graph_s, power_t @ graph_t
            total = total + ((power_s - power_t).pow(2) * pair).sum(dim=(1, 2))
        n_present = present.sum(dim=1)
        return SampleValues(total / n_present.to(total.dtype).pow(2).clamp(min=1), n_present >= 2)
