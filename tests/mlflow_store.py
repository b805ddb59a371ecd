"""Fresh MLflow SQLite stores for tests, copied from one empty store (creating a store runs MLflow's migrations, which
takes seconds; copying it takes milliseconds)."""

from __future__ import annotations

import shutil
from pathlib import Path

from monai.utils import path_to_sqlite_uri


def create_empty_store(path: Path) -> Path:
    """Create an empty SQLite MLflow store at ``path`` (its folder must exist)."""
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=path_to_sqlite_uri(str(path))).search_experiments()
    return path


def copy_store(empty_store: Path, folder: Path) -> str:
    """A fresh store ``folder/mlruns.db`` (a copy of ``empty_store``); returns its tracking URI."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(empty_store, folder / "mlruns.db")
    return path_to_sqlite_uri(str(folder / "mlruns.db"))
