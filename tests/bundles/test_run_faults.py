"""Faults during a training end its MLflow run as they should, and two trainings of one run are kept apart.

A training that raises (or is interrupted) ends its run ``FAILED`` (``KILLED``) and the error propagates; a store
locked mid-training costs a few skipped log calls and one warning, not the training; a second process on a run that
another one trains is refused in one line naming that process, before it touches the store or the checkpoint. The
bundle runs in-process (``monai.bundle.run``) on a tiny phantom, or in a subprocess where two processes are needed.
"""

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import sqlalchemy
from ignite.engine import Engine, Events

from mskd.data.phantom import generate_phantom_dataset
from mskd.engines.checkpointing import RUN_LOCK, lock_run_dir
from tests.bundles.runner import BUNDLES, mlflow_runs
from tests.mlflow_store import copy_store

BUNDLE = BUNDLES / "mskd_synapse"
CONFIGS = BUNDLE / "configs"
ROOT = Path(__file__).resolve().parents[2]
RUN = "unet-teacher-s0"
# the CPU networks and tiny sizes of tests/bundles/runner.py, as Python values for an in-process run
TINY = {"teacher": "unet", "student": "tiny_unet", "image_size": 32, "max_epochs": 1, "val_interval": 1}
TINY |= {"batch_size": 2, "slices_per_volume": 2, "num_val_cases": 1, "val_slice_batch": 8, "log_every": 1}
TIMEOUT_S = 120


class Injected(Exception):
    """The error a test makes an iteration raise."""


class RaiseAt:
    """Test handler: raise ``error`` (``"Injected"`` or ``"KeyboardInterrupt"``) at the end of ``iteration``."""

    def __init__(self, iteration: int, error: str) -> None:
        self.iteration, self.error = iteration, {"Injected": Injected, "KeyboardInterrupt": KeyboardInterrupt}[error]

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED(once=self.iteration), self.fire)

    def fire(self, engine: Engine) -> None:
        raise self.error(f"injected at iteration {engine.state.iteration}")


class LockStore:
    """Test handler: another connection holds an exclusive lock on the SQLite store ``store`` from the start of the
    first iteration to the end of the first epoch (validation included): every log call of that time is refused."""

    def __init__(self, store: str) -> None:
        self.connection = sqlite3.connect(store, isolation_level=None, check_same_thread=False)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_STARTED(once=1), self.take)
        engine.add_event_handler(Events.EPOCH_COMPLETED(once=1), self.release)

    def take(self, engine: Engine) -> None:
        self.connection.execute("BEGIN EXCLUSIVE")

    def release(self, engine: Engine) -> None:
        self.connection.execute("COMMIT")
        self.connection.close()


class WaitFor:
    """Test handler: at the end of iteration 1, write ``marker``, then wait (a minute at most) for ``release``."""

    def __init__(self, marker: str, release: str) -> None:
        self.marker, self.release = Path(marker), Path(release)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED(once=1), self.wait)

    def wait(self, engine: Engine) -> None:
        self.marker.write_text(str(os.getpid()))
        deadline = time.monotonic() + 60
        while not self.release.exists() and time.monotonic() < deadline:
            time.sleep(0.05)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults")
    generate_phantom_dataset(root / "data", cases=3, size=(32, 32, 16), test_cases=1)
    return root / "data"


@pytest.fixture
def root(tmp_path, empty_store, monkeypatch) -> Path:
    """``tmp_path`` with a ready MLflow store in its output folder (creating one takes seconds)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    copy_store(empty_store, tmp_path / "output")
    return tmp_path


def _config(root: Path, handler: dict) -> str:
    """A config file adding ``handler`` to the training's handlers."""
    path = root / f"{handler['_target_'].rsplit('.', 1)[1]}.json"
    path.write_text(json.dumps({"+train#handlers": {"fault": handler}}))
    return str(path)


def _train(root: Path, data: Path, *extra: str) -> None:
    from monai.bundle import run

    files = [str(CONFIGS / "train_teacher.json"), *extra]
    dirs = {"output_dir": str(root / "output"), "ckpt_dir": str(root / "models")}
    run(config_file=files, bundle_root=str(BUNDLE), dataset_dir=str(data), **dirs, **TINY)


pytestmark = pytest.mark.e2e


# --- a failed training ends its run ------------------------------------------------------------------------------


@pytest.mark.parametrize("error, status", [("Injected", "FAILED"), ("KeyboardInterrupt", "KILLED")])
def test_a_training_that_raises_ends_its_run_and_the_error_propagates(data, root, error, status):
    handler = _config(root, {"_target_": "tests.bundles.test_run_faults.RaiseAt", "iteration": 1, "error": error})
    with pytest.raises(BaseException) as raised:
        _train(root, data, handler)
    # MONAI wraps an Exception raised by a config expression in RuntimeError("Failed to evaluate ..."); not Ctrl-C
    original = raised.value if error == "KeyboardInterrupt" else raised.value.__cause__
    assert type(original).__name__ == error and str(original) == "injected at iteration 1"
    _, runs = mlflow_runs(root, "mskd_synapse")
    assert runs[RUN].info.status == status


