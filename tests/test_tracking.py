import json
import os
import re

import pytest
import torch
from mlflow.tracking import MlflowClient
from monai.bundle import ConfigParser

from mskd.tracking import (
    TrackingError,
    check_tracking_uri,
    close_stale_runs,
    open_run,
    run_name,
    run_params,
    save_executed_config,
    tracking_uri,
)


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


def test_stale_runs_other_than_the_resumed_one_are_closed(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = tracking_uri(tmp_path)
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("e")
    resumed = client.create_run(exp, run_name="r").info.run_id
    stale = client.create_run(exp, run_name="r").info.run_id
    with pytest.warns(UserWarning, match=f"marking it FAILED \\(this run logs to {resumed}\\)"):
        assert close_stale_runs(uri, "e", "r", keep=resumed) == 1
    assert client.get_run(resumed).info.status == "RUNNING" and client.get_run(stale).info.status == "FAILED"


def _checkpoint(path, run_id):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"trainer": {"iteration": 1, "epoch_length": 4, "max_epochs": 2}, "run": {"run_id": run_id}}, path)
    return path


def test_open_run_creates_a_run_or_reopens_the_checkpointed_one(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    new = open_run(uri, "e", "r")
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(new)
    assert run.info.run_name == "r" and run.info.status == "RUNNING"
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "e" and experiment.artifact_location == (tmp_path / "mlruns").as_uri()
    client.set_terminated(new, "FAILED")
    assert open_run(uri, "e", "r", resume_from=_checkpoint(tmp_path / "latest.pt", new)) == new
    assert client.get_run(new).info.status == "RUNNING"
    assert open_run(uri, "e", "r", resume_from=_checkpoint(tmp_path / "latest.pt", new)) == new  # still running


def test_open_run_logs_to_a_new_run_when_the_checkpointed_one_is_elsewhere(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    other = open_run(f"sqlite:///{tmp_path / 'other.db'}", "e", "r")
    with pytest.warns(UserWarning, match=f"logged to MLflow run {other}, which is not in experiment 'e'"):
        run_id = open_run(uri, "e", "r", resume_from=_checkpoint(tmp_path / "latest.pt", other))
    assert run_id != other and MlflowClient(tracking_uri=uri).get_run(run_id).info.status == "RUNNING"


def test_open_run_with_tracking_off_contacts_nothing(tmp_path):
    assert open_run("http://127.0.0.1:9", "e", "r", enabled=False) is None
    assert open_run("http://127.0.0.1:9", "e", "r", enabled="false") is None
    with pytest.raises(ValueError, match="mlflow must be true or false, got 'maybe'"):
        open_run("http://127.0.0.1:9", "e", "r", enabled="maybe")


@pytest.mark.parametrize(
    "uri, reason",
    [
        ("http://127.0.0.1:9", "is unreachable or invalid (API request to http://127.0.0.1:9"),
        ("sqlite:///{file}/x.db", "is unreachable or invalid ("),
        ("garbage://host", "is unreachable or invalid ("),
        ("{tmp}/mlruns", "is a local folder, which MLflow 3 no longer supports"),
        ("file://{tmp}/mlruns", "is a local folder, which MLflow 3 no longer supports"),
    ],
)
def test_a_bad_tracking_uri_is_one_clear_line_and_exit_status_2(tmp_path, capsys, uri, reason):
    (tmp_path / "a_file").write_text("not a folder")
    uri = uri.format(file=tmp_path / "a_file", tmp=tmp_path)
    with pytest.raises(TrackingError, match=re.escape(reason)):
        check_tracking_uri(uri, timeout=2)
    with pytest.raises(SystemExit) as exit_info:
        open_run(uri, "e", "r")
    assert exit_info.value.code == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("mskd: MLflow tracking ") and repr(uri) in line and reason in line
    assert line.endswith("fix --tracking_uri (or MLFLOW_TRACKING_URI), or run without MLflow: --mlflow false")
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ  # the quick-check settings are undone


def test_a_deleted_experiment_is_refused(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(tracking_uri=uri)
    client.delete_experiment(client.create_experiment("e"))
    with pytest.raises(SystemExit):
        open_run(uri, "e", "r")
    assert "MLflow experiment 'e' is deleted" in capsys.readouterr().err


def _save_from_config(path):
    config = {"value": 1, "saved": f"$mskd.tracking.save_executed_config({str(path)!r})"}
    return ConfigParser(config, globals={"mskd": "mskd"}).get_parsed_content("saved")


def test_executed_config_is_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / "run.config.json"
    assert _save_from_config(path) == str(path)
    assert json.loads(path.read_text())["value"] == 1

    def partial(config, filepath, **kwargs):
        with open(filepath, "w") as f:
            f.write('{"value": ')
        raise OSError("disk full")

    monkeypatch.setattr(ConfigParser, "export_config_file", staticmethod(partial))
    with pytest.raises(RuntimeError) as info:  # MONAI wraps what a config expression raises
        _save_from_config(path)
    assert isinstance(info.value.__cause__, OSError)
    assert json.loads(path.read_text())["value"] == 1 and os.listdir(tmp_path) == ["run.config.json"]
    with pytest.raises(RuntimeError, match="must be called from a MONAI bundle config expression"):
        save_executed_config(path)
