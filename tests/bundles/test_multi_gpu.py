"""Distributed distillation end to end: the bundle under ``torchrun`` with 2 CPU processes (gloo), then what each
rank drew, what rank 0 tracked and saved, and that the validation metric is the single-process one."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from monai.bundle import ConfigParser

from mskd.data.phantom import generate_phantom_dataset
from mskd.networks import get_network, load_weights

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "mskd_synapse"
CONFIGS = BUNDLE / "configs"
STACK = ["train_teacher.json", "distill.json", "multi_gpu_distill.json"]
NPROC = 2
TEACHER, STUDENT = "unet", "tiny_unet"  # CPU-sized networks; the bundle's default teacher is paper-scale
RUN_NAME = f"{STUDENT}_from_{TEACHER}-mskd-s0"
TINY = {
    "image_size": 32,
    "max_epochs": 1,
    "val_interval": 1,
    "batch_size": 2,
    "slices_per_volume": 2,
    "num_val_cases": 2,  # one validation case per rank
    "val_slice_batch": 8,
    "log_every": 1,
    "ffd_weight": 0.9,  # MSKD's feature terms on (the default has none), so that taps run under DDP
    "rgd_weight": 0.9,
}
# 6 training cases (the 7th is the test case): 2 for validation, 4 for training, 2 per rank with no padding.
CASES, TEST_CASES = 7, 1
TIMEOUT_S = 300  # a deadlocked collective must fail the test, not hang it

pytestmark = [pytest.mark.e2e, pytest.mark.distributed]


def _cli(values: dict) -> list[str]:
    return [arg for key, value in values.items() for arg in (f"--{key}", str(value))]


@pytest.fixture(scope="module")
def distributed_run(tmp_path_factory):
    """Phantoms, a saved (untrained) teacher, and one ``torchrun --nproc_per_node=2`` distillation run."""
    root = tmp_path_factory.mktemp("ddp")
    generate_phantom_dataset(
        root / "data", task="synapse", cases=CASES, seed=3, size=(32, 32, 16), test_cases=TEST_CASES
    )
    (root / "models").mkdir()
    torch.manual_seed(0)  # distillation only needs the teacher's architecture and some weights
    torch.save(get_network(TEACHER, 1, 9).state_dict(), root / "models" / f"{TEACHER}-teacher-s0.pt")

    # A test-only override stacked last: record each rank's samples, metrics and parameter sum.
    record = root / "record.json"
    samples = str(root / "samples")
    recorder = {"_target_": "mskd.distributed.RecordSamples", "out_dir": samples}
    record.write_text(
        json.dumps(
            {
                "+train#handlers": {"record": {**recorder, "name": "train", "network": "@network"}},
                "+validate#handlers": {"record": {**recorder, "name": "validate"}},
            }
        )
    )
    config = "[" + ",".join([f"'{CONFIGS / f}'" for f in STACK] + [f"'{record}'"]) + "]"
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={NPROC}", "--standalone"]
    cmd += ["-m", "monai.bundle", "run", "--config_file", config, "--bundle_root", str(BUNDLE)]
    cmd += [
        "--dataset_dir",
        str(root / "data"),
        "--output_dir",
        str(root / "output"),
        "--ckpt_dir",
        str(root / "models"),
    ]
    cmd += ["--teacher", TEACHER, "--student", STUDENT, *_cli(TINY)]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(MALLOC_MMAP_THRESHOLD_="17179869184", MALLOC_TRIM_THRESHOLD_="17179869184", OMP_NUM_THREADS="1")
    start = time.monotonic()
    # Own process group, so that a timeout ends torchrun's workers too (killing torchrun alone would orphan them).
    with subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        errors="replace",
        env=env,
        start_new_session=True,
    ) as popen:
        try:
            stdout, stderr = popen.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(popen.pid, signal.SIGKILL)
            stdout, stderr = popen.communicate()
            message = f"torchrun did not finish in {TIMEOUT_S} s:\n{stdout[-3000:]}\n{stderr[-6000:]}"
            raise AssertionError(message) from None
    proc = subprocess.CompletedProcess(cmd, popen.returncode, stdout, stderr)
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    print(f"torchrun --nproc_per_node={NPROC}: {elapsed:.1f} s")
    return root, proc


def _records(root: Path, name: str) -> list[dict]:
    records = [json.loads((root / "samples" / f"{name}-rank{r}.json").read_text()) for r in range(NPROC)]
    assert [r["rank"] for r in records] == list(range(NPROC)) and {r["world_size"] for r in records} == {NPROC}
    assert all(len(r["epochs"]) == 1 for r in records)
    return [r["epochs"][0] for r in records]


def _training_cases(root: Path) -> set[str]:
    dataset = json.loads((root / "data" / "dataset.json").read_text())
    return {Path(case["image"]).name for case in dataset["training"]}


def test_ranks_draw_disjoint_cases_that_cover_the_training_set(distributed_run):
    root, _ = distributed_run
    train, val = _records(root, "train"), _records(root, "validate")
    train_sets = [set(r["items"]) for r in train]
    val_sets = [set(r["items"]) for r in val]
    print("train cases per rank:", [sorted(s) for s in train_sets], "validation:", [sorted(s) for s in val_sets])
    assert all(len(set(r["items"])) == len(r["items"]) > 0 for r in train)  # no padding, no repeats
    assert not train_sets[0] & train_sets[1] and not val_sets[0] & val_sets[1]
    train_union, val_union = set.union(*train_sets), set.union(*val_sets)
    assert len(val_union) == TINY["num_val_cases"] and not train_union & val_union
    assert train_union | val_union == _training_cases(root)
    assert train[0]["iterations"] == train[1]["iterations"] >= 1  # same number of DDP steps on every rank
    assert [r["iterations"] for r in val] == [1, 1]  # one volume per rank


def test_replicas_stay_in_sync_and_rank0_saves_a_plain_student_checkpoint(distributed_run):
    root, _ = distributed_run
    sums = [r["parameter_sum"] for r in _records(root, "train")]
    assert sums[0] == sums[1]
    # the run's own checkpoint, and model.pt, the bundle's default, a copy of it
    models = sorted(p.name for p in (root / "models").iterdir())
    assert models == sorted(["model.pt", f"{RUN_NAME}.pt", f"{TEACHER}-teacher-s0.pt"])
    state = torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True)["model"]
    assert not any(k.startswith("module.") for k in state)  # saved unwrapped, not as DistributedDataParallel
    student = load_weights(get_network(STUDENT, 1, 9), root / "models" / "model.pt", role="student")
    assert sum(float(p.detach().double().sum()) for p in student.parameters()) == pytest.approx(sums[0], rel=1e-12)


def test_only_rank0_tracks_one_finished_run_and_logs(distributed_run):
    root, proc = distributed_run
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'output' / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("mskd_synapse")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_name for r in runs] == [RUN_NAME] and runs[0].info.status == "FINISHED"
    params = runs[0].data.params
    assert params["world_size"] == str(NPROC) and params["dist_backend"] == "gloo" and params["method"] == "mskd"
    assert {"loss_kd", "loss_ffd", "loss_rgd", "val_mean_dice", "val_dice_liver"} <= set(runs[0].data.metrics)
    assert {a.path for a in client.list_artifacts(runs[0].info.run_id)} >= {f"{RUN_NAME}.pt", f"{RUN_NAME}.config.json"}
    executed = json.loads((root / "output" / f"{RUN_NAME}.config.json").read_text())
    assert executed["train"]["sampler"]["_target_"] == "DistributedSampler" and executed["max_epochs"] == 1
    assert not list((root / "output").glob("*.tmp"))
    log = proc.stdout + proc.stderr
    assert log.count("Epoch[1] Metrics --") == 1  # validation StatsHandler on rank 0 only
    train_lines = re.findall(r"Epoch: 1/1, Iter: \d+/\d+ --", log)
    assert len(train_lines) == _records(root, "train")[0]["iterations"]  # training StatsHandler on rank 0 only


def test_validation_metric_is_reduced_over_ranks(distributed_run):
    """Both ranks end with the metric over all validation cases: a single-process evaluation of the checkpoint's."""
    root, _ = distributed_run
    val = _records(root, "validate")
    dice = val[0]["metrics"]["val_mean_dice"]
    assert val[1]["metrics"] == val[0]["metrics"]
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'output' / 'mlruns.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("mskd_synapse").experiment_id])
    assert run.data.metrics["val_mean_dice"] == pytest.approx(dice, rel=1e-6)

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / f) for f in STACK[:2]])
    parser.update(
        {
            "bundle_root": str(BUNDLE),
            "dataset_dir": str(root / "data"),
            "output_dir": str(root / "single"),
            "ckpt_dir": str(root / "models"),
            "teacher": TEACHER,
            "student": STUDENT,
            **TINY,
            "network": f"$mskd.networks.load_weights(@network_def, {str(root / 'models' / 'model.pt')!r}).to(@device)",
            "validate#handlers": {},  # no tracking, no checkpoint: just the metric
        }
    )
    evaluator = parser.get_parsed_content("validate#evaluator")
    evaluator.run()
    assert evaluator.state.metrics["val_mean_dice"] == pytest.approx(dice, rel=1e-6)