# --- a store locked mid-training -----------------------------------------------------------------------------------


@pytest.fixture
def short_sqlite_waits():
    """MLflow makes SQLite wait 20 s for a lock before it refuses a call; 0.2 s keeps the test short."""

    def shorten(conn, cursor, statement, parameters, context, executemany):
        return statement.replace("busy_timeout = 20000", "busy_timeout = 200"), parameters

    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "before_cursor_execute", shorten, retval=True)
    yield
    sqlalchemy.event.remove(sqlalchemy.engine.Engine, "before_cursor_execute", shorten)


def test_a_store_locked_mid_training_costs_log_calls_and_one_warning(data, root, short_sqlite_waits, capfd):
    store = root / "output" / "mlruns.db"
    handler = _config(root, {"_target_": "tests.bundles.test_run_faults.LockStore", "store": str(store)})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _train(root, data, handler)
    refused = [str(w.message) for w in caught if "refused a log call" in str(w.message)]
    assert len(refused) == 1 and f"MLflow store 'sqlite:///{store}'" in refused[0]
    assert "database is locked" in refused[0]
    assert "SQLAlchemy database error" not in capfd.readouterr().err  # MLflow's traceback per try is left out
    client, runs = mlflow_runs(root, "mskd_synapse")
    run = runs[RUN]
    assert run.info.status == "FINISHED"  # closed after the lock was released
    assert 1 not in {m.step for m in client.get_metric_history(run.info.run_id, "loss")}  # skipped while locked
    assert (root / "models" / f"{RUN}.pt").is_file() and (root / "output" / "checkpoints" / RUN / "latest.pt").is_file()


# --- two trainings of one run ----------------------------------------------------------------------------------------


def _launch(root: Path, data: Path, *extra: str) -> subprocess.Popen:
    """The training of ``_train`` as a user types it, in another process (logs in ``root/first.log``)."""
    files = "[" + ",".join(f"'{f}'" for f in [CONFIGS / "train_teacher.json", *extra]) + "]"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", files, "--bundle_root", str(BUNDLE)]
    cmd += ["--dataset_dir", str(data), "--output_dir", str(root / "output"), "--ckpt_dir", str(root / "models")]
    cmd += [a for key, value in TINY.items() for a in (f"--{key}", str(value))]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    log = open(root / "first.log", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def test_a_second_training_of_a_running_run_is_refused_in_one_line(data, root, capsys):
    marker, release = root / "first-at-iteration-1", root / "release"
    waiting = {"_target_": "tests.bundles.test_run_faults.WaitFor", "marker": str(marker), "release": str(release)}
    first = _launch(root, data, _config(root, waiting))
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not marker.exists():
            assert first.poll() is None and time.monotonic() < deadline, (root / "first.log").read_text()[-3000:]
            time.sleep(0.1)
        _, runs = mlflow_runs(root, "mskd_synapse")
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            _train(root, data)
        assert exit_info.value.code == 2
        lock = (root / "output" / "checkpoints" / RUN / RUN_LOCK).resolve()
        [line] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mskd:")]
        assert line == (
            f"mskd: run '{RUN}' is being trained by process {first.pid} on {socket.gethostname()} (lock file "
            f"{lock}); wait for it to end or stop it, or train another run (another --seed or --output_dir)"
        )
        _, during = mlflow_runs(root, "mskd_synapse")
        assert list(during) == [RUN] and during[RUN].info.status == "RUNNING"  # not marked FAILED by the second
        assert during[RUN].info.run_id == runs[RUN].info.run_id
    finally:
        release.touch()
        first.wait(timeout=TIMEOUT_S)
    assert first.returncode == 0, (root / "first.log").read_text()[-3000:]
    _, after = mlflow_runs(root, "mskd_synapse")
    assert list(after) == [RUN] and after[RUN].info.status == "FINISHED"
    assert lock.read_text() == ""  # released at exit


_HOLD = """
import sys, time
from mskd.engines.checkpointing import lock_run_dir
lock_run_dir(sys.argv[1])
print("held", flush=True)
time.sleep(120)
"""


def test_a_run_folder_held_by_a_killed_process_is_taken_over_with_a_warning(tmp_path, capsys):
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path / RUN)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(SystemExit):
            lock_run_dir(tmp_path / RUN)
        assert f"by process {holder.pid} on " in capsys.readouterr().err
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = (tmp_path / RUN / RUN_LOCK).resolve()
    with pytest.warns(UserWarning, match=rf"process {holder.pid} on \S+ ended without releasing run '{RUN}' \(killed"):
        assert lock_run_dir(tmp_path / RUN) == lock
    assert lock.read_text() == f"{os.getpid()} {socket.gethostname()}\n"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert lock_run_dir(tmp_path / RUN) == lock  # this process holds it already


def test_only_rank_0_locks_the_run_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    assert lock_run_dir(tmp_path / RUN) is None and not (tmp_path / RUN).exists()


def test_a_filesystem_without_locks_is_reported_and_not_fatal(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.warns(UserWarning, match=rf"cannot lock .*{RUN_LOCK} \(No locks available\): two trainings of run"):
        assert lock_run_dir(tmp_path / RUN) is None
