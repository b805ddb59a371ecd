"""MONAI's ``MLFlowHandler`` bound to one MLflow run, so that a resumed training logs to the run it started, never
stopped by a store that refuses a call, and logging the epoch means of the loss terms."""

from __future__ import annotations

import functools
import math
import numbers
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from monai.handlers import MLFlowHandler as MonaiMLFlowHandler
from monai.utils import flatten_dict

from mskd.handlers.events import attach_once
from mskd.tracking.run import MlflowRun
from mskd.tracking.store import log_or_skip

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["EPOCH_MEAN_PREFIX", "MLFlowHandler"]

EPOCH_MEAN_PREFIX = "epoch_mean_"
"""Prefix of the epoch means of the iteration values (``epoch_mean_loss``, ``epoch_mean_loss_kd``, ...)."""


class MLFlowHandler(MonaiMLFlowHandler):
    """MONAI's ``MLFlowHandler`` logging to the workflow's :class:`mskd.tracking.MlflowRun` (the bundle's
    ``@mlflow_run``), so that a resumed training logs to the run it started.

    MONAI's handler looks its run up by name and takes any that is not ``FINISHED``, so a run that an earlier process
    left ``FAILED`` would be continued; with an opened ``run`` (:meth:`MlflowRun.open`) the run is that one, nothing
    else (a run never opened keeps MONAI's look-up by name). MONAI's handler makes its store when it is built, so it
    needs tracking on (a bundle disables it with ``"_disabled_": "$not @mlflow_run.enabled"``). On a run that
    already holds data (a resumed training), a metric is not logged again at a step it already has (the interrupted
    process may have logged a few iterations past its last checkpoint: the resumed run recomputes them, identically,
    and they are kept once), and a param already logged is not logged again (MLflow refuses to change one; a changed
    value is reported with a warning and the first one kept).

    With ``iteration_log`` on (every iteration, or every few through an event filter), the values of
    ``output_transform`` (the loss terms) are also averaged over every iteration of each epoch and logged at the epoch's
    end as ``epoch_mean_<name>``, at the step of the epoch's last iteration: a short run logged every 10 iterations
    still gets a curve, and the mean covers the iterations the filter skips. (A resumed epoch's mean covers the
    iterations run by this process.)

    Every call to the store (binding the run, params, metrics, artifacts, closing the run) goes through
    :func:`mskd.tracking.log_or_skip`: a store that is locked, busy or unreachable gets a few tries, then the call is
    skipped with one warning per run, and the engine goes on.

    Args:
        run: the workflow's MLflow run; its ``tracking_uri``, ``experiment_name`` and ``run_name`` are MONAI's.
        kwargs: MONAI ``MLFlowHandler``'s other keyword arguments.

    Raises:
        ValueError: when ``run`` has tracking off.
    """

    def __init__(self, run: MlflowRun, **kwargs: Any) -> None:
        if not run.enabled:
            raise ValueError(
                f"MLFlowHandler needs tracking on, but MLflow run {run.run_name!r} has it off: disable the handler"
            )
        super().__init__(
            tracking_uri=run.tracking_uri,
            experiment_name=run.experiment_name or "monai_experiment",
            run_name=run.run_name,
            **kwargs,
        )
        self.run = run
        self._logged_steps: dict[str, int] = {}
        self._logged_params: dict[str, str] = {}
        self._epoch_sums: dict[str, list[float]] = {}

    def attach(self, engine: Engine) -> None:
        """MONAI's steps, and the epoch means of the iteration values when they are logged."""
        from ignite.engine import Events

        super().attach(engine)
        if self.iteration_log:
            attach_once(
                engine,
                (Events.EPOCH_STARTED, self._start_epoch_means),
                (Events.ITERATION_COMPLETED, self._add_to_epoch_means),
                (Events.EPOCH_COMPLETED, self._log_epoch_means),
            )

    def _start_epoch_means(self, engine: Engine) -> None:
        self._epoch_sums = {}

    def _add_to_epoch_means(self, engine: Engine) -> None:
        values = self.output_transform(engine.state.output)
        if values is None:
            return
        if not isinstance(values, dict):
            values = {self.tag_name: values}
        for key, value in values.items():
            value = value.item() if hasattr(value, "item") and getattr(value, "numel", lambda: 1)() == 1 else value
            if isinstance(value, numbers.Real) and math.isfinite(value):
                total = self._epoch_sums.setdefault(key, [0.0, 0])
                total[0] += float(value)
                total[1] += 1

    def _log_epoch_means(self, engine: Engine) -> None:
        means = {f"{EPOCH_MEAN_PREFIX}{key}": total / count for key, (total, count) in self._epoch_sums.items()}
        if means:
            self._log_metrics(means, step=engine.state.iteration)

    @property
    def run_id(self) -> str | None:
        """The opened run's id; ``None`` keeps MONAI's look-up by ``run_name``."""
        return self.run.given_run_id

    def _bind(self) -> None:
        """Bind the run ``run_id`` (once) and note what it already holds."""
        if self.run_id is None or self.cur_run is not None:
            return
        run = self.client.get_run(self.run_id)
        self._logged_params = dict(run.data.params)
        self._logged_steps = {
            key: max(m.step for m in self.client.get_metric_history(self.run_id, key)) for key in run.data.metrics
        }
        self.cur_run = run  # last: a refused read leaves the run unbound, to be bound at the next call

    def _call(self, call: Callable[[], Any]) -> None:
        """``call()`` on the bound run (bound first if a refused store kept it unbound), through ``log_or_skip``."""

        def bound_call() -> None:
            self._bind()
            call()

        log_or_skip(bound_call, self.client.tracking_uri, self.run_id or self.run_name)

    def start(self, engine: Engine) -> None:
        """Bind the run ``run_id``, then MONAI's start (params, dataset)."""
        self._call(functools.partial(super().start, engine))

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
        if not new:
            return
        log_params = super()._log_params

        def log() -> None:
            log_params(new)
            self._logged_params.update({key: str(value) for key, value in new.items()})

        self._call(log)

    def _log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        step = step or 0
        todo = {key: value for key, value in flatten_dict(metrics).items() if step > self._logged_steps.get(key, -1)}
        if todo:
            self._call(functools.partial(super()._log_metrics, todo, step=step))

    def complete(self) -> None:
        """MONAI's: log the artifacts."""
        self._call(super().complete)

    def close(self) -> None:
        """MONAI's: end the run ``FINISHED``."""
        self._call(super().close)
