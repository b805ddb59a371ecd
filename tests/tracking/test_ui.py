"""``mskd ui``: the MLflow server of a store, and the address of each experiment's runs table in the bundle's view."""

import subprocess

import pytest
from mlflow import MlflowClient

from mskd.cli import main
from mskd.tracking.ui import experiment_pages, mlflow_server, runs_url


def test_runs_url_opens_the_training_view():
    base = "http://127.0.0.1:5000"
    assert runs_url(base, "3") == f"{base}/#/experiments/3/runs?workflowType=machine_learning"
    assert runs_url(base, "3", view="mskd").endswith("runs?workflowType=machine_learning&viewStateShareKey=mskd")
    assert runs_url(base, "3", "abc", path="artifacts/x.png") == (
        f"{base}/#/experiments/3/runs/abc/artifacts/x.png?workflowType=machine_learning"
    )


@pytest.fixture
def store(tmp_path, empty_store):
    """A store with a bundle experiment (its shared view stored), an experiment without one, and an empty one."""
    from tests.mlflow_store import copy_store

    uri = copy_store(empty_store, tmp_path)
    client = MlflowClient(tracking_uri=uri)
    bundle = client.create_experiment("mskd_synapse")
    client.set_experiment_tag(bundle, "mlflow.sharedViewState.mskd", "{}")
    for name in ("unet-teacher-s0", "unet-teacher-s0-test"):
        client.create_run(bundle, run_name=name)
    client.create_run(client.create_experiment("other"), run_name="r")
    client.create_experiment("empty")
    return tmp_path / "mlruns.db", bundle


def test_every_experiment_with_runs_gets_its_runs_table(store):
    path, bundle = store
    pages = experiment_pages(path, "http://h:1")
    assert pages[0] == ("mskd_synapse", 2, runs_url("http://h:1", bundle, view="mskd"))
    assert [(name, runs) for name, runs, _ in pages] == [("mskd_synapse", 2), ("other", 1)]
    assert "viewStateShareKey" not in pages[1][2]  # no shared view stored: the plain runs table


def test_a_missing_store_says_how_to_make_one(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no MLflow store at .*: train first \(`make demo`"):
        experiment_pages(tmp_path / "none.db", "http://h:1")


def test_mskd_ui_prints_the_addresses_then_serves(store, monkeypatch, capsys):
    path, bundle = store
    started = []
    monkeypatch.setattr(subprocess, "run", lambda command, check: started.append(command))
    assert main(["ui", "--store", str(path), "--port", "5123"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"MLflow UI of {path} at http://127.0.0.1:5123 (Ctrl-C stops it)")
    assert out[1] == f"  mskd_synapse (2 runs): {runs_url('http://127.0.0.1:5123', bundle, view='mskd')}"
    assert started == [mlflow_server(path, 5123)]
