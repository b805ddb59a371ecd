import argparse
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
    assert main(["phantom", "--output-dir", str(out), "--cases", "3", "--size", "24", "24", "16", "--seed", "1"]) == 0
    content = json.loads((out / "dataset.json").read_text())
    assert content["numTraining"] + content["numTest"] == 3
    assert f"wrote {out / 'dataset.json'}" in capsys.readouterr().out


def test_known_errors_are_one_line_and_exit_1(tmp_path, capsys):
    assert main(["phantom", "--output-dir", str(tmp_path / "x"), "--cases", "0"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("mskd phantom: error:") and "\n" not in err


def test_demo_refuses_a_folder_that_is_not_a_bundle(tmp_path, capsys):
    assert main(["demo", "--workdir", str(tmp_path / "w"), "--bundle", str(tmp_path)]) == 1
    assert "is not an mskd bundle" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [[], ["phantom"], ["phantom", "--output-dir", "x", "--task", "brain"], ["nope"]])
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
        ["distill", "--max-epochs", "many"],
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
            ["distill", "--dataset-dir", "D", "--data-format", "btcv", "--teacher", "unet", "--max-epochs", "3"],
            {"dataset_dir": "D", "data_format": "btcv", "teacher": "unet", "max_epochs": 3},
        ),
        (
            ["evaluate", "--image-size", "48", "--student", "enet"],
            {"image_size": 48, "student": "enet"},
        ),
        (
            ["train-student", "--output-dir", "out", "--seed", "2", "--student", "enet"],
            {"output_dir": "out", "ckpt_dir": os.path.join("out", "models"), "seed": 2, "student": "enet"},
        ),
        (  # --set values are JSON when they parse as JSON, strings otherwise; --set wins over the flags
            ["train-teacher", "--max-epochs", "3", "--set", "max_epochs=5", "--set", "teacher=transunet_small"]
            + ["--set", "mlflow=false", "--set", 'tracking_tags_extra={"experiment": "e1"}']
            + ["--set", "pixdim=[1, 2, 3]", "--set", "train::handlers#lr_schedule#print_lr=true"],
            {
                "max_epochs": 5,
                "teacher": "transunet_small",
                "mlflow": False,
                "tracking_tags_extra": {"experiment": "e1"},
                "pixdim": [1, 2, 3],
                "train::handlers#lr_schedule#print_lr": True,
            },
        ),
    ],
)
def test_workflow_flags_become_bundle_overrides(argv, expected, monkeypatch):
    calls = fake_workflows(monkeypatch)
    assert main([*argv, "--bundle", BUNDLE]) == 0
    workflow, method = ("train", TRAINING[argv[0]]) if argv[0] in TRAINING else ("evaluate", "mskd")
    assert calls == [(workflow, BUNDLE, method, expected)]


# command -> each of its flags -> the bundle config id it sets (None: not a bundle value), hand-written from the
# bundles' configs; the flag of an id is `--` + the id with `-` for `_`, the same in every command
WORKFLOW_FLAGS = {
    "--bundle": None,
    "--dataset-dir": "dataset_dir",
    "--data-format": "data_format",
    "--teacher": "teacher",
    "--student": "student",
    "--image-size": "image_size",
    "--seed": "seed",
    "--output-dir": "output_dir",
    "--set": None,
    "--allow-code": None,
}
STUDENT_FLAGS = {"--bundle": None, "--ckpt-path": "ckpt_path", "--student": "student", "--image-size": "image_size"}
FLAGS = {
    "phantom": {  # no bundle: the arguments of generate_phantom_dataset
        **dict.fromkeys(["--task", "--output-dir", "--cases", "--test-cases", "--seed", "--size", "--difficulty"]),
        "--fov-jitter": None,
    },
    **{command: {**WORKFLOW_FLAGS, "--max-epochs": "max_epochs"} for command in TRAINING},
    "evaluate": {"--method": None, **WORKFLOW_FLAGS},
    "experiment": dict.fromkeys(["--workdir", "--dry-run", "--report-only", "--allow-code"]),
    "bench": {"--quick": None},
    "demo": dict.fromkeys(["--workdir", "--bundle", "--quick"]),
    "predict": {"--input": "input", "--output-dir": "output_dir", **STUDENT_FLAGS},
    "export": {"--format": None, "--output-file": None, **STUDENT_FLAGS},
    "ui": dict.fromkeys(["--store", "--host", "--port"]),
}
CONFIG = {"predict": "inference.json", "export": "inference.json"}  # where the ids are; else train_teacher.json
INTEGERS = {"image_size", "seed", "max_epochs"}


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    [action] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]  # no public accessor
    return action.choices


