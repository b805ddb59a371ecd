"""Resumable training end to end: a distillation killed with SIGKILL mid-epoch and relaunched ends exactly where an
uninterrupted one does: the same weights bit for bit, one MLflow run, and a metric history without gaps or repeats."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from mskd.data.phantom import generate_phantom_dataset
from mskd.networks import get_network
from tests.bundles.runner import BUNDLES, CPU_NETWORKS, output_dirs

BUNDLE = BUNDLES / "mskd_synapse"
ROOT = Path(__file__).resolve().parents[2]
STACK = ["train_teacher.json", "distill.json"]
RUN = "tiny_unet_from_unet-mskd-s0"
# 6 cases: 1 test, 1 validation, 4 training volumes; batch 1 -> 4 iterations per epoch, 12 in all.
EPOCHS, PER_EPOCH, EVERY = 3, 4, 3
SETTINGS = ["--image_size", "32", "--max_epochs", str(EPOCHS), "--val_interval", "1", "--batch_size", "1"]
SETTINGS += ["--slices_per_volume", "2", "--num_val_cases", "1", "--val_slice_batch", "8", "--log_every", "1"]
SETTINGS += ["--checkpoint_every", str(EVERY), *CPU_NETWORKS]
# Iteration checkpoints at 3, 6, 9 (none at 4, 8, 12: the epoch-end ones follow validation there). The first launch
# halts at 7, mid-epoch 2, so the relaunch resumes from iteration 6 (replaying 2 batches of epoch 2).
PAUSE_AT, RESUMED_AT = 7, 6
TIMEOUT_S = 100

pytestmark = pytest.mark.e2e


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(OMP_NUM_THREADS="1", MALLOC_MMAP_THRESHOLD_="17179869184", MALLOC_TRIM_THRESHOLD_="17179869184")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _launch(root: Path, data: Path, *extra_configs: Path) -> subprocess.Popen:
    files = [f"'{BUNDLE / 'configs' / f}'" for f in STACK] + [f"'{f}'" for f in extra_configs]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "[" + ",".join(files) + "]"]
    cmd += ["--bundle_root", str(BUNDLE), "--dataset_dir", str(data), *SETTINGS, *output_dirs(root)]
    log = open(root / f"log-{len(list(root.glob('log-*')))}.txt", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=ROOT, text=True)


def _finish(proc: subprocess.Popen, root: Path) -> None:
    try:
        proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.returncode != 0:
        logs = "\n".join(p.read_text()[-4000:] for p in sorted(root.glob("log-*")))
        raise AssertionError(f"training in {root} failed ({proc.returncode}):\n{logs}")


def _client(root: Path) -> tuple[MlflowClient, list]:
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'output' / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("mskd_synapse")
    return client, client.search_runs([experiment.experiment_id])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(a) an uninterrupted distillation; (b) the same, SIGKILLed at iteration 7 and relaunched."""
    base = tmp_path_factory.mktemp("resume")
    data = base / "data"
    generate_phantom_dataset(data, task="synapse", cases=6, seed=3, size=(32, 32, 16), test_cases=1)
    torch.manual_seed(0)  # distillation needs the teacher's architecture and some weights, not a trained teacher
    teacher = get_network("unet", 1, 9).state_dict()
    roots = {name: base / name for name in ("a", "b")}
    for root in roots.values():
        (root / "models").mkdir(parents=True)
        torch.save(teacher, root / "models" / "unet-teacher-s0.pt")
    marker = base / "paused"
    pause = base / "pause.json"
    handler = {"_target_": "tests.bundles.pause.PauseAt", "iteration": PAUSE_AT, "marker": str(marker)}
    pause.write_text(json.dumps({"+train#handlers": {"pause": handler}}))

    started = time.monotonic()
    uninterrupted = _launch(roots["a"], data)
    first = _launch(roots["b"], data, pause)
    while not marker.exists():
        if first.poll() is not None or time.monotonic() - started > TIMEOUT_S:
            first.kill()
            _finish(first, roots["b"])
            raise AssertionError(f"the first launch never reached iteration {PAUSE_AT}")
        time.sleep(0.2)
    latest = roots["b"] / "output" / "checkpoints" / RUN / "latest.pt"
    at_kill = torch.load(latest, map_location="cpu", weights_only=True)["trainer"]["iteration"]
    _, before = _client(roots["b"])
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    killed_at = time.monotonic() - started
    relaunch = _launch(roots["b"], data)
    _finish(relaunch, roots["b"])
    _finish(uninterrupted, roots["a"])
    total = time.monotonic() - started
    print(f"killed at iteration {PAUSE_AT} ({killed_at:.1f} s), resumed from {at_kill}, {total:.1f} s in all")
    return roots, at_kill, [(r.info.run_id, r.info.status) for r in before], first.returncode


