import pytest
from mlflow.tracking import MlflowClient

from mskd.tracking import close_stale_runs, run_name, run_params, tracking_uri


def test_default_store_is_sqlite_in_output_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = tracking_uri(tmp_path / "out")
    assert uri.startswith("sqlite:///") and uri.endswith("out/mlruns.db")
    assert (tmp_path / "out").is_dir()


def test_env_var_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    assert tracking_uri(tmp_path) == "sqlite:///elsewhere.db"


def test_stale_runs_are_closed_not_resumed(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = tracking_uri(tmp_path)
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("e")
    stale = client.create_run(exp, run_name="r").info.run_id
    other = client.create_run(exp, run_name="other").info.run_id
    with pytest.warns(UserWarning, match="left RUNNING"):
        assert close_stale_runs(uri, "e", "r") == 1
    assert client.get_run(stale).info.status == "FAILED"
    assert client.get_run(other).info.status == "RUNNING"
    assert close_stale_runs(uri, "missing-experiment", "r") == 0


def test_run_params_are_strings():
    assert run_params(a=1, b=[1, 2], c="x" * 600) == {"a": "1", "b": "[1, 2]", "c": "x" * 500}


def test_run_name_says_what_a_run_is():
    assert run_name("tiny_unet_from_unet", "mskd", 0) == "tiny_unet_from_unet-mskd-s0"
