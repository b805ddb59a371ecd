import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from mskd.bundle import Bundle
from mskd.cli import main
from mskd.data import LoadCased, get_datalist
from mskd.data.phantom import generate_phantom_dataset
from mskd.networks import checkpoint_metadata, get_network, save_weights
from mskd.validation import (
    Flag,
    Problem,
    ValidationError,
    _affine_difference,
    _grid_problems,
    _label_value_problems,
    _output_problems,
    bundle_problems,
    case_problems,
    format_problems,
    preflight,
    report_problems,
    validation_error,
)
from tests.data.fixtures import BTCV_AFFINE, write_btcv, write_dicom_series, write_kits19, write_synapse_npz

BUNDLE = Bundle(Path(__file__).resolve().parents[1] / "bundles" / "mskd_synapse")
TEACHER = ("train_teacher.json",)
STUDENT = ("train_teacher.json", "train_student.json")
DISTILL = ("train_teacher.json", "distill.json")
EVALUATE = ("train_teacher.json", "distill.json", "evaluate.json")
INFERENCE = ("inference.json",)
CPU = {"teacher": "unet", "student": "tiny_unet", "image_size": 32, "num_val_cases": 1}
PROBLEMS = [Problem("input", "1 NaN voxel(s) in the image", file="a.nii.gz"), Problem("loss", "term 'kd': bad")]
LINES = ["a.nii.gz: 1 NaN voxel(s) in the image", "loss: term 'kd': bad"]


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.delenv("MSKD_DEBUG", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom")
    generate_phantom_dataset(root, cases=3, size=(32, 32, 16), test_cases=1)
    return root


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    torch.save(get_network("unet", 1, 9).state_dict(), root / "unet9.pt")
    torch.save({"model": get_network("unet", 1, 3).state_dict()}, root / "unet3.pt")  # CheckpointSaver's layout
    torch.save(get_network("tiny_unet", 1, 9).state_dict(), root / "tiny9.pt")
    torch.save([1, 2], root / "list.pt")
    metadata = checkpoint_metadata("tiny_unet", 9, 16, run_name="tiny_unet-baseline-s0")
    save_weights(get_network("tiny_unet", 1, 9), root / "tiny9_16.pt", metadata)
    return root


def _problems(stack=TEACHER, **overrides) -> list[str]:
    """The pre-flight's lines for ``stack`` with the CPU networks and ``overrides``."""
    values = {**CPU, **overrides} if stack != INFERENCE else overrides
    return [p.line() for p in bundle_problems(BUNDLE.parser(stack, **values))]


def _outputs(tmp_path) -> dict:
    return {"output_dir": str(tmp_path / "output"), "ckpt_dir": str(tmp_path / "models")}


# --- reporting ----------------------------------------------------------------------------------------------------


@pytest.fixture
def bundle_command_line(monkeypatch):
    """As in ``python -m monai.bundle run``: MONAI's command line, where the report is printed and the process exits."""
    monkeypatch.setattr("mskd.validation._bundle_command_line", lambda: True)


def test_a_library_call_raises_the_problems(capsys):
    """In a process of its own (``create_workflow`` in a host, ``mskd``'s commands) the problems are an exception."""
    with pytest.raises(ValidationError) as info:
        report_problems(PROBLEMS)
    assert info.value.problems == PROBLEMS and info.value.lines == LINES and capsys.readouterr().err == ""


def test_report_lists_every_problem_on_one_line_and_exits_2(capsys, bundle_command_line):
    with pytest.raises(SystemExit) as exit_info:
        report_problems([*PROBLEMS, Problem("teacher_ckpt", "torch says:\nmore\nlines")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "mskd: 3 problem(s) found before starting:",
        *(f"  - {line}" for line in LINES),
        "  - teacher_ckpt: torch says: ...",
    ]
    assert "Traceback" not in err


def test_no_problem_is_silent(capsys):
    report_problems([])
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "problem, flags, line",
    [
        (
            Problem("ckpt_path", "student checkpoint m.pt not found"),
            None,
            "ckpt_path: student checkpoint m.pt not found",
        ),
        (
            Problem("ckpt_path", "student checkpoint m.pt not found"),
            {"ckpt_path": Flag("--ckpt-path")},
            "--ckpt-path: student checkpoint m.pt not found",
        ),
        (Problem("input", "cannot be read", file="a.nii"), {"input": Flag("--input")}, "a.nii: cannot be read"),
        (
            Problem("image_size", "trained on 16x16 slices", value=16),
            None,
            "image_size: trained on 16x16 slices; pass --image_size 16",
        ),
        (
            Problem("image_size", "trained on 16x16 slices", value=16),
            {"image_size": Flag("--image-size", "the checkpoint's")},
            "--image-size: trained on 16x16 slices; pass --image-size 16 or omit it to use the checkpoint's",
        ),
    ],
)
def test_a_problem_is_shown_on_the_flags_of_its_command(problem, flags, line):
    assert problem.line(flags) == line
    assert format_problems([problem], flags).splitlines()[1] == f"  - {line}"
    assert ValidationError([problem], flags).lines == [line]


@pytest.mark.parametrize("env, raises", [("1", ValidationError), ("true", ValidationError), ("0", SystemExit)])
def test_mskd_debug_raises_the_problems_with_a_traceback(monkeypatch, env, raises, bundle_command_line):
    monkeypatch.setenv("MSKD_DEBUG", env)
    with pytest.raises(raises) as info:
        report_problems(PROBLEMS)
    if raises is ValidationError:
        assert isinstance(info.value, ValueError) and info.value.problems == PROBLEMS
        assert str(info.value) == format_problems(PROBLEMS)


def test_only_local_rank_0_prints_but_every_rank_exits(monkeypatch, capsys, bundle_command_line):
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(SystemExit):
        report_problems(PROBLEMS)
    assert capsys.readouterr().err == ""


def _reporting_parser() -> ConfigParser:
    return ConfigParser(
        {
            "imports": ["$import mskd", "$import mskd.validation"],
            "check": "$mskd.validation.report_problems([mskd.validation.Problem('loss', 'term kd: bad')])",
        }
    )


def test_system_exit_passes_through_config_evaluation_unwrapped(monkeypatch, bundle_command_line):
    """MONAI wraps an ``Exception`` raised by a config expression in a RuntimeError; SystemExit is not one; the
    ValidationError is found in the chain (what ``mskd`` reports)."""
    with pytest.raises(SystemExit) as exit_info:
        _reporting_parser().get_parsed_content("check")
    assert exit_info.value.code == 2
    monkeypatch.setenv("MSKD_DEBUG", "1")
    with pytest.raises(RuntimeError) as info:
        _reporting_parser().get_parsed_content("check")
    assert isinstance(info.value.__cause__, ValidationError)
    assert validation_error(info.value) is info.value.__cause__ and validation_error(ValueError("x")) is None


def test_a_host_building_a_bad_workflow_gets_an_exception_not_an_exit(tmp_path):
    """``monai.bundle.create_workflow`` (MONAI Label, a notebook) runs ``initialize``: the pre-flight raises, wrapped
    by MONAI, and nothing is written."""
    from monai.bundle import create_workflow

    files = [str(BUNDLE.configs / f) for f in TEACHER]
    overrides = {**CPU, "dataset_dir": str(tmp_path / "none"), **_outputs(tmp_path)}
    with pytest.raises(Exception) as info:  # noqa: PT011 - any Exception; a SystemExit would escape pytest.raises
        create_workflow(config_file=files, bundle_root=str(BUNDLE.root), **overrides)
    refused = validation_error(info.value)
    assert refused is not None and refused.lines == [
        f"dataset_dir: dataset folder not found: {tmp_path / 'none'} (set --dataset_dir; `mskd phantom --output-dir "
        "DIR` makes a demo set)"
    ]
    assert not (tmp_path / "output").exists() and not (tmp_path / "models").exists()


def test_the_pre_flight_runs_only_as_a_config_step():
    with pytest.raises(RuntimeError, match=r"bundle config's first initialize step"):
        preflight()


def test_what_the_pre_flight_built_is_dropped_before_the_run(phantom, tmp_path):
    """The run builds its networks after ``set_determinism``, as without the pre-flight: same initial weights."""
    parser = BUNDLE.parser(TEACHER, **CPU, dataset_dir=str(phantom), mlflow=False, **_outputs(tmp_path))
    parser["check"] = "$mskd.validation.preflight()"  # as the bundle's first initialize step
    parser.get_parsed_content("check")
    assert "teacher_def" not in parser.ref_resolver.resolved_content
    torch.manual_seed(0)
    built = parser.get_parsed_content("network_def")
    torch.manual_seed(0)
    fresh = get_network("unet", 1, 9)
    assert all(torch.equal(a, b) for a, b in zip(built.state_dict().values(), fresh.state_dict().values(), strict=True))


# --- volumes ------------------------------------------------------------------------------------------------------


def _moved(origin=(0.0, 0.0, 0.0), spacing=(1.0, 1.0, 1.0), flip=False) -> np.ndarray:
    affine = BTCV_AFFINE.copy()
    affine[:3, :3] = affine[:3, :3] * np.asarray(spacing)
    affine[:3, 3] += origin
    if flip:
        affine[:, 0] *= -1
    return affine


@pytest.mark.parametrize(
    "label_affine, expected",
    [
        (_moved(), ""),
        (_moved(origin=(5e-4, 0, -5e-4)), ""),  # within 1e-3 mm
        (_moved(origin=(0, 2.0, 0)), "label origin [120.0, 112.0, -200.0], image [120.0, 110.0, -200.0] mm"),
        (_moved(spacing=(1.0, 1.0, 2.0)), "label spacing [0.8, 0.8, 5.0], image [0.8, 0.8, 2.5] mm"),
        (_moved(flip=True), "direction cosines differ by up to 2"),
    ],
)
def test_affines_agree_within_tolerance(label_affine, expected):
    assert _affine_difference(BTCV_AFFINE, label_affine) == expected


@pytest.mark.parametrize(
    "label, expected",
    [
        (np.array([0, 1, 8], dtype=np.uint8), None),
        (np.array([0, 9, 12, 12], dtype=np.uint8), "x: label values [9, 12] outside 0..8"),
        (np.array([-1, 0], dtype=np.int16), "x: label values [-1] outside 0..8"),
        (np.array([0.0, 2.5, 1.0]), "x: non-integer label values [2.5]; a label map holds class ids (0..8)"),
        (np.array([0.0, np.nan]), "x: 1 NaN or infinite voxel(s) in the label"),
        (np.arange(20), "x: label values [9, 10, 11, 12, 13, 14, 15, 16, ...] outside 0..8"),
    ],
)
def test_label_values(label, expected):
    found = [p.line() for p in _label_value_problems("dataset_dir", "x", label, 8, "0..8")]
    assert found == ([] if expected is None else [expected])


def test_a_singular_affine_is_not_a_physical_grid():
    singular = np.diag([1.0, 1.0, 0.0, 1.0])
    assert [p.line() for p in _grid_problems("input", "a.nii", singular)] == [
        "a.nii: the affine is singular or not finite (voxel spacing [1.0, 1.0, 0.0] mm), so the volume has no "
        "physical grid; fix the header (qform/sform or DICOM geometry)"
    ]
    assert _grid_problems("input", "a.nii", np.diag([0.8, 0.8, 2.5, 1.0])) == []


# --- datasets, read with the bundle's loading transform ------------------------------------------------------------


def _cases(root, data_format="msd", split="training", num_classes=9, window=None) -> list[str]:
    cases = get_datalist(data_format, root, split)
    loader = LoadCased(["image", "label"], data_format)
    return [p.line() for p in case_problems(cases, loader, num_classes, window, root=root, split=split)]


def test_good_phantom_has_no_problem(phantom, tmp_path):
    assert _cases(phantom) == [] and _cases(phantom, split="test") == []
    assert _problems(dataset_dir=str(phantom), **_outputs(tmp_path)) == []


def test_every_broken_case_is_reported_not_just_the_first(phantom, tmp_path):
    content = json.loads((phantom / "dataset.json").read_text())
    (tmp_path / "dataset.json").write_text(json.dumps(content))
    for folder in ("imagesTr", "labelsTr"):
        (tmp_path / folder).mkdir()
        for path in (phantom / folder).iterdir():
            (tmp_path / folder / path.name).write_bytes(path.read_bytes()[:300])  # every file truncated
    problems = _cases(tmp_path)
    files = [
        tmp_path / folder / f"synapse_phantom_000{i}.nii.gz" for i in (0, 1) for folder in ("imagesTr", "labelsTr")
    ]
    assert [p.split(": ")[0] for p in problems] == [str(f) for f in files]
    assert all(": cannot be read (" in p for p in problems)


def test_a_broken_dataset_json_is_one_problem_of_dataset_dir(tmp_path):
    """The datalist reads ``dataset.json`` (tests/data/test_datalist.py has every case); the problem names the
    file."""
    (tmp_path / "dataset.json").write_text("[1, 2")
    [line] = _problems(dataset_dir=str(tmp_path), **_outputs(tmp_path))
    assert line.startswith(f"dataset_dir: {tmp_path / 'dataset.json'}: not valid JSON (")


def test_dataset_folder_problems(tmp_path):
    outputs = _outputs(tmp_path)
    assert _problems(dataset_dir=str(tmp_path / "nope"), **outputs) == [
        f"dataset_dir: dataset folder not found: {tmp_path / 'nope'} (set --dataset_dir; `mskd phantom --output-dir "
        "DIR` makes a demo set)"
    ]
    (tmp_path / "f").write_text("x")
    assert _problems(dataset_dir=str(tmp_path / "f"), **outputs) == [
        f"dataset_dir: {tmp_path / 'f'} is a file, not a dataset folder"
    ]
    assert _problems(dataset_dir=str(tmp_path), data_format="nifty", **outputs) == [
        "data_format: unknown data format 'nifty'; choose one of ['msd', 'phantom', 'synapse_npz', 'btcv', 'kits19', "
        "'dicom', 'nifti']"
    ]


def test_other_formats_are_read_as_the_run_reads_them(tmp_path):
    write_btcv(tmp_path / "btcv", cases=(5, 6))  # labels 0..13, remapped by the loader to Synapse's 0..8
    assert _cases(tmp_path / "btcv", "btcv") == []
    write_kits19(tmp_path / "kits", cases=(1, 2), unlabelled=())
    assert _cases(tmp_path / "kits", "kits19", num_classes=3) == []
    assert "label values [2] outside the task's labels 0..1 (num_classes 2)" in str(
        _cases(tmp_path / "kits", "kits19", num_classes=2)
    )
    write_synapse_npz(tmp_path / "npz")
    assert _cases(tmp_path / "npz", "synapse_npz") == []
    assert _cases(tmp_path / "npz", "synapse_npz", "test") == []
    broken = tmp_path / "npz" / "train_npz" / "case0006_slice001.npz"
    broken.write_bytes(b"\x00" * 64)
    [problem] = _cases(tmp_path / "npz", "synapse_npz")  # once, not per key
    assert problem.startswith(str(tmp_path / "npz" / "train_npz" / "case0006_slice000.npz (+"))
    assert f"cannot read {broken} as .npz" in problem


def test_btcv_labels_are_checked_after_the_remap(tmp_path):
    """A value outside BTCV's 13 organs stays what it is after the remap, and is outside Synapse's 0..8."""
    write_btcv(tmp_path, cases=(5, 6))
    label = tmp_path / "label" / "label0005.nii.gz"
    image = nib.load(label)
    array = np.asanyarray(image.dataobj).copy()
    array[0, 0, 0] = 20
    nib.save(nib.Nifti1Image(array, image.affine), label)
    assert _cases(tmp_path, "btcv") == [f"{label}: label values [20] outside the task's labels 0..8 (num_classes 9)"]


def test_a_format_whose_datalist_fails_names_dataset_dir(tmp_path):
    (tmp_path / "img").mkdir()
    assert _problems(dataset_dir=str(tmp_path), data_format="btcv", **_outputs(tmp_path)) == [
        f"dataset_dir: BTCV folder {tmp_path} lacks ['label'] (expected img/imgXXXX.nii.gz, label/labelXXXX.nii.gz)"
    ]


def test_a_label_stored_in_another_orientation_is_read_onto_its_images_grid(phantom, tmp_path):
    """The loader reorients image and label to RAS: a label flipped on disk, with the affine that says so, is fine."""
    shutil.copytree(phantom, tmp_path / "data")
    label = tmp_path / "data" / "labelsTr" / "synapse_phantom_0000.nii.gz"
    image = nib.load(label)
    array = np.asanyarray(image.dataobj)[::-1].copy()
    flip = np.array([[-1, 0, 0, array.shape[0] - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(array, image.affine @ flip), label)
    assert _cases(tmp_path / "data") == []


# --- configs and checkpoints: each component built, its own check reported -----------------------------------------


def test_good_training_configs_have_no_problem(phantom, checkpoints, tmp_path):
    common = {"dataset_dir": str(phantom), **_outputs(tmp_path)}
    distill = {"teacher_ckpt": str(checkpoints / "unet9.pt")}
    assert _problems(TEACHER, **common) == []
    assert _problems(DISTILL, **common, **distill) == []
    for teacher_outputs, augment in (("auto", True), ("auto", "false"), ("cached", False), ("live", True)):
        assert _problems(DISTILL, **common, **distill, teacher_outputs=teacher_outputs, augment=augment) == []
    assert _problems(DISTILL, **common, **distill, teacher_cache_gib=0.5) == []
    evaluate = {**common, **distill, "ckpt_path": str(checkpoints / "tiny9.pt")}
    assert _problems(EVALUATE, **evaluate) == []


@pytest.mark.parametrize(
    "stack, change, expected",
    [
        (DISTILL, {"kd_weight": float("nan")}, "loss: term 'kd': weight must be finite and >= 0, got nan."),
        (DISTILL, {"cwd_weight": True}, "loss: term 'cwd': weight must be a real number >= 0, got True."),
        (DISTILL, {"distill_stages": "low"}, "loss: term 'ffd': stages must be a non-empty list of tap names"),
        (TEACHER, {"seg_loss#lambda_dice": -1.0}, "seg_loss: lambda_dice should be no less than 0.0."),
        (TEACHER, {"role": "pupil"}, "role: must be one of ['teacher', 'student'], got 'pupil'"),
        (
            DISTILL,
            {"teacher_outputs": "cached", "augment": "true"},
            "teacher_outputs: 'cached' needs augment false (random augmentation makes every input new, so the cache "
            "would never hit and only cost memory); set teacher_outputs to 'auto' or 'live', or augment to false",
        ),
        (DISTILL, {"teacher_outputs": "always", "augment": False}, "teacher_outputs: Unsupported option 'always'"),
        (DISTILL, {"teacher_cache_gib": "4"}, "teacher_cache_gib: must be a number > 0 (GiB), got '4'"),
        (DISTILL, {"teacher_cache_gib": 0}, "teacher_cache_gib: must be a number > 0 (GiB), got 0"),
        (DISTILL, {"teacher_cache_gib": float("inf")}, "teacher_cache_gib: must be a number > 0 (GiB), got inf"),
        (TEACHER, {"teacher_kwargs": [1]}, "teacher: unet, teacher_kwargs [1]: "),
        (TEACHER, {"num_classes": 1}, "num_classes: must be an integer >= 2, got 1"),
        (TEACHER, {"task": "liver"}, "task: unknown task 'liver'; choose one of ['synapse', 'kits']"),
        (
            DISTILL,
            {"teacher": "attention_unet"},
            "distill_stages: the teacher's taps: AttentionUnet has no default tap points; name the sub-modules",
        ),
        (DISTILL, {"teacher_ckpt": "list.pt"}, "teacher_ckpt: teacher checkpoint {ckpt}/list.pt holds a list, not a"),
        (
            DISTILL,
            {"teacher_ckpt": "unet3.pt"},
            "teacher_ckpt: teacher checkpoint {ckpt}/unet3.pt does not fit UNet (it predicts 3 classes, but the task "
            "has 9: num_classes; teacher and student must predict the same classes): shape mismatch: ",
        ),
        (
            EVALUATE,
            {"ckpt_path": "unet3.pt", "student": "unet"},
            "ckpt_path: student checkpoint {ckpt}/unet3.pt does not fit UNet (it predicts 3 classes, but the task has "
            "9: num_classes; another task's model?): shape mismatch: ",
        ),
        (
            EVALUATE,
            {"ckpt_path": "tiny9_16.pt"},
            "image_size: student checkpoint {ckpt}/tiny9_16.pt was trained on 16x16 slices, this run uses 32x32; pass "
            "--image_size 16",
        ),
        (
            EVALUATE,
            {"ckpt_path": "tiny9_16.pt", "image_size": 16},
            "ckpt_path: student checkpoint {ckpt}/tiny9_16.pt was written by run tiny_unet-baseline-s0, this run "
            "evaluates tiny_unet_from_unet-mskd-s0; evaluate the run that wrote it",
        ),
    ],
)
def test_config_problems(phantom, checkpoints, tmp_path, stack, change, expected):
    change = {k: str(checkpoints / v) if k.endswith(("ckpt", "_path")) else v for k, v in change.items()}
    args = {"dataset_dir": str(phantom), "teacher_ckpt": str(checkpoints / "unet9.pt"), **_outputs(tmp_path)}
    problems = _problems(stack, **{**args, **change})
    assert any(expected.replace("{ckpt}", str(checkpoints)) in p for p in problems), problems


def test_a_bad_network_is_reported_once_not_again_by_what_uses_it(phantom, checkpoints, tmp_path):
    args = {"dataset_dir": str(phantom), "teacher_ckpt": str(checkpoints / "unet9.pt"), **_outputs(tmp_path)}
    [line] = _problems(DISTILL, **args, teacher="unett")
    assert line.startswith("teacher: unett, teacher_kwargs {}: By 'unett', did you mean 'unet'?")


# --- inference ----------------------------------------------------------------------------------------------------


def test_good_inference_inputs_have_no_problem(phantom, checkpoints, tmp_path):
    common = {"ckpt_path": str(checkpoints / "tiny9.pt"), "image_size": 32, "output_dir": str(tmp_path / "out")}
    assert _problems(INFERENCE, input=str(phantom / "imagesTr"), **common) == []
    volume = np.full((3, 16, 16), -1000.0)
    write_dicom_series(tmp_path / "series", volume)
    assert _problems(INFERENCE, input=str(tmp_path / "series"), **common) == []


def test_inference_problems_are_all_reported(tmp_path):
    image = nib.Nifti1Image(np.zeros((4, 4, 4, 2), dtype=np.float32), np.eye(4))  # two channels: not one volume
    nib.save(image, tmp_path / "ct.nii.gz")
    common = {"ckpt_path": str(tmp_path / "model.pt"), "output_dir": str(tmp_path / "out")}
    problems = _problems(INFERENCE, input=str(tmp_path), student="tinyunet", **common)
    assert problems[0].startswith("student: tinyunet, student_kwargs {}: By 'tinyunet', did you mean 'tiny_unet'?")
    assert problems[1] == (
        f"{tmp_path / 'ct.nii.gz'}: image holds 2 volumes (channel-first shape (2, 4, 4, 4) once loaded); one 3D "
        "volume is expected"
    )
    assert _problems(INFERENCE, input=str(tmp_path / "none"), **common)[0].startswith(
        f"input: inference input not found: {tmp_path / 'none'}"
    )
    assert _problems(INFERENCE, input=str(tmp_path), **common)[0].startswith(
        f"ckpt_path: student checkpoint not found: {tmp_path / 'model.pt'}"
    )


def test_mskd_predict_refuses_bad_input_with_every_problem(tmp_path, capsys):
    (tmp_path / "ct.nii.gz").write_bytes(b"\x00" * 100)
    argv = ["predict", "--input", str(tmp_path / "ct.nii.gz"), "--output-dir", str(tmp_path / "out")]
    argv += ["--ckpt-path", str(tmp_path / "model.pt")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "mskd: 2 problem(s) found before starting:" in err and "Traceback" not in err
    assert f"{tmp_path / 'ct.nii.gz'}: cannot be read (" in err and "--ckpt-path: student checkpoint not found" in err
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValidationError) as info:
        main([*argv, "--debug"])
    assert len(info.value.problems) == 2


# --- run settings, outputs, sizes, intensities, leaks --------------------------------------------------------------


@pytest.mark.parametrize(
    "settings, problem",
    [
        ({"max_epochs": "2"}, "max_epochs: must be an integer >= 1, got '2'"),
        ({"batch_size": True}, "batch_size: must be an integer >= 1, got True"),  # a bool is not a count
        ({"checkpoint_every": -1}, "checkpoint_every: must be an integer >= 0, got -1"),
        ({"image_size": 7}, "image_size: must be an integer >= 8, got 7"),
        ({"learning_rate": 0}, "learning_rate: must be a finite number > 0, got 0"),
        ({"learning_rate": float("inf")}, "learning_rate: must be a finite number > 0, got inf"),
        ({"resume": "maybe"}, "resume: must be true or false, got 'maybe'"),
    ],
)
def test_each_bad_setting_is_named_with_its_value(phantom, tmp_path, settings, problem):
    assert _problems(dataset_dir=str(phantom), **_outputs(tmp_path), **settings) == [problem]


def test_good_settings_have_no_problem(phantom, tmp_path):
    settings = {"max_epochs": 1, "checkpoint_every": 0, "learning_rate": 1e-3, "resume": "false", "image_size": 32}
    outputs = {"output_dir": str(tmp_path / "new" / "output"), "ckpt_dir": str(tmp_path)}
    assert _problems(dataset_dir=str(phantom), **settings, **outputs) == []


def test_an_output_folder_that_cannot_be_written_is_refused(tmp_path, monkeypatch):
    import os

    (tmp_path / "file").write_text("x")
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked and real_access(path, mode))
    problems = _output_problems({"output_dir": tmp_path / "file", "ckpt_dir": locked / "models", "x": locked})
    assert [p.line() for p in problems] == [
        f"output_dir: {tmp_path / 'file'} is a file, not a folder; give a folder (it is created if missing)",
        f"ckpt_dir: {locked / 'models'} cannot be created: {locked} is not writable; choose another folder or fix "
        "its permissions",
        f"x: {locked} is not writable; choose another folder or fix its permissions",
    ]


@pytest.mark.parametrize(
    "name, size, problem",
    [
        ("tiny_unet", 32, None),
        (
            "tiny_unet",
            30,
            "image_size: the student network tiny_unet fails on 30x30 slices; nearest sizes it takes: 24 or 32",
        ),
        ("enet", 50, "image_size: the student network enet fails on 50x50 slices; nearest sizes it takes: 48 or 56"),
        ("swin_unetr", 64, None),
    ],
)
def test_the_image_size_must_fit_every_network_built(phantom, tmp_path, name, size, problem):
    problems = _problems(STUDENT, dataset_dir=str(phantom), student=name, image_size=size, **_outputs(tmp_path))
    assert problems == ([] if problem is None else [problem])


def _write_case(root, name, image, label, affine=None):
    affine = np.diag([1.0, 1.0, 2.0, 1.0]) if affine is None else affine
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / name)
    nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / name)
    return {"image": f"imagesTr/{name}", "label": f"labelsTr/{name}"}


