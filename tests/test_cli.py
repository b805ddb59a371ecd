import json
import os
import sys
from pathlib import Path

import pytest

from mskd import cli
from mskd.cli import main


def test_phantom_command_writes_a_dataset(tmp_path, capsys):
    out = tmp_path / "ph"
    assert main(["phantom", "--out", str(out), "--cases", "3", "--size", "24", "24", "16", "--seed", "1"]) == 0
    content = json.loads((out / "dataset.json").read_text())
    assert content["numTraining"] + content["numTest"] == 3
    assert f"wrote {out / 'dataset.json'}" in capsys.readouterr().out


def test_known_errors_are_one_line_and_exit_1(tmp_path, capsys):
    assert main(["phantom", "--out", str(tmp_path / "x"), "--cases", "0"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("mskd phantom: error:") and "\n" not in err


def test_demo_refuses_a_folder_that_is_not_a_bundle(tmp_path, capsys):
    assert main(["demo", "--workdir", str(tmp_path / "w"), "--bundle", str(tmp_path)]) == 1
    assert "is not an mskd bundle" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [[], ["phantom"], ["phantom", "--out", "x", "--task", "brain"], ["nope"]])
def test_usage_errors_exit_2(argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2


COMMANDS = ["phantom", "train-teacher", "train-student", "distill", "evaluate", "experiment", "bench"]
COMMANDS += ["demo", "predict", "export"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    example = capsys.readouterr().out.split("example:\n", 1)[1].strip()
    assert example.startswith(f"mskd {command} ") and "\n" not in example  # one line, to copy


@pytest.mark.parametrize(
    "argv",
    [
        ["train-teacher", "--set", "image_size"],  # no '='
        ["train-teacher", "--set", "=3"],
        ["distill", "--epochs", "many"],
        ["evaluate", "--method", "student"],
        ["experiment"],  # the file is required
    ],
)
def test_workflow_usage_errors_exit_2_naming_the_flag(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith(f"mskd {argv[0]}: error: ")


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["train-teacher"], {}),
        (
            ["distill", "--dataset-dir", "D", "--data-format", "btcv", "--teacher", "unet", "--epochs", "3"],
            {"dataset_dir": "D", "data_format": "btcv", "teacher": "unet", "max_epochs": 3},
        ),
        (
            ["train-student", "--output-dir", "out", "--seed", "2", "--student", "enet"],
            {"output_dir": "out", "ckpt_dir": os.path.join("out", "models"), "seed": 2, "student": "enet"},
        ),
        (  # --set values are JSON when they parse as JSON, strings otherwise; --set wins over the flags
            ["train-teacher", "--epochs", "3", "--set", "max_epochs=5", "--set", "teacher=transunet_small"]
            + ["--set", "mlflow=false", "--set", 'tracking_tags_extra={"experiment": "e1"}', "--set", "a#b=[1, 2]"],
            {
                "max_epochs": 5,
                "teacher": "transunet_small",
                "mlflow": False,
                "tracking_tags_extra": {"experiment": "e1"},
                "a#b": [1, 2],
            },
        ),
    ],
)
def test_workflow_flags_become_bundle_overrides(argv, expected, monkeypatch):
    import mskd.workflows

    calls = []

    def fake(bundle, method, **overrides):
        calls.append((bundle, method, overrides))
        return mskd.workflows.TrainingSummary("run", None, -1, 0, {}, Path("none.pt"), "off")

    monkeypatch.setattr(mskd.workflows, "train", fake)
    assert main(argv) == 0
    method = {"train-teacher": "teacher", "train-student": "baseline", "distill": "mskd"}[argv[0]]
    assert calls == [("bundles/mskd_synapse", method, expected)]


def test_experiment_calls_run_experiment(monkeypatch, tmp_path):
    import mskd.experiment

    calls = []
    monkeypatch.setattr(mskd.experiment, "run_experiment", lambda *a, **k: calls.append((a, k)))
    assert main(["experiment", "matrix.yaml", "--workdir", str(tmp_path), "--dry-run"]) == 0
    assert main(["experiment", "matrix.yaml"]) == 0
    assert calls == [
        (("matrix.yaml",), {"workdir": str(tmp_path), "dry_run": True}),
        (("matrix.yaml",), {"workdir": None, "dry_run": False}),
    ]


def test_bench_runs_each_script_from_the_repository_root(monkeypatch, tmp_path):
    root = tmp_path / "repo"
    (root / "benchmarks").mkdir(parents=True)
    for name in ("networks", "losses"):
        (root / "benchmarks" / f"{name}.py").write_text("")
    monkeypatch.setattr(cli, "__file__", str(root / "src" / "mskd" / "cli.py"))
    calls = []
    monkeypatch.setattr(cli.subprocess, "call", lambda cmd, cwd: calls.append((cmd, cwd)) or 0)
    assert main(["bench", "networks", "losses", "--quick"]) == 0
    assert calls == [
        ([sys.executable, str(root / "benchmarks" / f"{n}.py"), "--quick"], root) for n in ("networks", "losses")
    ]


@pytest.mark.parametrize(
    "argv, folder, message",
    [
        (["bench"], False, "no benchmarks folder at"),  # an installed package, no clone
        (["bench", "latency"], True, "unknown benchmark latency; choose from networks, export"),
        (["bench", "data"], True, "no benchmark script benchmarks/data.py in"),
    ],
)
def test_bench_usage_errors_are_one_line_and_exit_2(argv, folder, message, monkeypatch, tmp_path, capsys):
    if folder:
        (tmp_path / "benchmarks").mkdir()
    monkeypatch.setattr(cli, "__file__", str(tmp_path / "src" / "mskd" / "cli.py"))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"mskd bench: error: {message}") and "\n" not in err


def test_a_failing_benchmark_is_an_error(monkeypatch, tmp_path, capsys):
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "export.py").write_text("")
    monkeypatch.setattr(cli, "__file__", str(tmp_path / "src" / "mskd" / "cli.py"))
    monkeypatch.setattr(cli.subprocess, "call", lambda cmd, cwd: 3)
    assert main(["bench", "export"]) == 1
    assert "benchmarks/export.py failed with exit status 3" in capsys.readouterr().err
