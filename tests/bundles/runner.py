"""Running a bundle's commands as a user types them (``python -m monai.bundle run``), shared by the bundle tests."""

import os
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
SCHEMA = Path(__file__).resolve().parent / "meta_schema_20240725.json"  # offline copy of the model-zoo schema
CPU_NETWORKS = ["--teacher", "unet", "--student", "tiny_unet"]  # the bundles' default teacher is paper-scale
TINY = ["--image_size", "32", "--max_epochs", "1", "--val_interval", "1", "--batch_size", "2"]
TINY += ["--slices_per_volume", "2", "--num_val_cases", "1", "--val_slice_batch", "8", "--log_every", "1"]


def run_bundle(bundle: Path, *files: str, args: list[str], check: bool = True) -> subprocess.CompletedProcess:
    """`python -m monai.bundle run` with `files` stacked from `bundle/configs`; raises with the logs if it fails."""
    config = "[" + ",".join(f"'{bundle / 'configs' / f}'" for f in files) + "]"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config, "--bundle_root", str(bundle), *args]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", errors="replace", env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def output_dirs(root: Path) -> list[str]:
    """Overrides that keep a run's MLflow store, executed configs and checkpoints under ``root``."""
    return ["--output_dir", str(root / "output"), "--ckpt_dir", str(root / "models")]


def mlflow_runs(root: Path, experiment: str) -> tuple[MlflowClient, dict]:
    """The client of the store under ``root`` and its runs of ``experiment`` by run name."""
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'output' / 'mlruns.db'}")
    found = client.get_experiment_by_name(experiment)
    return client, {r.info.run_name: r for r in client.search_runs([found.experiment_id])}


def run_module(command: str, *args: str) -> str:
    """``python -m monai.bundle <command> ...`` (``verify_net_in_out``, ``ckpt_export``, ...); returns its output."""
    cmd = [sys.executable, "-m", "monai.bundle", command, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", errors="replace")
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc.stdout + proc.stderr
