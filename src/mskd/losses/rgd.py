"""Region graph distillation (RGD)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.utils import LossReduction
from torch import Tensor

from mskd.losses.base import DistillationTermLoss, SampleValues, check_int, check_real
from mskd.losses.regions import class_prototypes, label_regions, resize_to_common_size

__all__ = ["RegionGraphDistillationLoss", "grid_subregions", "normalized_region_graph"]


def grid_subregions(regions: Tensor, cells: int) -> Tensor:
    """Split every region into the cells of a ``cells x cells`` grid laid over the image.

    Pixel ``(i, j)`` of an ``H x W`` map lies in cell ``(floor(i * cells / H), floor(j * cells / W))``; the node of
    region ``k`` in cell ``g`` is ``R_k ∩ cell_g``. Memory ``O(B K cells^2 H W)``.

    Args:
        regions: ``B, K, H, W`` region masks (one-hot classes or area fractions).
        cells: grid cells per side, ``>= 1``; ``1`` returns ``regions`` unchanged.

    Returns:
        ``B, K * cells^2, H, W`` masks, node ``k * cells^2 + g`` (class-major, cells row-major).
    """
    if cells == 1:
        return regions
    height, width = regions.shape[-2:]
    rows = torch.arange(height, device=regions.device) * cells // height
    cols = torch.arange(width, device=regions.device) * cells // width
    cell = rows.unsqueeze(1) * cells + cols.unsqueeze(0)  # H, W
    grid = F.one_hot(cell, cells * cells).permute(2, 0, 1).to(regions.dtype)  # cells^2, H, W
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
    and the region-affinity distillation of EMKD (Qin et al., TMI 2021). As implemented, with features resized
    to the common size ``H x W`` (the larger one, bilinear) and soft class regions ``Y`` (``K`` classes: the area
    fraction of each class in each feature pixel, one-hot labels at input resolution average-pooled to ``H x W``,
    see :func:`mskd.losses.regions.label_regions`), separately for student and teacher:

    1. nodes ``v_n = sum_p Y_np F_p / (sum_p Y_np + eps)`` (``B, N, C``); ``present_n = sum_p Y_np > 0``; the
       regions ``Y_n`` are the ``K`` class regions (``subregions=1``), or each class region cut by an
       ``s x s`` grid over the image (``subregions=s``, ``N = K s^2`` nodes, see :func:`grid_subregions`);
    2. edges ``E_ij = cos(v_i, v_j)``; ``E+ = (1 + E) / 2`` (in ``[0, 1]``, gradient 1/2 also for negative
       cosines); rows/columns of absent nodes set to 0;
    3. ``Â = D^{-1/2} (E+ + I) D^{-1/2}``, ``D = diag(rowsum(E+ + I))``; ``Â_o = Â^o`` for ``o = 1..order``;
    4. ``L_b = sum_o sum_{i,j present} (Â^S_o,ij - Â^T_o,ij)^2 / max(N_present^2, 1)``.

    A sample counts only when at least two nodes are present (a single node has no edge: e.g. a background-only
    slice with ``subregions=1``); the others score 0 and are left out of the batch mean (see
    :class:`mskd.losses.base.SampleValues`). Then ``reduction``.

    Edges are cosines within each network, so student and teacher channel counts need not match. Vectorised over
    nodes (no Python loop over classes or cells); memory ``O(B N^2)`` for the graphs and ``O(B N H W)`` for the
    node masks, ``N = K subregions^2``.

    Args:
        order: highest matrix power ``o >= 1`` of the adjacency that is matched. Defaults to 2.
        subregions: grid cells per side ``s >= 1`` that split each class region into sub-region nodes. Defaults
            to 1 (one node per class).
        eps: stabiliser of the prototype average and cosine (``> 0``).
        reduction: {``"none"``, ``"mean"``, ``"sum"``} reduction over the batch (over the samples that count).
            Defaults to ``"mean"``.

    Raises:
        TypeError: When an argument has the wrong type.
        ValueError: When ``order < 1``, ``subregions < 1``, ``eps <= 0`` or ``reduction`` is invalid.
    """

    def __init__(
        self,
        order: int = 2,
        subregions: int = 1,
        eps: float = 1e-8,
        reduction: LossReduction | str = LossReduction.MEAN,
    ) -> None:
        super().__init__(reduction=reduction)
        self.order = check_int("order", order, minimum=1)
        self.subregions = check_int("subregions", subregions, minimum=1)
        self.eps = check_real("eps", eps, minimum=0.0, strict=True)

    def per_sample(self, student: Tensor, teacher: Tensor, target: Tensor, teacher_logits: Tensor) -> SampleValues:
        """Per-sample RGD values and the samples with at least two nodes.

        Args:
            student: student features ``B, C_s, h_s, w_s``.
            teacher: teacher features ``B, C_t, h_t, w_t`` (already detached).
            target: ground-truth labels ``B, 1, H0, W0``.
            teacher_logits: teacher logits ``B, K, H0, W0``; gives ``K``.

        Returns:
            :class:`mskd.losses.base.SampleValues` with ``(B,)`` values and valid samples.
        """
        feat_s, feat_t = resize_to_common_size(student, teacher)
        regions = label_regions(target, feat_s.shape[-2:], teacher_logits.shape[1], feat_s.dtype)
        regions = grid_subregions(regions, self.subregions)
        present = regions.sum(dim=(2, 3)) > 0  # B, N
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
