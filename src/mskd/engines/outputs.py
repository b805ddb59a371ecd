"""What handlers log: output transforms that turn an engine's output into scalars, and how often to log."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from monai.utils import CommonKeys as Keys

from .distillation_trainer import LOSS_TERMS

__all__ = ["loss_terms", "every"]


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


def every(n: int) -> Callable[[Any, int], bool]:
    """Event filter for ``StatsHandler`` / ``MLFlowHandler(iteration_log=...)``: true on every ``n``-th iteration.

    Logging each iteration to an SQLite MLflow store costs tens of milliseconds, a large share of a small CPU step.

    Args:
        n: logging interval in iterations (``>= 1``).

    Raises:
        ValueError: when ``n < 1``.
    """
    if n < 1:
        raise ValueError(f"the logging interval must be >= 1, got {n}")

    def _filter(_engine: Any, iteration: int) -> bool:
        return iteration % n == 0

    return _filter