def _checkpoint(root: Path, name: str) -> dict:
    if name == "latest":
        return torch.load(root / "output" / "checkpoints" / RUN / "latest.pt", map_location="cpu", weights_only=True)
    return torch.load(root / "models" / f"{RUN}.pt", map_location="cpu", weights_only=True)["model"]


def test_killed_run_resumes_from_its_last_iteration_checkpoint(runs):
    roots, at_kill, before, returncode = runs
    assert returncode == -signal.SIGKILL
    assert at_kill == RESUMED_AT and at_kill % PER_EPOCH != 0  # mid-epoch
    log = (roots["b"] / "log-1.txt").read_text()
    assert f"resumed from {roots['b'] / 'output' / 'checkpoints' / RUN / 'latest.pt'}" in log
    assert f"(replaying {RESUMED_AT % PER_EPOCH} batches of the epoch)" in log


def test_resumed_weights_equal_the_uninterrupted_ones_exactly(runs):
    roots, *_ = runs
    a, b = _checkpoint(roots["a"], "latest"), _checkpoint(roots["b"], "latest")
    assert a["trainer"]["iteration"] == b["trainer"]["iteration"] == EPOCHS * PER_EPOCH
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    state_a, state_b = a["optimizer"]["state"], b["optimizer"]["state"]
    assert all(torch.equal(state_a[p][m], state_b[p][m]) for p in state_a for m in ("exp_avg", "exp_avg_sq"))
    assert a["lr_scheduler"] == b["lr_scheduler"]
    best_a, best_b = _checkpoint(roots["a"], "best"), _checkpoint(roots["b"], "best")
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_a)  # the best model of the whole run, not of a part
    assert a["run"]["best_metric_epoch"] == b["run"]["best_metric_epoch"]


def test_resumed_run_is_one_finished_mlflow_run_with_the_uninterrupted_history(runs):
    roots, _, before, _ = runs
    client_a, [run_a] = _client(roots["a"])
    client_b, runs_b = _client(roots["b"])
    assert [r.info.run_name for r in runs_b] == [RUN]
    assert before == [(runs_b[0].info.run_id, "RUNNING")]  # the run the killed process logged to, reopened
    assert runs_b[0].info.status == run_a.info.status == "FINISHED"
    expected = {"loss": range(1, EPOCHS * PER_EPOCH + 1), "val_mean_dice": range(1, EPOCHS + 1)}
    for key in ("loss", "loss_kd", "loss_cwd", "lr_group_0", "val_mean_dice", "val_dice_liver"):
        history_a = [(m.step, m.value) for m in client_a.get_metric_history(run_a.info.run_id, key)]
        history_b = [(m.step, m.value) for m in client_b.get_metric_history(runs_b[0].info.run_id, key)]
        steps = sorted(step for step, _ in history_b)
        assert steps == sorted({step for step, _ in history_b}), f"{key}: a step logged twice"
        assert steps == list(expected["val_mean_dice" if key.startswith("val") else "loss"]), key
        assert sorted(history_b) == sorted(history_a), key  # the same values at the same steps
    params_b = {k: v.replace(str(roots["b"]), str(roots["a"])) for k, v in runs_b[0].data.params.items()}
    assert params_b == run_a.data.params  # logged once, and the same (paths aside)
    artifacts = {a.path for a in client_b.list_artifacts(runs_b[0].info.run_id)}
    assert {f"{RUN}.pt", f"{RUN}.config.json"} <= artifacts
