import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from monai.bundle import ConfigParser
from monai.utils import path_to_sqlite_uri

import mskd.tracking.store
from mskd.io import TMP_PREFIX
from mskd.tracking import (
    LOG_ATTEMPTS,
    TrackingError,
    check_tracking_uri,
    close_stale_runs,
    log_or_skip,
    open_run,
    run_name,
    run_params,
    run_tracked,
    save_executed_config,
    tracking_uri,
)

FIX = "fix --tracking_uri (or MLFLOW_TRACKING_URI), or run without MLflow: --mlflow false"


def test_default_store_is_sqlite_in_output_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = tracking_uri(tmp_path / "out")
    assert uri.startswith("sqlite:///") and uri.endswith("out/mlruns.db")
    assert not (tmp_path / "out").exists()  # made when a run is opened, not when a config is read
    check_tracking_uri(uri)
    assert (tmp_path / "out" / "mlruns.db").is_file()


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
def test_a_bad_tracking_uri_is_one_clear_line_raised_in_process(tmp_path, capsys, uri, reason):
    """A library raises (a host process gets the exception, never a SystemExit); the command lines turn it into one
    line and exit status 2 (tests/bundles/test_tracking_failures.py, tests/test_cli.py)."""
    (tmp_path / "a_file").write_text("not a folder")
    uri = uri.format(file=tmp_path / "a_file", tmp=tmp_path)
    with pytest.raises(TrackingError, match=re.escape(reason)):
        check_tracking_uri(uri, timeout=2)
    with pytest.raises(TrackingError) as info:
        open_run(uri, "e", "r")
    [line] = str(info.value).splitlines()
    assert line.startswith("MLflow tracking ") and repr(uri) in line and reason in line
    assert line.endswith("fix --tracking_uri (or MLFLOW_TRACKING_URI), or run without MLflow: --mlflow false")
    assert capsys.readouterr().err == ""  # nothing printed: the caller reports it
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ  # the quick-check settings are undone


def test_a_bundle_reports_an_unusable_store_as_a_problem_of_tracking_uri(tmp_path, monkeypatch, capsys):
    """``$mskd.validation.open_tracking(@mlflow_run, ...)``: the exception in-process, one line and exit 2 on
    MONAI's command line."""
    from mskd.tracking import MlflowRun
    from mskd.validation import ValidationError, open_tracking

    run = MlflowRun("http://127.0.0.1:9", "e", "r")
    with pytest.raises(ValidationError) as info:
        open_tracking(run)
    [line] = info.value.lines
    assert line.startswith("tracking_uri: MLflow tracking store 'http://127.0.0.1:9' is unreachable or invalid (")
    assert isinstance(info.value.__context__, TrackingError) and run.given_run_id is None
    monkeypatch.setattr("mskd.validation._bundle_command_line", lambda: True)
    with pytest.raises(SystemExit) as exit_info:
        open_tracking(run)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[1] == f"  - {line}"
    assert open_tracking(MlflowRun("http://127.0.0.1:9", "e", "r", enabled=False)) is None  # tracking off


