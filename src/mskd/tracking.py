"""MLflow: where the store lives, a start-up check that it answers, and one run per training, resumed or new.

:func:`open_run` (called from a bundle's ``initialize`` through the config value ``tracking_run_id``) checks the store
with short network timeouts, then opens the run that the training logs to: the run saved in the resume checkpoint
when there is one (set back to ``RUNNING`` if it was closed), else a new run. :func:`close_stale_runs` then marks any
other run of the same name still ``RUNNING`` (a killed process that left no checkpoint to resume) ``FAILED``. With
``mlflow: false`` (``--mlflow false``) no store is contacted and the MLflow handlers are disabled.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from monai.utils import path_to_sqlite_uri, path_to_uri

__all__ = [
    "CHECK_TIMEOUT_S",
    "TrackingError",
    "check_tracking_uri",
    "close_stale_runs",
    "open_run",
    "run_name",
    "run_params",
    "save_executed_config",
    "tracking_uri",
]

CHECK_TIMEOUT_S = 5  # seconds the start-up check waits for an HTTP tracking server (no retries)


class TrackingError(RuntimeError):
    """The MLflow tracking store cannot be used (unreachable, invalid URI, deleted experiment)."""


def tracking_uri(output_dir: str | os.PathLike) -> str:
    """``$MLFLOW_TRACKING_URI`` when set, else a local SQLite store ``<output_dir>/mlruns.db``.

    MLflow 3 refuses a bare file store, so the default is SQLite (the folder is created).
    """
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    return path_to_sqlite_uri(str(Path(output_dir).resolve() / "mlruns.db"))


def run_name(model: str, method: str, seed: int) -> str:
    """``<model>-<method>-s<seed>``: what a run is, used as its MLflow run name and its checkpoint's file stem.

    Example: ``run_name("tiny_unet_from_unet", "mskd", 0) == "tiny_unet_from_unet-mskd-s0"``.
    """
    return f"{model}-{method}-s{seed}"


def close_stale_runs(uri: str, experiment_name: str, run_name: str, keep: str | None = None) -> int:
    """Mark earlier runs named ``run_name`` that are still ``RUNNING`` (a killed process) as ``FAILED``.

    A crashed run is never silently continued: it is either resumed explicitly (its id is ``keep``, the run
    :func:`open_run` reopened from the resume checkpoint) or closed here.

    Args:
        uri: MLflow tracking URI.
        experiment_name: experiment to look in.
        run_name: the run name about to be used.
        keep: the id of the run this invocation logs to, left open.

    Returns:
        number of runs closed (each one is reported with a warning).
    """
    from mlflow.tracking import MlflowClient  # heavy import, only when a workflow starts

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return 0
    stale = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"attributes.run_name = '{run_name}' and attributes.status = 'RUNNING'",
    )
    stale = [run for run in stale if run.info.run_id != keep]
    for run in stale:
        warnings.warn(
            f"MLflow run '{run_name}' ({run.info.run_id}) was left RUNNING by an earlier process and is not resumed; "
            f"marking it FAILED{f' (this run logs to {keep})' if keep else ''}",
            stacklevel=2,
        )
        client.set_terminated(run.info.run_id, status="FAILED")
    return len(stale)


@contextlib.contextmanager
def _quick_http(timeout: float) -> Iterator[None]:
    """MLflow's HTTP requests without retries and with a short timeout, for the duration of the block."""
    settings = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(int(timeout))}
    before = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def check_tracking_uri(uri: str, timeout: float = CHECK_TIMEOUT_S) -> Any:
    """Connect to the MLflow store at ``uri`` and make one request, without retries and waiting ``timeout`` seconds at
    most; returns the ``MlflowClient``.

    Raises:
        TrackingError: with a one-line message naming the URI, what failed and how to fix or disable tracking.
    """
    from mlflow.tracking import MlflowClient  # heavy import, only when a workflow starts

    fix = "fix --tracking_uri (or MLFLOW_TRACKING_URI), or run without MLflow: --mlflow false"
    if "://" not in uri or uri.startswith("file:"):
        raise TrackingError(
            f"MLflow tracking URI {uri!r} is a local folder, which MLflow 3 no longer supports; use "
            f"sqlite:///<path>/mlruns.db or http(s)://<server>; {fix}"
        )
    try:
        with _quick_http(timeout):
            client = MlflowClient(tracking_uri=uri)
            client.search_experiments(max_results=1)
    except Exception as e:  # MlflowException, SQLAlchemy and URI-scheme errors alike
        first = " ".join(str(e).split())[:240] or type(e).__name__
        raise TrackingError(f"MLflow tracking store {uri!r} is unreachable or invalid ({first}); {fix}") from e
    return client


