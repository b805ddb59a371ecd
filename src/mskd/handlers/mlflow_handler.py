"""MONAI's ``MLFlowHandler`` bound to one MLflow run, so that a resumed training logs to the run it started."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from monai.handlers import MLFlowHandler as MonaiMLFlowHandler
from monai.utils import flatten_dict

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["MLFlowHandler"]


class MLFlowHandler(MonaiMLFlowHandler):
    """MONAI's ``MLFlowHandler`` (same arguments) logging to the run ``run_id`` (see :func:`mskd.tracking.open_run`).

    MONAI's handler looks its run up by name and takes any that is not ``FINISHED``, so a run that an earlier process
    left ``FAILED`` would be continued; with ``run_id`` the run is the one given, nothing else. On a run that already
    holds data (a resumed training), a metric is not logged again at a step it already has (the interrupted process
    may have logged a few iterations past its last checkpoint: the resumed run recomputes them, identically, and they
    are kept once), and a param already logged is not logged again (MLflow refuses to change one; a changed value is
    reported with a warning and the first one kept).

    Args:
        args: MONAI ``MLFlowHandler``'s positional arguments.
        run_id: the MLflow run to log to; ``None`` keeps MONAI's look-up by ``run_name``.
        kwargs: MONAI ``MLFlowHandler``'s keyword arguments.
    """

    def __init__(self, *args: Any, run_id: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.run_id = run_id
        self._logged_steps: dict[str, int] = {}
        self._logged_params: dict[str, str] = {}

    def start(self, engine: Engine) -> None:
        """Bind the run ``run_id`` (once), note what it already holds, then MONAI's start (params, dataset)."""
        if self.run_id is not None and self.cur_run is None:
            self.cur_run = self.client.get_run(self.run_id)
            self._logged_params = dict(self.cur_run.data.params)
            self._logged_steps = {
                key: max(m.step for m in self.client.get_metric_history(self.run_id, key))
                for key in self.cur_run.data.metrics
            }
        super().start(engine)

    def _log_params(self, params: dict[str, Any]) -> None:
        new = {}
        for key, value in params.items():
            old = self._logged_params.get(key)
            if old is None:
                new[key] = value
            elif old != str(value):
                warnings.warn(
                    f"MLflow run {self.run_id} has param {key} = {old!r}, this process has {str(value)!r}; "
                    "keeping the logged value (MLflow params cannot change)",
                    stacklevel=2,
                )
        if new:
            super()._log_params(new)
            self._logged_params.update({key: str(value) for key, value in new.items()})

    def _log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        step = step or 0
        todo = {key: value for key, value in flatten_dict(metrics).items() if step > self._logged_steps.get(key, -1)}
        if todo:
            super()._log_metrics(todo, step=step)
