import json
import logging
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from mskd import cli
from mskd.cli import main

BUNDLE = str(Path(__file__).resolve().parents[1] / "bundles" / "mskd_synapse")
TRAINING = {"train-teacher": "teacher", "train-student": "baseline", "distill": "mskd"}  # command -> method


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
            + ["--set", "mlflow=false", "--set", 'tracking_tags_extra={"experiment": "e1"}']
            + ["--set", "pixdim=[1, 2, 3]", "--set", "train::handlers#0#print_lr=true"],
            {
                "max_epochs": 5,
                "teacher": "transunet_small",
                "mlflow": False,
                "tracking_tags_extra": {"experiment": "e1"},
                "pixdim": [1, 2, 3],
                "train::handlers#0#print_lr": True,
            },
        ),
    ],
)
def test_workflow_flags_become_bundle_overrides(argv, expected, monkeypatch):
    calls = fake_workflows(monkeypatch)
    assert main([*argv, "--bundle", BUNDLE]) == 0
    assert calls == [("train", BUNDLE, TRAINING[argv[0]], expected)]


def fake_workflows(monkeypatch, error: BaseException | None = None) -> list:
    """Replace ``mskd.workflows.train`` and ``evaluate`` by fakes that record their calls (then raise ``error``)."""
    import mskd.workflows

    calls = []

    def fake(name):
        def workflow(bundle, method, **overrides):
            calls.append((name, bundle, method, overrides))
            if error is not None:
                raise error
            return SimpleNamespace(table=lambda: "summary")

        return workflow

    monkeypatch.setattr(mskd.workflows, "train", fake("train"))
    monkeypatch.setattr(mskd.workflows, "evaluate", fake("evaluate"))
    return calls


def test_experiment_calls_run_experiment(monkeypatch, tmp_path):
    import mskd.experiment

    calls = []
    monkeypatch.setattr(mskd.experiment, "run_experiment", lambda *a, **k: calls.append((a, k)))
    assert main(["experiment", "matrix.yaml", "--workdir", str(tmp_path), "--dry-run"]) == 0
    assert main(["experiment", "matrix.yaml", "--allow-code"]) == 0
    assert calls == [
        (("matrix.yaml",), {"workdir": str(tmp_path), "dry_run": True, "allow_code": False}),
        (("matrix.yaml",), {"workdir": None, "dry_run": False, "allow_code": True}),
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


MESSAGE = "checkpoint_every must be an integer >= 0, got -1"
WRAPPER = "Failed to instantiate component 'x' with keywords: every"


def wrapped(inner: BaseException, how: str) -> BaseException:
    """MONAI's wrapper around ``inner``, chained ``how``: ``from`` (its cause), ``during`` (its context) or ``from
    None``."""
    try:
        try:
            raise inner
        except type(inner):
            wrapper = RuntimeError(f"{WRAPPER}\n set '_mode_=debug' to enter the debugging mode.")
            if how == "from":
                raise wrapper from inner
            if how == "during":
                raise wrapper  # noqa: B904 -- the implicit context is the case tested
            raise wrapper from None
    except RuntimeError as e:
        return e


@pytest.mark.parametrize(
    "error, expected",
    [
        (wrapped(ValueError(f"{MESSAGE}\nsecond line"), "from"), MESSAGE),  # the first line of the cause
        (wrapped(ValueError(MESSAGE), "during"), MESSAGE),
        (wrapped(wrapped(ValueError(MESSAGE), "from"), "from"), MESSAGE),  # ConfigExpression around a component
        (wrapped(ValueError(MESSAGE), "from None"), WRAPPER),
        (KeyError("teacher_ckpt"), "KeyError: 'teacher_ckpt'"),  # a bare key says too little alone
        (AssertionError(), "AssertionError"),
        (OSError(28, "No space left on device"), "[Errno 28] No space left on device"),
    ],
)
def test_an_error_is_reported_by_its_innermost_message_in_one_line(error, expected, monkeypatch, capsys):
    fake_workflows(monkeypatch, error)
    assert main(["train-teacher", "--bundle", BUNDLE]) == 1
    assert capsys.readouterr().err == f"mskd train-teacher: error: {expected}\n"


def test_a_message_written_by_mskd_is_reported_rather_than_its_cause(tmp_path, monkeypatch, capsys):
    from mskd.io import load_checkpoint

    path = tmp_path / "latest.pt"
    path.write_bytes(b"PK\x03\x04 truncated")
    try:
        try:
            load_checkpoint(path, "resume checkpoint")  # raises its own ValueError from torch's error
        except ValueError as e:
            raise RuntimeError("Failed to evaluate ConfigExpression: \n$resume_checkpoint(...)") from e
    except RuntimeError as e:
        fake_workflows(monkeypatch, e)
    assert main(["train-teacher", "--bundle", BUNDLE]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"mskd train-teacher: error: resume checkpoint {path} is not a readable PyTorch checkpoint: ")
    assert err.count("\n") == 1


@pytest.mark.parametrize("argv", [["--debug", "train-teacher"], ["train-teacher", "--debug"], ["train-teacher"]])
def test_debug_raises_the_error_with_its_chain(argv, monkeypatch, capsys):
    if "--debug" not in argv:
        monkeypatch.setenv("MSKD_DEBUG", "1")
    fake_workflows(monkeypatch, wrapped(ValueError(MESSAGE), "from"))
    with pytest.raises(RuntimeError, match=WRAPPER) as error:
        main([*argv, "--bundle", BUNDLE])
    assert str(error.value.__cause__) == MESSAGE
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "argv, expected",
    [
        *[([command], f"mskd {command}: interrupted; run the same command again to resume") for command in TRAINING],
        (["evaluate"], "mskd evaluate: interrupted"),
    ],
)
def test_ctrl_c_is_one_line_and_exit_130(argv, expected, monkeypatch, capsys):
    fake_workflows(monkeypatch, KeyboardInterrupt())
    assert main([*argv, "--bundle", BUNDLE]) == 130
    assert capsys.readouterr().err == expected + "\n"
    with pytest.raises(KeyboardInterrupt):
        main([*argv, "--bundle", BUNDLE, "--debug"])


