"""Region graph distillation (RGD)."""

from __future__ import annotations

import torch
from monai.utils import LossReduction
from torch import Tensor

from mskd.losses.base import DistillationTermLoss, check_int, check_real
from mskd.losses.regions import common_size, one_hot_labels, resize_features, resize_labels

__all__ = ["RegionGraphDistillationLoss", "class_prototypes", "normalized_region_graph"]


def class_prototypes(features: Tensor, regions: Tensor, eps: float = 1e-8) -> Tensor:
    """Class prototypes (masked average features) ``v_k = sum_p Y_kp F_p / (sum_p Y_kp + eps)``.

    Args:
        features: ``B, C, H, W`` features.
        regions: ``B, K, H, W`` one-hot ground truth ``Y`` at the same resolution.
        eps: stabiliser of the division (an absent class gives a zero prototype).

    Returns:
        ``B, K, C`` prototypes.
    """
    counts = regions.sum(dim=(2, 3))  # B, K
    return torch.einsum("bkhw,bchw->bkc", regions, features) / (counts.unsqueeze(-1) + eps)


def normalized_region_graph(prototypes: Tensor, present: Tensor, eps: float = 1e-8) -> Tensor:
    """Symmetrically normalised adjacency of the region graph.

    As implemented: ``E_ij = cos(v_i, v_j)``, ``E+ = clamp(E, min=0)`` with the rows/columns of absent nodes set to
    0, ``D = diag(rowsum(E+ + I))`` and ``Â = D^{-1/2} (E+ + I) D^{-1/2}`` (absent nodes are isolated: their row and
    column of ``Â`` are those of the identity).

    Args:
        prototypes: ``B, K, C`` node features.
        present: ``B, K`` bool, whether each node's class is present.
        eps: lower bound of the prototype norms in the cosine.

    Returns:
        ``B, K, K`` adjacency ``Â``.
    """
    unit = prototypes / torch.linalg.vector_norm(prototypes, dim=-1, keepdim=True).clamp(min=eps)
    pair = (present.unsqueeze(2) & present.unsqueeze(1)).to(prototypes.dtype)
    edges = (unit @ unit.transpose(1, 2)).clamp(min=0) * pair
    edges = edges + torch.eye(edges.shape[-1], dtype=edges.dtype, device=edges.device)
    inv_sqrt_deg = edges.sum(dim=-1).rsqrt()  # row sums >= 1
    return inv_sqrt_deg.unsqueeze(2) * edges * inv_sqrt_deg.unsqueeze(1)


class RegionGraphDistillationLoss(DistillationTermLoss):
    """Region graph distillation: match the multi-hop structure of class-prototype graphs.

    This is the project's reconstruction of MSKD's RGD term (Zhao et al., Comput Biol Med 2023, 107284), whose
    full equations are not published; it is built from the class-prototype graph of IFVD (Wang et al., ECCV 2020)
    and the region-affinity distillation of EMKD (Qin et al., TMI 2021). As implemented, with features resized
    to the common size ``H x W`` (the larger one, bilinear) and one-hot labels ``Y`` (``K`` classes,
    nearest-resized to ``H x W``), separately for student and teacher:

    1. nodes ``v_k = sum_p Y_kp F_p / (sum_p Y_kp + eps)`` (``B, K, C``); ``present_k = sum_p Y_kp > 0``;
    2. edges ``E_ij = cos(v_i, v_j)``; ``E+ = clamp(E, min=0)``; rows/columns of absent nodes set to 0;
    3. ``Â = D^{-1/2} (E+ + I) D^{-1/2}``, ``D = diag(rowsum(E+ + I))``; ``Â_o = Â^o`` for ``o = 1..order``;
    4. ``L_b = sum_o sum_{i,j present} (Â^S_o,ij - Â^T_o,ij)^2 / max(K_present^2, 1)``; then ``reduction``.

    Edges are cosines within each network, so student and teacher channel counts need not match.

    Args:
        order: highest matrix power ``o >= 1`` of the adjacency that is matched. Defaults to 2.
        eps: stabiliser of the prototype average and cosine (``> 0``).
        reduction: {``"none"``, ``"mean"``, ``"sum"``} reduction over the batch. Defaults to ``"mean"``.

    Raises:
        TypeError: When an argument has the wrong type.
        ValueError: When ``order < 1``, ``eps <= 0`` or ``reduction`` is invalid.
    """

    def __init__(
        self,
        order: int = 2,
        eps: float = 1e-8,
        reduction: LossReduction | str = LossReduction.MEAN,
    ) -> None:
        super().__init__(reduction=reduction)
        self.order = check_int("order", order, minimum=1)
        self.eps = check_real("eps", eps, minimum=0.0, strict=True)

    def per_sample(self, student: Tensor, teacher: Tensor, target: Tensor, teacher_logits: Tensor) -> Tensor:
        """Per-sample RGD values.

        Args:
            student: student features ``B, C_s, h_s, w_s``.
            teacher: teacher features ``B, C_t, h_t, w_t`` (already detached).
            target: ground-truth labels ``B, 1, H0, W0``.
            teacher_logits: teacher logits ``B, K, H0, W0``; gives ``K``.

        Returns:
            ``(B,)`` per-sample values.
        """
        size = common_size(student, teacher)
        feat_s = resize_features(student, size)
        feat_t = resize_features(teacher, size)
        regions = one_hot_labels(resize_labels(target, size), teacher_logits.shape[1], dtype=feat_s.dtype)
        present = regions.sum(dim=(2, 3)) > 0  # B, K
        graph_s = normalized_region_graph(class_prototypes(feat_s, regions, self.eps), present, self.eps)
        graph_t = normalized_region_graph(
            class_prototypes(feat_t, regions.to(feat_t.dtype), self.eps), present, self.eps
        )
        pair = (present.unsqueeze(2) & present.unsqueeze(1)).to(graph_s.dtype)
        power_s, power_t = graph_s, graph_t
        total = ((power_s - power_t).pow(2) * pair).sum(dim=(1, 2))
        for _ in range(1, self.order):
            power_s, power_t = power_s @ graph_s, power_t @ graph_t
            total = total + ((power_s - power_t).pow(2) * pair).sum(dim=(1, 2))
        k_present = present.sum(dim=1).to(total.dtype)
        return total / k_present.pow(2).clamp(min=1)
