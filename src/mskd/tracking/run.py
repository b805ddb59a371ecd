"""The MLflow run of one workflow: opened in ``initialize``, followed by every tracking handler, ended whatever
happens to the engine."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from mskd.flags import as_flag
from mskd.tracking.store import close_stale_runs, log_or_skip, open_run, run_tracked

__all__ = ["MlflowRun"]

_FINISHED = "FINISHED"


class MlflowRun:
    """The MLflow run of one workflow, the one object every tracking handler of a bundle takes (``@mlflow_run``).

    Building it contacts nothing. A bundle's ``initialize`` calls :meth:`open`, which checks the store and opens the
    run the training logs to (the run of the resume checkpoint, else a new one) and ends any other run of the same
    name left ``RUNNING``; its ``run`` is :meth:`run`, which ends the run ``FAILED`` (``KILLED`` on Ctrl-C) when the
    engine raises. A run never opened follows MONAI's own ``MLFlowHandler`` instead (for workflows that log with it):
    the run is looked up as MONAI finds it. MONAI creates its run through ``MlflowClient`` (not the fluent API, so
    ``mlflow.active_run()`` knows nothing of it) and, at its engine's ``STARTED``, takes among the experiment's runs
    (``MlflowClient.search_runs``, newest first) named ``run_name`` that are not ``FINISHED`` the last one; without
    any, a new run. :meth:`run_id` makes the same choice, so it finds the same run while that run is open; once every
    run of that name is closed (``close_on_complete``), it takes the one closed last. A looked-up id is kept until
    :meth:`forget`.

    With tracking off (``enabled`` false, or no ``tracking_uri``) nothing is contacted: :meth:`open` returns ``None``,
    every logging method does nothing, and handlers still write their files locally. A store that refuses a logging
    call (locked, busy, unreachable, full) never stops the engine: the call gets a few tries, then is skipped with one
    warning per run (:func:`mskd.tracking.log_or_skip`).

    Args:
        tracking_uri: the MLflow tracking URI (:func:`mskd.tracking.tracking_uri`); ``None`` turns tracking off.
        experiment_name: the run's experiment (created by :meth:`open` when missing).
        run_name: the run's name (:func:`mskd.tracking.run_name`).
        enabled: the bundle's ``mlflow`` switch (``true``/``false``, also as strings from a command line).
        run_id: an existing run to log to (as :meth:`open` would set it); nothing is looked up.

    Attributes:
        given_run_id: the run's id once :meth:`open` opened it (or as given); ``None`` before, or to follow MONAI.

    Raises:
        ValueError: for a bad ``enabled`` value, or a ``tracking_uri`` without ``run_id`` and without
            ``experiment_name`` and ``run_name``.
    """

    def __init__(
        self,
        tracking_uri: str | None,
        experiment_name: str | None = None,
        run_name: str | None = None,
        enabled: Any = True,
        run_id: str | None = None,
    ) -> None:
        if not as_flag(enabled, "mlflow"):
            tracking_uri = None
        if tracking_uri is not None and run_id is None and not (experiment_name and run_name):
            raise ValueError(
                "with a tracking_uri, pass run_id, or experiment_name and run_name, to name the MLflow run to log to "
                f"(the same values as the MLFlowHandler's), got experiment_name={experiment_name!r}, "
                f"run_name={run_name!r}, run_id={run_id!r}"
            )
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.run_name = run_name
        self.given_run_id = run_id
        self._client: Any = None
        self._run_id: str | None = None

    def open(self, resume_from: str | os.PathLike | None = None) -> str | None:
        """Check the store and open the run (:func:`mskd.tracking.open_run`), then end every other run of the same
        name left ``RUNNING`` (:func:`mskd.tracking.close_stale_runs`); nothing with tracking off.

        Args:
            resume_from: the resume checkpoint (:func:`mskd.engines.resume_checkpoint`), or ``None``.

        Returns:
            the run id, or ``None`` with tracking off.

        Raises:
            mskd.tracking.TrackingError: when the store cannot be used (unreachable, invalid, experiment deleted);
                nothing is opened. A bundle calls this through :func:`mskd.validation.open_tracking`, which reports
                it as a problem of ``tracking_uri``.
        """
        if not self.enabled:
            return None
        self.given_run_id = open_run(self.tracking_uri, self.experiment_name, self.run_name, resume_from)
        close_stale_runs(self.tracking_uri, self.experiment_name, self.run_name, keep=self.given_run_id)
        return self.given_run_id

    def run(self, engine: Any) -> Any:
        """``engine.run()`` through :func:`mskd.tracking.run_tracked`: the opened run ends ``FAILED`` (``KILLED``
        on Ctrl-C) when it raises."""
        return run_tracked(engine, self.tracking_uri, self.given_run_id if self.enabled else None)

    @property
    def enabled(self) -> bool:
        """Whether anything is logged (a tracking URI was given)."""
        return self.tracking_uri is not None

    @property
    def client(self) -> Any:
        """An ``mlflow.MlflowClient`` for :attr:`tracking_uri` (mlflow is imported on first use)."""
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def forget(self) -> None:
        """Look the run up again at the next call (an engine run may use a new MLflow run)."""
        self._run_id = None

    def display_name(self) -> str:
        """``run_name``; else the name of the run ``run_id`` (``""`` with logging off)."""
        if self.run_name:
            return self.run_name
        if self.enabled and self.given_run_id is not None:
            return str(self.client.get_run(self.given_run_id).info.run_name or "")
        return ""

    def run_id(self) -> str:
        """The given ``run_id``, or the id of the run looked up on the first call.

        Raises:
            RuntimeError: when the experiment or a run of that name does not exist (yet): the handler was used
                without an ``MLFlowHandler`` with the same ``experiment_name`` and ``run_name`` on a started engine.
        """
        if self.given_run_id is not None:
            return self.given_run_id
        if self._run_id is not None:
            return self._run_id
        hint = (
            "attach a MONAI MLFlowHandler with the same tracking_uri, experiment_name and run_name to the engine "
            "(it creates the run when the engine starts)"
        )
        experiment = self.client.get_experiment_by_name(self.experiment_name)
        if experiment is None:
            raise RuntimeError(f"MLflow experiment '{self.experiment_name}' not found at {self.tracking_uri}: {hint}")
        runs = [r for r in self.client.search_runs(experiment.experiment_id) if r.info.run_name == self.run_name]
        if not runs:
            raise RuntimeError(
                f"no MLflow run named '{self.run_name}' in experiment '{self.experiment_name}' at "
                f"{self.tracking_uri}: {hint}"
            )
        open_runs = [r for r in runs if r.info.status != _FINISHED]
        if open_runs:
            self._run_id = open_runs[-1].info.run_id  # as MONAI picks it
        else:  # the run MONAI closed last
            self._run_id = max(runs, key=lambda r: (r.info.end_time or 0, r.info.start_time or 0)).info.run_id
        return self._run_id

    def _log(self, call: Callable[[], Any]) -> None:
        """``call()`` (which names the run with :meth:`run_id`) through ``log_or_skip``."""
        log_or_skip(call, str(self.tracking_uri), self.given_run_id or self.run_name)

    def read(self, call: Callable[[], Any], default: Any) -> Any:
        """``call()``, a read of the run from the store, through ``log_or_skip``: ``default`` when the store refused
        it (a busy store costs the figure or the check that needed the read, never the training); ``default`` with
        tracking off."""
        if not self.enabled:
            return default
        result = log_or_skip(call, str(self.tracking_uri), self.given_run_id or self.run_name)
        return default if result is None else result

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Copy the file ``path`` into the run's artifacts, under the folder ``artifact_path`` (root when None)."""
        if self.enabled:
            self._log(lambda: self.client.log_artifact(self.run_id(), os.fspath(path), artifact_path=artifact_path))

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Log scalar metrics (one batch call) at ``step``."""
        if not self.enabled or not metrics:
            return
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        entries = [Metric(key, float(value), now, step) for key, value in metrics.items()]
        self._log(lambda: self.client.log_batch(self.run_id(), metrics=entries))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set tags (values as strings, at most 5000 characters each; ``None`` values are left out)."""
        if not self.enabled:
            return
        from mlflow.entities import RunTag

        entries = [RunTag(str(key), str(value)[:5000]) for key, value in tags.items() if value is not None]
        if entries:
            self._log(lambda: self.client.log_batch(self.run_id(), tags=entries))
