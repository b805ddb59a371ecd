"""Split a per-class metric vector into one named scalar per class, so that MLflow and stats can log it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from monai.utils import optional_import

Events, _ = optional_import("ignite.engine", name="Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", name="Engine")

__all__ = ["PerClassMetricHandler"]


class PerClassMetricHandler:
    """Replace ``engine.state.metrics[metric_name]`` (a vector, one value per class) by ``<prefix>_<class>`` scalars.

    Attach it after the metric and before the loggers: metrics are computed at ``EPOCH_COMPLETED`` before handlers
    run, and handlers run in the order they were attached.

    Args:
        metric_name: name of the per-class metric (e.g. ``MeanDice(reduction="mean_batch")``).
        class_names: one name per element of the vector (foreground classes when background is excluded).
        prefix: prefix of the new metric names; defaults to ``metric_name``.

    Raises:
        ValueError: when the metric's length differs from the number of class names.
    """

    def __init__(self, metric_name: str, class_names: Sequence[str], prefix: str | None = None) -> None:
        self.metric_name = metric_name
        self.class_names = list(class_names)
        self.prefix = metric_name if prefix is None else prefix

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        value = engine.state.metrics.pop(self.metric_name, None)
        if value is None:
            return
        values = torch.as_tensor(value).flatten()
        if values.numel() != len(self.class_names):
            raise ValueError(
                f"metric '{self.metric_name}' has {values.numel()} values but {len(self.class_names)} class names "
                f"were given: {self.class_names}"
            )
        for name, v in zip(self.class_names, values.tolist(), strict=True):
            engine.state.metrics[f"{self.prefix}_{name}"] = v