def _experiment_id(client: Any, uri: str, experiment_name: str) -> str:
    """The experiment's id, created if missing (artifacts beside a SQLite store, as MONAI's handler puts them)."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        location = None
        if uri.startswith("sqlite:///"):
            location = path_to_uri(Path(uri[len("sqlite:///") :]).parent / "mlruns")
        return client.create_experiment(experiment_name, artifact_location=location)
    if experiment.lifecycle_stage != "active":
        raise TrackingError(
            f"MLflow experiment {experiment_name!r} is deleted in {uri!r}; restore it (mlflow experiments restore) "
            "or pass another --experiment_name"
        )
    return experiment.experiment_id


def open_run(
    uri: str,
    experiment_name: str,
    run_name: str,
    resume_from: str | os.PathLike | None = None,
    enabled: Any = True,
) -> str | None:
    """Check the store and open the MLflow run a training logs to; returns its id (``None`` with tracking off).

    With a resume checkpoint holding a run id, that run is reopened (set ``RUNNING``) and continued; otherwise a new
    run named ``run_name`` is created. Pass the id to every :class:`mskd.handlers.MLFlowHandler` of the workflow, and
    to :func:`close_stale_runs` as ``keep``.

    When the store cannot be used, this prints one line (``mskd: MLflow tracking store ... is unreachable ...``) to
    stderr and exits with status 2: it runs in a bundle's ``initialize``, before any training.

    Args:
        uri: MLflow tracking URI.
        experiment_name: the experiment (created if missing).
        run_name: name of a new run.
        resume_from: the resume checkpoint (:func:`mskd.engines.resume_checkpoint`), or ``None``.
        enabled: the bundle's ``mlflow`` switch (``true``/``false``); off returns ``None`` and contacts nothing.

    Returns:
        the run id, or ``None`` when tracking is off.

    Raises:
        SystemExit: when the store is unreachable or invalid, or the experiment is deleted.
        ValueError: for a bad ``enabled`` value.
    """
    from mskd.engines.checkpointing import as_flag, checkpoint_run_id

    if not as_flag(enabled, "mlflow"):
        return None
    try:
        client = check_tracking_uri(uri)
        experiment_id = _experiment_id(client, uri, experiment_name)
    except TrackingError as e:
        print(f"mskd: {e}", file=sys.stderr)
        raise SystemExit(2) from e
    resumed = checkpoint_run_id(resume_from)
    if resumed is not None:
        try:
            run = client.get_run(resumed)
        except Exception:  # MlflowException RESOURCE_DOES_NOT_EXIST
            run = None
        if run is not None and run.info.experiment_id == experiment_id:
            if run.info.status != "RUNNING":
                client.update_run(resumed, status="RUNNING")
            return resumed
        warnings.warn(
            f"the resume checkpoint {resume_from} logged to MLflow run {resumed}, which is not in experiment "
            f"{experiment_name!r} of {uri!r}; logging the rest of the training to a new run",
            stacklevel=2,
        )
    return client.create_run(experiment_id, run_name=run_name).info.run_id


def run_params(**params: object) -> dict[str, str]:
    """Flatten config values into MLflow params (strings, at most 500 characters each as MLflow allows)."""
    return {key: str(value)[:500] for key, value in params.items()}


def save_executed_config(path: str | os.PathLike) -> str:
    """Write the config being executed (all stacked files merged, command-line overrides applied) to ``path``.

    Called from a config expression, so that the MLflow run can log the exact configuration without the user
    passing ``--tracking``. The merged config lives in the ``ConfigParser`` that is evaluating the expression; it is
    found on the call stack (MONAI offers no other handle on it from inside a config). The file is written to a
    temporary name and renamed (:func:`mskd.io.atomic_path`).

    Args:
        path: JSON file to write (its folder is created).

    Returns:
        ``path`` as a string, for ``MLFlowHandler(artifacts=...)``.

    Raises:
        RuntimeError: when not called while a MONAI bundle config is being parsed.
    """
    from monai.bundle import ConfigParser

    from mskd.io import atomic_path

    for frame_info in inspect.stack(context=0):
        candidate = frame_info.frame.f_locals.get("self")
        if isinstance(candidate, ConfigParser):
            with atomic_path(path) as tmp:
                ConfigParser.export_config_file(candidate.get(), tmp, fmt="json", indent=4)
            return str(path)
    raise RuntimeError("save_executed_config must be called from a MONAI bundle config expression")