@pytest.mark.parametrize("debug", [False, True])
def test_logged_tracebacks_are_dropped_without_debug(debug, monkeypatch, caplog):
    """As MONAI's StatsHandler logs an error in an engine (with its traceback) before it reaches ``main``."""
    import mskd.workflows

    def fake(bundle, method, **overrides):
        try:
            raise ValueError(MESSAGE)
        except ValueError as e:
            logging.getLogger("ignite.engine.engine.SupervisedTrainer").exception(f"Exception: {e}")
            raise

    monkeypatch.setattr(mskd.workflows, "train", fake)
    factory = logging.getLogRecordFactory()
    with caplog.at_level(logging.ERROR):
        if debug:
            with pytest.raises(ValueError):
                main(["train-teacher", "--bundle", BUNDLE, "--debug"])
        else:
            assert main(["train-teacher", "--bundle", BUNDLE]) == 1
    assert [r.getMessage() for r in caplog.records] == [f"Exception: {MESSAGE}"]
    assert (caplog.records[0].exc_info is not None) == debug
    assert logging.getLogRecordFactory() is factory  # restored


@pytest.mark.parametrize(
    "argv, key, stack, near",
    [
        (["train-teacher"], "learning_rat", "train_teacher.json", "learning_rate"),
        (["distill"], "kd_weigth", "train_teacher.json, distill.json", "kd_weight"),
        (
            ["train-student"],
            "train#handlers#0#print_lrr",
            "train_teacher.json, train_student.json",
            "train#handlers#0#print_lr",
        ),
        (
            ["evaluate", "--method", "baseline"],
            "seg_los::lambda_ce",
            "train_teacher.json, train_student.json, evaluate.json",
            "seg_loss#lambda_ce",
        ),
    ],
)
def test_an_unknown_set_key_is_refused_before_anything_runs(argv, key, stack, near, monkeypatch, tmp_path, capsys):
    calls = fake_workflows(monkeypatch)
    out = tmp_path / "out"
    assert main([*argv, "--bundle", BUNDLE, "--output-dir", str(out), "--set", f"{key}=1"]) == 2
    expected = f"mskd {argv[0]}: error: --set {key}: no such config key in {BUNDLE} ({stack}); did you mean {near}?"
    assert capsys.readouterr().err == expected + "\n"
    assert calls == [] and not out.exists()