# --- the override file itself: cheap checks that it still matches the stack it overrides --------------------------


def _stack() -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / f) for f in STACK])
    return parser


@pytest.mark.parametrize(
    "handler, target",
    [
        ("train#handlers#stats", "StatsHandler"),
        ("validate#handlers#stats", "StatsHandler"),
        ("validate#handlers#best_model", "mskd.handlers.CheckpointSaver"),
    ],
)
def test_rank0_only_overrides_point_at_the_intended_handlers(handler, target):
    parser = _stack()
    assert parser[f"{handler}#_target_"] == target
    assert "dist.get_rank() > 0" in parser[f"{handler}#_disabled_"]
    base = ConfigParser()
    base.read_config([str(CONFIGS / f) for f in STACK[:2]])
    if "_disabled_" in base[handler]:  # the base's own condition (save_best, MLflow off) is kept
        assert base[f"{handler}#_disabled_"].lstrip("$") in parser[f"{handler}#_disabled_"]


def test_override_keeps_every_initialize_step_of_the_base():
    """``initialize`` is replaced; each base step must still be there. The up-front checks come first (every rank
    refuses bad input before joining the group, so no rank waits on one that exited), then the process group."""
    base = ConfigParser()
    base.read_config([str(CONFIGS / f) for f in STACK[:2]])
    calls = re.compile(r"([A-Za-z_][\w.]*)\(")
    stacked = " ".join(_stack()["initialize"])
    for step in base["initialize"]:
        assert calls.search(step).group(1) in stacked, step
    assert _stack()["initialize"][0] == base["initialize"][0] == "$mskd.validation.preflight()"
    assert _stack()["initialize"][1] == "$mskd.distributed.init_process_group()"
    assert "$mskd.distributed.destroy_process_group()" in _stack()["finalize"]