def bundle_ids(command: str) -> list[str]:
    return [key for key in FLAGS[command].values() if key is not None]


def test_the_flag_table_has_every_command():
    assert sorted(subcommands()) == sorted(FLAGS)


@pytest.mark.parametrize("command", FLAGS)
def test_flags_map_one_to_one_onto_bundle_ids(command):
    flags = {
        flag: action.dest
        for action in subcommands()[command]._actions
        for flag in action.option_strings
        if flag not in ("-h", "--help", "--debug")
    }
    assert sorted(flags) == sorted(FLAGS[command])  # no other flag, no other spelling
    keys = json.loads((Path(BUNDLE) / "configs" / CONFIG.get(command, "train_teacher.json")).read_text())
    for flag, key in FLAGS[command].items():
        if key is not None:
            assert (flag, flags[flag]) == ("--" + key.replace("_", "-"), key) and key in keys


@pytest.mark.parametrize("command", [*TRAINING, "evaluate"])
def test_every_workflow_flag_becomes_its_override(command, monkeypatch):
    calls = fake_workflows(monkeypatch)
    argv = [word for key in bundle_ids(command) for word in ("--" + key.replace("_", "-"), "7")]
    assert main([command, "--bundle", BUNDLE, *argv]) == 0
    expected = {key: 7 if key in INTEGERS else "7" for key in bundle_ids(command)}
    assert calls[0][3] == {**expected, "ckpt_dir": os.path.join("7", "models")}


@pytest.mark.parametrize("command", [command for command in FLAGS if bundle_ids(command)])
def test_every_flag_also_takes_the_bundles_spelling(command):
    parse = cli.build_parser().parse_args
    hyphens = [word for key in bundle_ids(command) for word in ("--" + key.replace("_", "-"), "7")]
    underscores = [word for key in bundle_ids(command) for word in (f"--{key}", "7")]
    joined = [f"--{key}=7" for key in bundle_ids(command)]
    expected = vars(parse([command, *hyphens]))
    assert vars(parse([command, *underscores])) == vars(parse([command, *joined])) == expected
    assert all(expected[key] == (7 if key in INTEGERS else "7") for key in bundle_ids(command))


REPORT = {"path": "s.onnx", "format": "onnx", "size_bytes": 1e6, "max_abs_diff": 0.0, "tolerance": 1e-4}


@pytest.mark.parametrize(
    "argv, expected",
    [
        (
            ["predict", "--input", "ct.nii.gz", "--output-dir", "pred", "--ckpt-path", "m.pt", "--image-size", "48"],
            ("predict", "bundles/mskd_synapse", "ct.nii.gz", "pred", "m.pt", None, 48),
        ),
        (  # the bundle's spelling, as after `monai.bundle run ... inference.json`
            ["predict", "--input", "ct.nii.gz", "--output_dir", "pred", "--ckpt_path", "m.pt", "--student", "enet"],
            ("predict", "bundles/mskd_synapse", "ct.nii.gz", "pred", "m.pt", "enet", None),
        ),
        (
            ["export", "--output-file", "s.ts", "--format", "torchscript", "--ckpt_path=m.pt", "--bundle", "B"],
            ("export", "B", "m.pt", "s.ts", "torchscript", None, None),
        ),
    ],
)
def test_predict_and_export_flags_reach_their_functions(argv, expected, monkeypatch):
    import mskd.export
    import mskd.predict

    calls = []
    monkeypatch.setattr(mskd.predict, "predict", lambda *args: calls.append(("predict", *args)) or [])
    monkeypatch.setattr(mskd.export, "bundle_export", lambda *args: calls.append(("export", *args)) or REPORT)
    assert main(argv) == 0
    assert calls == [expected]


