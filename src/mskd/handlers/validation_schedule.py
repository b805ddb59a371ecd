"""Validation every N epochs and at the last one, and a training that saved no model is an error."""

from __future__ import annotations

import os
from typing import Any

from monai.handlers import ValidationHandler as _MonaiValidationHandler
from monai.utils import optional_import

Events, _ = optional_import("ignite.engine", name="Events")

__all__ = ["ValidationHandler"]


class ValidationHandler(_MonaiValidationHandler):
    """MONAI's epoch-level ``ValidationHandler`` that also validates at the last epoch, and checks at the end that
    the best model was saved.

    With MONAI's handler a training of 3 epochs validated every 5 never validates, so its best-model saver writes
    nothing and the run exits 0; the next step (distillation, evaluation) then fails for a missing checkpoint, or
    picks up an older file of the same name. Here the last epoch is always validated, and a training that ends
    without ``model_path`` on disk raises.

    Args:
        interval: validate every ``interval`` epochs (``>= 1``), and at the last epoch.
        validator: the evaluator to run.
        model_path: the file the best-model saver writes (``None``: not checked, e.g. on ranks that do not save).

    Raises:
        ValueError: when ``interval`` is not an integer >= 1.
    """

    def __init__(self, interval: int, validator: Any = None, model_path: str | os.PathLike | None = None) -> None:
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ValueError(f"val_interval must be an integer >= 1, got {interval!r}")
        super().__init__(interval=interval, validator=validator, epoch_level=True)
        self.model_path = model_path

    def attach(self, engine: Any) -> None:
        def due(engine: Any, epoch: int) -> bool:
            return epoch % self.interval == 0 or epoch == engine.state.max_epochs

        engine.add_event_handler(Events.EPOCH_COMPLETED(event_filter=due), self)
        if self.model_path is not None:
            engine.add_event_handler(Events.COMPLETED, self._require_model)

    def _require_model(self, engine: Any) -> None:
        if not os.path.isfile(self.model_path):
            raise RuntimeError(
                f"training ended at epoch {engine.state.epoch} of {engine.state.max_epochs} without saving a model to "
                f"{self.model_path}: no validation gave a Dice to keep the best model by (see the log above)"
            )