def test_a_deleted_experiment_is_refused(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(tracking_uri=uri)
    client.delete_experiment(client.create_experiment("e"))
    with pytest.raises(TrackingError, match="MLflow experiment 'e' is deleted"):
        open_run(uri, "e", "r")


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


# --- a failed training ends its run -----------------------------------------------------------------------------


class Injected(Exception):
    """The error a test makes an iteration raise."""


class _Trainer(Engine):
    """An ignite engine that runs its own three batches, as MONAI's trainers do: ``run()`` without arguments."""

    def __init__(self, fail_at: int | None = None, error: BaseException | None = None, swallow: bool = False):
        super().__init__(self._step)
        self.fail_at, self.error = fail_at, error
        if swallow:  # a handler that does not re-raise, as a progress bar's close
            self.add_event_handler(Events.EXCEPTION_RAISED, lambda engine, e: None)

    def _step(self, engine, batch):
        if engine.state.iteration == self.fail_at:
            raise self.error

    def run(self):
        return super().run([0, 1, 2], max_epochs=1)


def _new_run(uri):
    client = MlflowClient(tracking_uri=uri)
    return client, client.create_run(client.create_experiment("e"), run_name="r").info.run_id


@pytest.mark.parametrize("swallow", [False, True], ids=["reraised", "swallowed_by_a_handler"])
@pytest.mark.parametrize("error, status", [(Injected, "FAILED"), (KeyboardInterrupt, "KILLED")])
def test_a_failed_engine_ends_its_run_and_raises_the_same_exception(mlflow_uri, error, status, swallow):
    client, run_id = _new_run(mlflow_uri)
    raised = error("in iteration 2")
    with pytest.raises(error) as info:
        run_tracked(_Trainer(fail_at=2, error=raised, swallow=swallow), mlflow_uri, run_id)
    assert info.value is raised
    assert client.get_run(run_id).info.status == status


def test_a_finished_engine_leaves_its_run_to_the_mlflow_handler(mlflow_uri):
    client, run_id = _new_run(mlflow_uri)
    assert run_tracked(_Trainer(), mlflow_uri, run_id).iteration == 3
    assert client.get_run(run_id).info.status == "RUNNING"  # MLFlowHandler(close_on_complete) ends it FINISHED


def test_with_tracking_off_the_engine_just_runs():
    with pytest.raises(Injected):  # and no store is contacted
        run_tracked(_Trainer(fail_at=1, error=Injected()), "http://127.0.0.1:9", None)


def test_a_store_that_cannot_mark_the_run_does_not_hide_the_failure():
    with pytest.warns(UserWarning, match=r"could not mark MLflow run abc FAILED in 'http://127\.0\.0\.1:9' \("):
        with pytest.raises(Injected):
            run_tracked(_Trainer(fail_at=1, error=Injected()), "http://127.0.0.1:9", "abc")


_OPEN_THEN_DIE = """
import sys
from mskd.tracking import open_run
open_run(sys.argv[1], "e", "r")
raise {error}
"""


@pytest.mark.parametrize(
    "error, status", [("ValueError('building the trainer failed')", "FAILED"), ("KeyboardInterrupt", "KILLED")]
)
def test_a_run_whose_process_dies_before_training_is_ended_at_exit(mlflow_uri, error, status):
    script = _OPEN_THEN_DIE.format(error=error)
    proc = subprocess.run([sys.executable, "-c", script, mlflow_uri], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and error.split("(")[0] in proc.stderr
    client = MlflowClient(tracking_uri=mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("e").experiment_id])
    assert run.info.status == status


# --- the store: created whole or not at all, refused at once when it cannot be written -------------------------


def test_a_store_whose_creation_fails_midway_leaves_none(tmp_path, monkeypatch):
    import mlflow.store.db.utils

    def migration_fails(engine):
        raise RuntimeError("killed mid-migration")

    uri = path_to_sqlite_uri(str(tmp_path / "out" / "mlruns.db"))
    monkeypatch.setattr(mlflow.store.db.utils, "_upgrade_db", migration_fails)
    with pytest.raises(TrackingError, match=re.escape("(killed mid-migration)")):
        open_run(uri, "e", "r")
    assert os.listdir(tmp_path / "out") == []  # neither a store nor its temporary
    monkeypatch.undo()
    run_id = open_run(uri, "e", "r")
    assert MlflowClient(tracking_uri=uri).get_run(run_id).info.status == "RUNNING"


def test_a_store_creation_killed_midway_leaves_no_store(tmp_path):
    folder = tmp_path / "out"
    uri = path_to_sqlite_uri(str(folder / "mlruns.db"))
    script = "import sys; from mskd.tracking import check_tracking_uri; check_tracking_uri(sys.argv[1])"
    proc = subprocess.Popen([sys.executable, "-c", script, uri], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not any(p.stat().st_size for p in folder.glob(f"{TMP_PREFIX}*-mlruns.db")):  # the migration has begun
        assert proc.poll() is None and time.monotonic() < deadline, "the store creation never started"
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (folder / "mlruns.db").exists()
    old = time.time() - 3600
    for left in folder.glob(f"{TMP_PREFIX}*"):
        os.utime(left, (old, old))  # as if the kill was long ago: the next creation removes what it left
    run_id = open_run(uri, "e", "r")
    assert MlflowClient(tracking_uri=uri).get_run(run_id).info.status == "RUNNING"
    assert os.listdir(folder) == ["mlruns.db"]


# MLflow itself never says "cannot write in": the refusal comes from mskd's check, before MLflow's retries start
_OPEN = """
import sys
from mlflow.tracking import MlflowClient
from mskd.tracking import TrackingError, open_run
MlflowClient.__init__ = lambda *a, **k: sys.exit("MLflow was contacted")
try:
    open_run(sys.argv[1], "e", "r")
except TrackingError as e:
    print(f"refused: {e}")
"""


def _as_unprivileged() -> list[str]:
    """A command prefix that runs a command without root's rights (root writes anywhere), or ``[]`` when not root."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv to drop root's rights")
    # setpriv, not subprocess's user=: the interpreter may lie under /root, which only root can reach at exec time
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def test_a_store_in_a_folder_this_process_cannot_write_is_refused_at_once():
    prefix = _as_unprivileged()
    with tempfile.TemporaryDirectory(prefix="mskd-test-") as base:  # in /tmp, which an unprivileged user can reach
        os.chmod(base, 0o755)
        folder = Path(base) / "read-only"
        folder.mkdir(mode=0o555)
        uri = path_to_sqlite_uri(str(folder / "mlruns.db"))
        env = {**os.environ, "HOME": base, "MPLCONFIGDIR": base}
        cmd = [*prefix, sys.executable, "-c", _OPEN, uri]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.stdout == (
        f"refused: MLflow tracking store {uri!r} is unreachable or invalid (cannot write in {folder} (Permission "
        f"denied)); {FIX}\n"
    ), proc.stdout + proc.stderr


# --- a store that refuses a log call never stops the training ---------------------------------------------------


@pytest.fixture
def quick_retries(monkeypatch):
    monkeypatch.setattr(mskd.tracking.store, "LOG_BACKOFF_S", 0.0)
    monkeypatch.setattr(mskd.tracking.store, "_REFUSING", set())
    monkeypatch.setattr(mskd.tracking.store, "_WARNED", set())


class _Store:
    """A log call the store refuses ``refusals`` times, then accepts."""

    def __init__(self, refusals: float, error: Exception | None = None):
        self.refusals, self.calls = refusals, 0
        self.error = error or MlflowException("(sqlite3.OperationalError) database is locked\n[SQL: INSERT ...]")

    def __call__(self):
        self.calls += 1
        if self.calls <= self.refusals:
            raise self.error
        return "logged"


def test_a_refused_log_call_is_tried_again(quick_retries, recwarn):
    call = _Store(refusals=LOG_ATTEMPTS - 1)
    assert log_or_skip(call, "sqlite:///s.db", "run1") == "logged"
    assert call.calls == LOG_ATTEMPTS and not recwarn.list


def test_a_store_that_keeps_refusing_is_skipped_with_one_warning_per_run(quick_retries, recwarn):
    locked = _Store(refusals=float("inf"))
    assert log_or_skip(locked, "sqlite:///s.db", "run1") is None
    assert log_or_skip(locked, "sqlite:///s.db", "run1") is None  # tried once while the store keeps refusing
    assert locked.calls == LOG_ATTEMPTS + 1
    assert log_or_skip(lambda: "logged", "sqlite:///s.db", "run1") == "logged"
    assert log_or_skip(locked, "sqlite:///s.db", "run1") is None  # accepted meanwhile: full tries again
    assert locked.calls == 2 * LOG_ATTEMPTS + 1
    full = _Store(refusals=float("inf"), error=OSError(28, "No space left on device"))
    assert log_or_skip(full, "sqlite:///s.db", "run2") is None
    messages = [str(w.message) for w in recwarn.list]
    assert len(messages) == 2  # one per run
    assert re.fullmatch(
        rf"MLflow store 'sqlite:///s\.db' refused a log call of run run1 {LOG_ATTEMPTS} times in \d+\.\d s "
        r"\(\(sqlite3\.OperationalError\) database is locked\); skipping it, and any later one it refuses, while the "
        r"training goes on",
        messages[0],
    )
    assert "of run run2" in messages[1] and "No space left on device" in messages[1]


def test_a_log_call_inside_another_is_tried_as_part_of_it(quick_retries):
    inner = _Store(refusals=float("inf"))
    with pytest.warns(UserWarning, match="refused a log call of run run1"):
        assert log_or_skip(lambda: log_or_skip(inner, "s", "run1"), "s", "run1") is None
    assert inner.calls == LOG_ATTEMPTS


def test_errors_other_than_the_stores_are_raised(quick_retries):
    bug = _Store(refusals=1, error=TypeError("a bug, not the store"))
    with pytest.raises(TypeError, match="a bug"):
        log_or_skip(bug, "s", "run1")
    assert bug.calls == 1