@pytest.mark.parametrize(
    "argv, unknown",
    [
        (["phantom", "--output-dir", "x", "--image_size", "48"], "--image_size"),  # a flag of others, not of phantom
        (["train-teacher", "--learning_rate", "0.1"], "--learning_rate"),  # a bundle id without a flag: --set
        (["predict", "--input", "a", "--output-dir", "b", "--max_epochs=2"], "--max_epochs=2"),
    ],
)
def test_an_unknown_flag_keeps_the_argparse_error(argv, unknown, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith(f"mskd: error: unrecognized arguments: {unknown}")


RENAMED = [
    ("phantom", "--out", "--output-dir"),
    *[(command, "--epochs", "--max-epochs") for command in TRAINING],
    ("predict", "--output", "--output-dir"),
    ("predict", "--checkpoint", "--ckpt-path"),
    ("export", "--out", "--output-file"),
    ("export", "--checkpoint", "--ckpt-path"),
]


@pytest.mark.parametrize("command, old, new", RENAMED)
@pytest.mark.parametrize("joined", [False, True])
def test_an_old_flag_is_refused_naming_the_new_one(command, old, new, joined, capsys):
    assert new in FLAGS[command]
    with pytest.raises(SystemExit) as exit_info:
        main([command, f"{old}=1"] if joined else [command, old, "1"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"mskd {command}: error: {old} was renamed: use {new}"


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
    assert main(["experiment", "matrix.yaml", "--report_only"]) == 0
    common = {"workdir": None, "dry_run": False, "allow_code": False, "report_only": False}
    assert calls == [
        (("matrix.yaml",), {**common, "workdir": str(tmp_path), "dry_run": True}),
        (("matrix.yaml",), {**common, "allow_code": True}),
        (("matrix.yaml",), {**common, "report_only": True}),
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


REFUSED = [
    ("dataset_dir", "dataset folder not found: /none", None, None),
    ("image_size", "teacher checkpoint t.pt was trained on 96x96 slices, this run uses 224x224", None, 96),
    ("loss", "term 'kd': weight must be finite and >= 0, got -0.1.", None, None),
    ("dataset_dir", "cannot be read (EOFError: ...)", "/data/img.nii.gz", None),
]


@pytest.mark.parametrize(
    "argv, expected",
    [
        (
            ["train-teacher"],
            [
                "--dataset-dir: dataset folder not found: /none",
                "--image-size: teacher checkpoint t.pt was trained on 96x96 slices, this run uses 224x224; pass "
                "--image-size 96",
                "loss: term 'kd': weight must be finite and >= 0, got -0.1.",  # no flag: the config id, for --set
                "/data/img.nii.gz: cannot be read (EOFError: ...)",
            ],
        ),
    ],
)
def test_problems_of_the_pre_flight_are_listed_on_the_commands_flags_with_exit_2(argv, expected, monkeypatch, capsys):
    """The problems are found in the bundle (:mod:`mskd.validation`), by config id; the command names its flags."""
    from mskd.validation import Problem, ValidationError

    refused = ValidationError([Problem(i, m, file=f, value=v) for i, m, f, v in REFUSED])
    fake_workflows(monkeypatch, wrapped(refused, "from"))
    assert main([*argv, "--bundle", BUNDLE]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["mskd: 4 problem(s) found before starting:", *(f"  - {line}" for line in expected)]


def test_an_unusable_tracking_store_is_one_line_and_exit_2(monkeypatch, capsys):
    """``mskd.tracking.open_run`` raises (a library never exits); the command reports it in one line, status 2."""
    from mskd.tracking import TrackingError

    message = "MLflow tracking store 'http://127.0.0.1:9' is unreachable or invalid (refused); fix --tracking_uri"
    fake_workflows(monkeypatch, wrapped(TrackingError(message), "from"))
    assert main(["train-teacher", "--bundle", BUNDLE]) == 2
    assert capsys.readouterr().err == f"mskd train-teacher: error: {message}\n"


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
            "train#handlers#lr_schedule#print_lrr",
            "train_teacher.json, train_student.json",
            "train#handlers#lr_schedule#print_lr",
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
    sets = {
        "_meta_#version": "9.9.9",
        "train::handlers#lr_schedule#print_lr": True,
        "kd_weight": 2,
        "seg_loss#lambda_ce": 1,
    }
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
    main(["phantom", "--output-dir", str(tmp_path / "a"), "--cases", "2", "--size", "8", "8", "4"])
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    main(["phantom", "--output-dir", str(tmp_path / "b"), "--cases", "2", "--size", "8", "8", "4"])
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