def test_intensities_must_be_hounsfield_units_with_air(tmp_path):
    ct = np.full((8, 8, 4), -1000, np.int16)
    mr = np.full((8, 8, 4), 300.0, np.float32)
    label = np.ones((8, 8, 4), np.uint8)
    cases = [_write_case(tmp_path, "ct.nii.gz", ct, label), _write_case(tmp_path, "mr.nii.gz", mr, label)]
    (tmp_path / "dataset.json").write_text(json.dumps({"training": cases}))
    assert _cases(tmp_path, window=[-125, 275]) == [
        f"{tmp_path / 'imagesTr/mr.nii.gz'}: intensities span [300, 300], with no air below -500 HU: not a CT in "
        "Hounsfield units (an MR or a rescaled export?); the models are trained on HU"
    ]
    assert _cases(tmp_path) == []  # no window, no intensity check
    assert "outside [0, 1]" in _cases(tmp_path, window=[0.0, 1.0])[0]


def test_background_only_labels_are_refused_and_a_class_never_seen_is_warned(tmp_path):
    ct = np.full((8, 8, 4), -1000, np.int16)
    empty = np.zeros((8, 8, 4), np.uint8)
    cases = {
        "training": [_write_case(tmp_path, "a.nii.gz", ct, empty)],
        "test": [_write_case(tmp_path, "t.nii.gz", ct, empty)],
    }
    (tmp_path / "dataset.json").write_text(json.dumps(cases))
    assert _cases(tmp_path, num_classes=3) == [
        f"{tmp_path}: every label of the 1 'training' cases is background only (all 0); nothing to learn (are the "
        "label files the images' segmentations?)"
    ]
    assert _cases(tmp_path, split="test", num_classes=3) == []  # a test case may hold no organ
    (tmp_path / "dataset.json").write_text(json.dumps({"training": [_write_case(tmp_path, "b.nii.gz", ct, empty + 1)]}))
    with pytest.warns(UserWarning, match=r"class\(es\) \[2\] appear in no 'training' label"):
        assert _cases(tmp_path, num_classes=3) == []


def test_a_case_listed_twice_or_in_both_splits_is_a_leak(tmp_path):
    ct = np.full((8, 8, 4), -1000, np.int16)
    label = np.ones((8, 8, 4), np.uint8)
    a, b = _write_case(tmp_path, "a.nii.gz", ct, label), _write_case(tmp_path, "b.nii.gz", ct, label)
    (tmp_path / "dataset.json").write_text(json.dumps({"training": [a, b, a]}))
    assert _cases(tmp_path) == [
        f"{tmp_path}: 'training' cases 0 and 2 are the same image {tmp_path / a['image']}; a case listed twice can be "
        "trained on and validated on (a leak); list each case once"
    ]
    (tmp_path / "dataset.json").write_text(json.dumps({"training": [a, b], "test": [b]}))
    assert _cases(tmp_path) == [
        f"{tmp_path}/dataset.json: 1 'test' case(s) are also 'training' cases "
        f"([{str(tmp_path / b['image'])!r}]); test cases must never be trained on"
    ]
    assert _cases(tmp_path, split="test") == []
