"""Output transforms that turn an engine's output into the scalars handlers log."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from monai.utils import CommonKeys as Keys

from .distillation_trainer import LOSS_TERMS

__all__ = ["loss_terms"]


def loss_terms(output: Mapping[str, Any] | list[Mapping[str, Any]]) -> dict[str, float]:
    """Total loss and every named term of a trainer's output as floats: ``{"loss": ..., "loss_seg": ...}``.

    Works for ``DistillationTrainer`` (terms under ``loss_terms``) and plain ``SupervisedTrainer`` outputs (the total
    only, reported as the segmentation term too, so teacher, baseline and distilled runs share metric names), and for
    decollated outputs (a list of per-item dicts carrying the same loss).

    Args:
        output: ``engine.state.output``.

    Returns:
        metric name -> value.
    """
    if isinstance(output, list):
        output = output[0]
    total = float(output[Keys.LOSS].detach())
    terms = output.get(LOSS_TERMS) or {"seg": total}
    return {"loss": total, **{f"loss_{name}": float(value) for name, value in terms.items()}}
