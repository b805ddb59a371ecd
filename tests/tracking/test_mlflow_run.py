"""MlflowRun finds the run MONAI's MLFlowHandler logs to, even where MONAI resumes an unfinished run."""

from __future__ import annotations

import pytest
from ignite.engine import Engine
from mlflow import MlflowClient
from monai.handlers import MLFlowHandler

from mskd.tracking import MlflowRun


@pytest.fixture
def uri(mlflow_uri):
    return mlflow_uri


def test_same_run_as_monai_then_after_closing(uri):
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("e")
    client.create_run(experiment, run_name="other")
    old = client.create_run(experiment, run_name="r").info.run_id  # left unfinished: MONAI appends to it
    client.set_terminated(client.create_run(experiment, run_name="r").info.run_id, "FINISHED")
    handler = MLFlowHandler(tracking_uri=uri, experiment_name="e", run_name="r")
    handler.start(Engine(lambda e, b: None))
    assert handler.cur_run.info.run_id == old
    logger = MlflowRun(uri, "e", "r")
    assert logger.run_id() == old
    handler.close()
    logger.forget()
    assert logger.run_id() == old  # every run closed: the one closed last, though another started later
    new = client.create_run(experiment, run_name="r").info.run_id
    client.set_terminated(new, "FINISHED")
    logger.forget()
    assert logger.run_id() == new


def test_given_run_id_is_used_without_look_up(uri):
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("e")
    first = client.create_run(experiment, run_name="r").info.run_id
    client.create_run(experiment, run_name="r")  # MONAI's look-up would pick another run of that name
    logger = MlflowRun(uri, run_id=first)
    logger.forget()
    assert logger.run_id() == first and logger.display_name() == "r"
    assert MlflowRun(uri, run_name="shown", run_id=first).display_name() == "shown"
    assert MlflowRun(None).display_name() == ""


def test_tags_metrics_artifacts(uri, tmp_path):
    client = MlflowClient(tracking_uri=uri)
    run_id = client.create_run(client.create_experiment("e"), run_name="r").info.run_id
    logger = MlflowRun(uri, "e", "r")
    logger.set_tags({"a": 1, "b": None})
    logger.log_metrics({"m": 2.5}, step=3)
    (tmp_path / "f.txt").write_text("x")
    logger.log_artifact(tmp_path / "f.txt", "sub")
    run = client.get_run(run_id)
    assert run.data.tags["a"] == "1" and "b" not in run.data.tags
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "m")] == [(3, 2.5)]
    assert [a.path for a in client.list_artifacts(run_id, "sub")] == ["sub/f.txt"]


def test_disabled_without_uri(tmp_path):
    logger = MlflowRun(None, None, None)
    assert not logger.enabled
    logger.log_artifact(tmp_path / "missing.png")  # nothing happens
    logger.set_tags({"a": 1})


@pytest.mark.parametrize(
    "experiment, run, match",
    [("missing", "r", "experiment 'missing' not found"), ("e", "missing", "no MLflow run named 'missing'")],
)
def test_missing_run_says_what_to_attach(uri, experiment, run, match):
    MlflowClient(tracking_uri=uri).create_experiment("e")
    with pytest.raises(RuntimeError, match=match + ".*attach a MONAI MLFlowHandler"):
        MlflowRun(uri, experiment, run).run_id()


def test_uri_without_names():
    with pytest.raises(ValueError, match="pass run_id, or experiment_name and run_name"):
        MlflowRun("sqlite:///x.db", "e", None)


def test_a_read_the_store_refuses_gives_the_default_and_one_warning(uri, monkeypatch):
    from mlflow.exceptions import MlflowException

    import mskd.tracking.store

    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(client.create_experiment("e"), run_name="r").info.run_id
    logger = MlflowRun(uri, run_id=run)
    assert logger.read(lambda: logger.client.get_run(run).info.run_name, default="?") == "r"
    monkeypatch.setattr(mskd.tracking.store, "LOG_BACKOFF_S", 0.0)

    def locked():
        raise MlflowException("(sqlite3.OperationalError) database is locked")

    with pytest.warns(UserWarning, match="refused a log call of run") as warned:
        assert logger.read(locked, default={}) == {}
        assert logger.read(locked, default=None) is None
    assert len(warned) == 1


def test_tracking_off_contacts_nothing(tmp_path):
    """``enabled`` false (also ``"false"`` from a command line): no store is made, logging does nothing."""
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    run = MlflowRun(uri, "e", "r", enabled="false")
    assert not run.enabled and run.open() is None
    run.log_metrics({"m": 1.0})
    run.set_tags({"t": "v"})
    assert run.read(lambda: 1 / 0, default="off") == "off"
    run.run(_one_epoch(lambda e, b: None))
    assert not (tmp_path / "mlruns.db").exists()
    with pytest.raises(ValueError, match="mlflow"):
        MlflowRun(uri, "e", "r", enabled="maybe")


def test_open_closes_stale_runs_and_run_ends_a_failed_one(uri):
    """:meth:`MlflowRun.open` makes a new run and fails a stale one of the same name; :meth:`MlflowRun.run` ends the
    run FAILED when the engine raises, and the error goes on."""
    client = MlflowClient(tracking_uri=uri)
    stale = client.create_run(client.create_experiment("e"), run_name="r").info.run_id
    run = MlflowRun(uri, "e", "r")
    with pytest.warns(UserWarning, match="left RUNNING by an earlier process"):
        opened = run.open()
    assert opened != stale and run.run_id() == opened
    assert client.get_run(stale).info.status == "FAILED" and client.get_run(opened).info.status == "RUNNING"

    def fail(engine, batch):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run.run(_one_epoch(fail))
    assert client.get_run(opened).info.status == "FAILED"


def _one_epoch(step):
    """An engine that runs one iteration of ``step`` when :meth:`MlflowRun.run` calls its ``run()``."""
    engine = Engine(step)
    engine.run = lambda: Engine.run(engine, [0], max_epochs=1)
    return engine