def test_every_refused_override_has_its_line(monkeypatch, capsys):
    calls = fake_workflows(monkeypatch)
    argv = ["train-teacher", "--bundle", BUNDLE, "--set", "learning_rat=1", "--set", "seed=$1", "--set", "zzzz=1"]
    assert main(argv) == 2
    where = f"no such config key in {BUNDLE} (train_teacher.json)"
    assert capsys.readouterr().err.splitlines() == [
        f"mskd train-teacher: error: --set seed: {CODE}",
        f"mskd train-teacher: error: --set learning_rat: {where}; did you mean learning_rate?",
        f"mskd train-teacher: error: --set zzzz: {where}",
    ]
    assert calls == []


def test_set_keys_of_the_stack_and_its_metadata_are_accepted(monkeypatch):
    calls = fake_workflows(monkeypatch)
    sets = {"_meta_#version": "9.9.9", "train::handlers#0#print_lr": True, "kd_weight": 2, "seg_loss#lambda_ce": 1}
    argv = ["distill", "--bundle", BUNDLE] + [a for k, v in sets.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    assert main(argv) == 0
    assert calls == [("train", BUNDLE, "mskd", sets)]


def test_set_keys_need_a_bundle(tmp_path, capsys):
    assert main(["train-teacher", "--bundle", str(tmp_path), "--set", "seed=1"]) == 1
    assert f"{tmp_path} is not an mskd bundle (no configs/train_teacher.json); pass --bundle" in capsys.readouterr().err


CODE = "would run Python code (a $ expression, a _target_ or a % file macro); pass --allow-code if you trust it"


@pytest.mark.parametrize(
    "argv, refused, overrides",
    [
        (
            ["--set", 'seed=$__import__("os").system("touch x")'],
            ["--set seed"],
            {"seed": '$__import__("os").system("touch x")'},
        ),
        (["--set", "seg_loss#_target_=os.system"], ["--set seg_loss#_target_"], {"seg_loss#_target_": "os.system"}),
        (["--set", 'loss={"_target_": "L1Loss"}'], ["--set loss"], {"loss": {"_target_": "L1Loss"}}),
        (["--set", 'train#handlers=[{"a": ["$1"]}]'], ["--set train#handlers"], {"train#handlers": [{"a": ["$1"]}]}),
        (["--set", "loss=%/tmp/other.json#loss"], ["--set loss"], {"loss": "%/tmp/other.json#loss"}),
        (  # a flag's value is an override too; --output-dir sets two
            ["--dataset-dir", "$1", "--output-dir", "$2"],
            ["--dataset-dir", "--output-dir"],
            {"dataset_dir": "$1", "output_dir": "$2", "ckpt_dir": os.path.join("$2", "models")},
        ),
    ],
)
def test_an_override_that_runs_code_needs_allow_code(argv, refused, overrides, monkeypatch, capsys):
    calls = fake_workflows(monkeypatch)
    assert main(["train-teacher", "--bundle", BUNDLE, *argv]) == 2
    assert capsys.readouterr().err.splitlines() == [f"mskd train-teacher: error: {r}: {CODE}" for r in refused]
    assert calls == []
    assert main(["train-teacher", "--bundle", BUNDLE, *argv, "--allow-code"]) == 0
    assert calls == [("train", BUNDLE, "teacher", overrides)]


def test_references_and_macros_within_the_config_are_not_code(monkeypatch):
    calls = fake_workflows(monkeypatch)
    sets = {"loss": "%seg_loss", "network_def": "@student_def", "run_name": "a$b"}
    argv = ["evaluate", "--bundle", BUNDLE] + [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    assert main(argv) == 0
    assert calls == [("evaluate", BUNDLE, "mskd", sets)]


@pytest.mark.parametrize("command", [*TRAINING, "evaluate"])
def test_workflow_help_names_allow_code(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "--allow-code" in capsys.readouterr().out


def test_openmp_threads_wait_passively_unless_the_user_chose(monkeypatch, tmp_path):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    main(["phantom", "--out", str(tmp_path / "a"), "--cases", "2", "--size", "8", "8", "4"])
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    main(["phantom", "--out", str(tmp_path / "b"), "--cases", "2", "--size", "8", "8", "4"])
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
