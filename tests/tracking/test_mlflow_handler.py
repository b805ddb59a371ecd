import pytest
from ignite.engine import Engine
from mlflow.tracking import MlflowClient

from mskd.tracking import MLFlowHandler, MlflowRun, open_run


def _engine(losses):
    """An engine whose output at iteration i is losses[i - 1]."""
    return Engine(lambda e, batch: {"loss": losses[e.state.iteration - 1]})


def _handler(uri, run_id, **kwargs):
    return MLFlowHandler(
        MlflowRun(uri, "e", "r", run_id=run_id),
        output_transform=lambda out: {"loss": out["loss"]},
        close_on_complete=True,
        **kwargs,
    )


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    return uri, MlflowClient(tracking_uri=uri)


def test_logs_to_the_given_run_even_beside_failed_runs_of_the_same_name(store):
    uri, client = store
    stale = open_run(uri, "e", "r")
    client.set_terminated(stale, "FAILED")  # MONAI's own handler would pick this run up again
    run_id = open_run(uri, "e", "r")
    engine = _engine([1.0, 2.0])
    _handler(uri, run_id, experiment_param={"seed": "0"}).attach(engine)
    engine.run(range(2), max_epochs=1)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [1, 2]
    assert client.get_run(stale).data.metrics == {} and client.get_run(stale).info.status == "FAILED"


def test_a_resumed_run_is_not_logged_twice_at_a_step_nor_its_params_changed(store):
    uri, client = store
    run_id = open_run(uri, "e", "r")
    first = _engine([1.0, 2.0, 3.0, 4.0])
    _handler(uri, run_id, experiment_param={"seed": "0", "max_epochs": "2"}).attach(first)
    first.run(range(4), max_epochs=1, epoch_length=4)  # an interrupted process logged iterations 1..4
    client.update_run(run_id, status="RUNNING")

    resumed = _engine([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])  # recomputes iterations 1..4 (identically), then 5 and 6
    handler = _handler(uri, run_id, experiment_param={"seed": "0", "max_epochs": "3"})
    handler.attach(resumed)

    with pytest.warns(UserWarning, match=r"has param max_epochs = '2', this process has '3'; keeping the logged"):
        resumed.run(range(6), max_epochs=1, epoch_length=6)
    history = client.get_metric_history(run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(s, float(s)) for s in range(1, 7)]
    assert client.get_run(run_id).data.params["max_epochs"] == "2"
    assert client.get_run(run_id).info.status == "FINISHED"


def test_epoch_means_cover_the_iterations_the_logging_interval_skips(store):
    from mskd.engines import every

    uri, client = store
    run_id = open_run(uri, "e", "r")
    engine = _engine([1.0, 2.0, 3.0, 6.0, 10.0, 20.0])
    _handler(uri, run_id, iteration_log=every(10)).attach(engine)  # too short for the interval: no iteration logged
    engine.run(range(3), max_epochs=2)
    assert "loss" not in client.get_run(run_id).data.metrics
    history = client.get_metric_history(run_id, "epoch_mean_loss")
    assert sorted((m.step, m.value) for m in history) == [(3, 2.0), (6, 12.0)]  # at each epoch's last iteration


def test_no_epoch_means_without_iteration_logging(store):
    uri, client = store
    run_id = open_run(uri, "e", "r")
    engine = _engine([1.0, 2.0])
    _handler(uri, run_id, iteration_log=False).attach(engine)
    engine.run(range(2), max_epochs=1)
    assert client.get_run(run_id).data.metrics == {}


def test_without_run_id_it_is_monai_handler(store):
    uri, client = store
    engine = _engine([1.0])
    handler = _handler(uri, None)
    handler.attach(engine)
    engine.run(range(1), max_epochs=1)
    [run] = client.search_runs([client.get_experiment_by_name("e").experiment_id])
    assert run.info.run_name == "r" and run.data.metrics == {"loss": 1.0, "epoch_mean_loss": 1.0}
