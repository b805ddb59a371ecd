"""Fixtures shared across the test folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.mlflow_store import copy_store, create_empty_store


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """An empty SQLite MLflow store, created once per session; copy it with :func:`tests.mlflow_store.copy_store`."""
    return create_empty_store(tmp_path_factory.mktemp("store") / "mlruns.db")


@pytest.fixture
def mlflow_uri(empty_store, tmp_path, monkeypatch) -> str:
    """The tracking URI of a fresh store ``tmp_path/mlruns.db`` (``MLFLOW_TRACKING_URI`` unset).

    The test runs in ``tmp_path``: an experiment created without an artifact location keeps its artifacts under
    ``./mlruns`` of the working directory.
    """
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    return copy_store(empty_store, tmp_path)
