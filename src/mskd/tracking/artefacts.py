"""Base classes of the handlers that add files, tags and metrics to a workflow's MLflow run."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from mskd.handlers.events import attach_once
from mskd.tracking.run import MlflowRun

__all__ = ["OncePerRunHandler", "RunArtefactHandler"]


class RunArtefactHandler:
    """Base of the handlers that add files, tags or metrics to a workflow's MLflow run (:class:`MlflowRun`).

    :meth:`attach` registers ``started`` at ``STARTED`` (the run is looked up afresh for every engine run) and each
    ``event -> method`` of :attr:`EVENTS`, once per engine.

    Args:
        run: the workflow's MLflow run (the bundle's ``@mlflow_run``); ``None``: files are written, nothing logged.
    """

    EVENTS: dict[str, str] = {}

    def __init__(self, run: MlflowRun | None = None) -> None:
        self.mlflow = MlflowRun(None) if run is None else run

    def attach(self, engine: Any) -> None:
        """Register the handler's steps on ``engine`` (each once)."""
        from ignite.engine import Events

        steps = {"STARTED": "started", **self.EVENTS}.items()
        attach_once(engine, *((getattr(Events, event), getattr(self, method)) for event, method in steps))

    def started(self, engine: Any = None) -> None:
        """Look the run up again (a new engine run may log to a new MLflow run)."""
        self.mlflow.forget()


class OncePerRunHandler(RunArtefactHandler, ABC):
    """A :class:`RunArtefactHandler` that does :meth:`log_once` once per engine run, at the first ``EPOCH_STARTED``.

    By then every ``STARTED`` handler (MONAI's ``MLFlowHandler`` creating the run among them) has run, so the
    handler's place in the handler list does not matter.
    """

    EVENTS = {"EPOCH_STARTED": "epoch_started"}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending = False

    def started(self, engine: Any = None) -> None:
        super().started(engine)
        self._pending = True

    def epoch_started(self, engine: Any) -> None:
        if self._pending:
            self._pending = False
            self.log_once()

    @abstractmethod
    def log_once(self) -> Any:
        """What the handler logs, once per engine run."""
