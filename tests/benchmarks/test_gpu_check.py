"""benchmarks/gpu_check.py: the same logic as on a GPU, run on the CPU at tiny sizes; and its refusal without CUDA."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"
PARTS = {"stacks", "throughput", "cpu_vs_device", "multi_gpu", "projection"}


@pytest.fixture(autouse=True)
def _keep_threads():
    """The script sets torch's thread count (1 under ``--tiny``): give the session its own back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def gpu_check(monkeypatch):
    """``benchmarks/gpu_check.py`` imported as it runs (its folder first on ``sys.path``, for ``common``)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("benchmark_gpu_check", BENCHMARKS / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def test_tiny_cpu_run_covers_every_part(gpu_check, tmp_path, capsys):
    out = tmp_path / "x.json"
    assert gpu_check.main(["--device", "cpu", "--tiny", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    meta, parts = results["meta"], results["parts"]
    assert set(parts) == PARTS and meta["tiny"] and meta["device"] == "cpu"
    assert meta["elapsed_s"] > 0 and set(meta["part_seconds"]) == PARTS - {"projection"}

    # (a) every stack of both bundles, ok, in the precision mode each bundle was given
    runs = parts["stacks"]["runs"]
    assert parts["stacks"]["status"] == "ok" and all(r["status"] == "ok" for r in runs)
    planned = [(b, m, s) for b, m, s, _ in gpu_check.stack_plan(gpu_check.BUNDLE_MODES)]
    assert [(r["bundle"], r["mode"], r["stack"]) for r in runs] == planned
    stacks = {"teacher", "baseline", "mskd", "teacher+evaluate", "baseline+evaluate", "mskd+evaluate", "inference"}
    for bundle in gpu_check.BUNDLES:
        assert {r["stack"] for r in runs if r["bundle"] == bundle} == stacks
    assert all(r["iterations"] >= 1 and r["device"] == "cpu" for r in runs)
    distilled = {r["mode"]: r for r in runs if r["stack"] == "mskd"}
    assert distilled["bf16"]["compile"] and distilled["bf16"]["compile_backend"] == "eager"
    assert distilled["bf16"]["teacher_autocast"] == "bfloat16" and distilled["bf16"]["autocast"] == "bfloat16"
    assert distilled["fp16"]["channels_last"] and not distilled["fp16"]["compile"]
    assert not any(r.get("grad_scaler") for r in runs)  # MONAI's GradScaler disables itself without CUDA
    assert {"loss", "loss_seg", "loss_kd", "loss_cwd"} <= set(distilled["fp16"]["loss"])

    # (b) images/s of each step kind; no CUDA memory on a CPU
    rows = parts["throughput"]["rows"]
    assert {r["step"] for r in rows} == {"teacher training", "distillation", "inference"}
    assert all(r["status"] == "ok" and r["images_per_s"] > 0 and r["peak_mib"] is None for r in rows)
    cached = [r for r in rows if r.get("teacher") == "cached"]
    assert cached and all(r["cache"]["misses"] == r["batch"] for r in cached)  # every timed lookup hit

    # (c) CPU vs device: every term, equal here (the device is the CPU)
    agreement = parts["cpu_vs_device"]
    assert agreement["status"] == "ok" and agreement["same_device"] and agreement["rtol"] == 1e-3
    terms = {r["term"]: r for r in agreement["terms"]}
    assert set(terms) == {"loss", "loss_seg", "loss_kd", "loss_cwd", "loss_ffd", "loss_rgd"}
    assert all(r["rel_diff_fp32"] == 0.0 and r["cpu"] == r["device_fp32"] for r in terms.values())

    # (d) skipped with its reason; (e) the projection
    assert parts["multi_gpu"] == {"status": "skipped", "reason": "needs >= 2 CUDA devices; 0 visible"}
    projection = parts["projection"]
    assert projection["steps_per_epoch"] == 93 and projection["live_hours"] > 0 and projection["cached_hours"] > 0

    printed = capsys.readouterr().out
    for heading in ("**Bundle stacks**", "**Throughput**", "**CPU vs device**", "**Multi-GPU**", "**Projected 150"):
        assert heading in printed
    assert "Tiny run (`--tiny`): not a result." in printed
    section = (ROOT / "docs" / "performance.md").read_text().split(gpu_check.BEGIN)[1].split(gpu_check.END)[0]
    assert "Tiny run" not in section  # a CPU run leaves the GPU section of the doc alone


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_without_a_device_exits_2_with_one_line():
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu_check.py"), "--device", "cuda"],
        capture_output=True,
        text=True,
        cwd=BENCHMARKS,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: --device cuda") and "--device cpu --tiny" in lines[0]


@pytest.mark.parametrize(
    "mode, files, device, expected",
    [
        ("fp16", ("train_teacher.json",), "cuda", {"amp": True}),
        (
            "bf16",
            ("train_teacher.json", "train_student.json"),
            "cuda",
            {
                "amp": True,
                "train#trainer#amp_kwargs": {"dtype": "$torch.bfloat16"},
                "validate#evaluator#amp_kwargs": {"dtype": "$torch.bfloat16"},
            },
        ),
        (
            "fp16",
            ("train_teacher.json", "distill.json"),
            "cuda",
            {"amp": True, "teacher_autocast": None, "compile": False, "channels_last": True},
        ),
        (
            "bf16",
            ("train_teacher.json", "distill.json"),
            "cpu",
            {
                "amp": True,
                "train#trainer#amp_kwargs": {"dtype": "$torch.bfloat16"},
                "validate#evaluator#amp_kwargs": {"dtype": "$torch.bfloat16"},
                "teacher_autocast": "bfloat16",
                "compile": True,
                "channels_last": True,
                "train#trainer#compile_kwargs": {"backend": "eager"},
            },
        ),
        (  # inductor on CUDA
            "bf16",
            ("train_teacher.json", "distill.json"),
            "cuda",
            {
                "amp": True,
                "train#trainer#amp_kwargs": {"dtype": "$torch.bfloat16"},
                "validate#evaluator#amp_kwargs": {"dtype": "$torch.bfloat16"},
                "teacher_autocast": "bfloat16",
                "compile": True,
                "channels_last": True,
            },
        ),
        ("bf16", ("inference.json",), "cuda", {"amp": True, "evaluator#amp_kwargs": {"dtype": "$torch.bfloat16"}}),
    ],
)
def test_mode_overrides(gpu_check, mode, files, device, expected):
    assert gpu_check.mode_overrides(mode, files, torch.device(device)) == expected


def test_torchrun_command(gpu_check, tmp_path):
    bundle = ROOT / "bundles" / "mskd_synapse"
    record = tmp_path / "record.json"
    cmd = gpu_check.torchrun_command(
        2, bundle, ["train_teacher.json", "multi_gpu_distill.json", str(record)], {"max_epochs": 20, "mlflow": False}
    )
    configs = f"['{bundle / 'configs' / 'train_teacher.json'}','{bundle / 'configs' / 'multi_gpu_distill.json'}'"
    assert cmd[:5] == [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]
    assert cmd[5:9] == ["-m", "monai.bundle", "run", "--config_file"]
    assert cmd[9] == f"{configs},'{record}']"
    assert cmd[10:] == ["--bundle_root", str(bundle), "--max_epochs", "20", "--mlflow", "False"]


@pytest.mark.parametrize(
    "rows, expected",
    [
        # 2211 slices / batch 24 -> 93 steps; 0.5 s x 93 x 150 / 3600 = 1.9375 h; 0.2 s -> 0.775 h
        (
            [
                {"step": "distillation", "variant": "KD+CWD, fp16, live", "batch": 24, "step_s": 0.5},
                {"step": "distillation", "variant": "KD+CWD, fp16, cached", "batch": 24, "step_s": 0.2},
                {"step": "distillation", "variant": "MSKD, fp16, live", "batch": 24, "step_s": 9.0},
            ],
            {"status": "ok", "live_hours": 1.9375, "cached_hours": 0.775},
        ),
        ([{"step": "distillation", "variant": "KD+CWD, fp16, live", "status": "skipped"}], {"status": "skipped"}),
    ],
)
def test_projection(gpu_check, rows, expected):
    projection = gpu_check.projection({"rows": rows})
    assert projection["steps_per_epoch"] == 93 and "2211 training slices / batch 24" in projection["assumption"]
    for key, value in expected.items():
        assert projection[key] == pytest.approx(value) if isinstance(value, float) else projection[key] == value
