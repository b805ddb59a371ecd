"""MLflow defaults: where the store lives, and no silent resumption of an earlier run with the same name."""

from __future__ import annotations

import inspect
import os
import warnings
from pathlib import Path

from monai.utils import path_to_sqlite_uri

__all__ = ["close_stale_runs", "run_name", "run_params", "save_executed_config", "tracking_uri"]


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


def close_stale_runs(uri: str, experiment_name: str, run_name: str) -> int:
    """Mark earlier runs named ``run_name`` that are still ``RUNNING`` (a killed process) as ``FAILED``.

    MONAI's ``MLFlowHandler`` appends to an unfinished run with the same name; closing stale ones first makes every
    invocation a new run, so a crashed run is never silently continued.

    Args:
        uri: MLflow tracking URI.
        experiment_name: experiment to look in.
        run_name: the run name about to be used.

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
    for run in stale:
        warnings.warn(
            f"MLflow run '{run_name}' ({run.info.run_id}) was left RUNNING by an earlier process; marking it FAILED "
            "and starting a new run",
            stacklevel=2,
        )
        client.set_terminated(run.info.run_id, status="FAILED")
    return len(stale)


def run_params(**params: object) -> dict[str, str]:
    """Flatten config values into MLflow params (strings, at most 500 characters each as MLflow allows)."""
    return {key: str(value)[:500] for key, value in params.items()}


def save_executed_config(path: str | os.PathLike) -> str:
    """Write the config being executed (all stacked files merged, command-line overrides applied) to ``path``.

    Called from a config expression, so that the MLflow run can log the exact configuration without the user
    passing ``--tracking``. The merged config lives in the ``ConfigParser`` that is evaluating the expression; it is
    found on the call stack (MONAI offers no other handle on it from inside a config). The file is written to a
    temporary name and renamed.

    Args:
        path: JSON file to write (its folder is created).

    Returns:
        ``path`` as a string, for ``MLFlowHandler(artifacts=...)``.

    Raises:
        RuntimeError: when not called while a MONAI bundle config is being parsed.
    """
    from monai.bundle import ConfigParser

    for frame_info in inspect.stack(context=0):
        candidate = frame_info.frame.f_locals.get("self")
        if isinstance(candidate, ConfigParser):
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            ConfigParser.export_config_file(candidate.get(), tmp, fmt="json", indent=4)
            tmp.replace(path)
            return str(path)
    raise RuntimeError("save_executed_config must be called from a MONAI bundle config expression")
