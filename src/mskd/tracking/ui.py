"""The MLflow UI of a store: the server command, and the addresses of each experiment's runs table in the bundle's view.

MLflow 3 opens an experiment on its GenAI pages ("Traces"); the runs table of a training experiment is at
``#/experiments/<id>/runs?workflowType=machine_learning``, and with the columns a bundle stored (the experiment tag
``mlflow.sharedViewState.<key>``, see :func:`mskd.tracking.runs_table_view`) at ``...&viewStateShareKey=<key>``. No
one finds those by clicking, so ``mskd ui`` prints them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["VIEW_KEY", "experiment_pages", "mlflow_server", "runs_url"]

VIEW_KEY = "mskd"  # the shared view a bundle's RunTagsHandler stores: mlflow.sharedViewState.mskd
_TRAINING_VIEW = "workflowType=machine_learning"


def runs_url(base: str, experiment_id: str, run_id: str | None = None, path: str = "", view: str | None = None) -> str:
    """A page of the MLflow UI in its model-training view: the experiment's runs table (with the shared ``view``),
    a run's page, or (with ``path``, e.g. ``artifacts/overlays/epoch_001.png``) a page under the run."""
    page = f"{base}/#/experiments/{experiment_id}/runs"
    if run_id is not None:
        page += f"/{run_id}" + (f"/{path}" if path else "")
    return f"{page}?{_TRAINING_VIEW}" + (f"&viewStateShareKey={view}" if view else "")


def mlflow_server(store: str | os.PathLike, port: int, host: str = "127.0.0.1") -> list[str]:
    """The command of an MLflow server of the SQLite ``store`` on ``host:port`` (one worker)."""
    uri = f"sqlite:///{Path(store).resolve()}"
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host, "--port", str(port),
            "--workers", "1"]  # fmt: skip


def experiment_pages(store: str | os.PathLike, base: str) -> list[tuple[str, int, str]]:
    """``(experiment name, number of runs, runs-table address)`` of every experiment with runs in ``store``, by
    name, the bundle's shared view in the address where the experiment has one.

    Raises:
        FileNotFoundError: when ``store`` does not exist (say which command makes one).
    """
    from mlflow import MlflowClient

    if not Path(store).is_file():
        raise FileNotFoundError(
            f"no MLflow store at {store}: train first (`make demo` makes demo/output/mlruns.db) or pass --store"
        )
    client = MlflowClient(tracking_uri=f"sqlite:///{Path(store).resolve()}")
    pages = []
    for experiment in client.search_experiments():
        runs = client.search_runs([experiment.experiment_id], max_results=1000)
        if not runs:
            continue
        view = VIEW_KEY if f"mlflow.sharedViewState.{VIEW_KEY}" in experiment.tags else None
        pages.append((experiment.name, len(runs), runs_url(base, experiment.experiment_id, view=view)))
    return sorted(pages)