def test_only_rank0_tracks_and_writes_the_executed_config():
    """Only rank 0 opens (or reopens) the MLflow run, logs to it and writes the executed config; the base's switch
    (``--mlflow false``) still holds there."""
    parser = _stack()
    assert parser["mlflow_run#enabled"] == "$mskd.flags.as_flag(@mlflow, 'mlflow') and dist.get_rank() == 0"
    for key in ("train#handlers#mlflow", "validate#handlers#mlflow"):
        assert parser[f"{key}#_target_"] == "mskd.tracking.MLFlowHandler"
        assert parser[f"{key}#_disabled_"] == "$not @mlflow_run.enabled"
    assert "$dist.get_rank() > 0 or mskd.tracking.save_executed_config(@executed_config)" in parser["initialize"]


def test_the_resume_checkpoint_carries_the_best_model_saver_and_comes_last():
    """``TrainingCheckpoint`` refers to the best-model saver by name, and must be the last training handler."""
    for parser in (_stack(), ConfigParser()):
        if not parser.get("initialize"):
            parser.read_config([str(CONFIGS / f) for f in STACK[:2]])
        handlers = parser["train#handlers"]
        assert [k for k in handlers if k != "registered_model"][-1] == "checkpoint"  # that one acts at COMPLETED
        assert handlers["checkpoint"]["_target_"] == "mskd.handlers.TrainingCheckpoint"
        assert handlers["checkpoint"]["save_dict"]["best_checkpoint"] == "@validate#handlers#best_model"
        assert parser["validate#handlers#best_model#_target_"] == "mskd.handlers.CheckpointSaver"


def test_teacher_is_not_wrapped():
    parser = _stack()
    assert parser["network#_target_"] == "torch.nn.parallel.DistributedDataParallel"
    assert parser["train#trainer#teacher"] == "@teacher_network"
    assert "DistributedDataParallel" not in json.dumps(parser["teacher_network"])
