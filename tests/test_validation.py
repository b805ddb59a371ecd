import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from mskd.cli import main
from mskd.data.phantom import generate_phantom_dataset
from mskd.networks import get_network
from mskd.validation import (
    ValidationError,
    _affine_difference,
    _label_value_problems,
    check_training,
    dataset_problems,
    format_problems,
    inference_problems,
    report_problems,
    training_problems,
    validation_error,
)
from tests.data.fixtures import BTCV_AFFINE, write_btcv, write_dicom_series, write_kits19, write_synapse_npz

PROBLEMS = ["a.nii.gz: 1 NaN voxel(s) in the image", "kd_weight: loss weight must be a finite number >= 0, got -1"]


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.delenv("MSKD_DEBUG", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)


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
    return root


# --- reporting ----------------------------------------------------------------------------------------------------


@pytest.fixture
def bundle_command_line(monkeypatch):
    """As in ``python -m monai.bundle run``: MONAI's command line, where the report is printed and the process exits."""
    monkeypatch.setattr("mskd.validation._bundle_command_line", lambda: True)


def test_a_library_call_raises_the_problems(capsys):
    """In a process of its own (``create_workflow`` in a host, ``mskd``'s commands) the problems are an exception."""
    with pytest.raises(ValidationError) as info:
        report_problems(PROBLEMS)
    assert info.value.problems == PROBLEMS and capsys.readouterr().err == ""


def test_report_lists_every_problem_on_one_line_and_exits_2(capsys, bundle_command_line):
    with pytest.raises(SystemExit) as exit_info:
        report_problems([*PROBLEMS, "torch says:\nmore\nlines"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "mskd: 3 problem(s) found before starting:",
        *(f"  - {p}" for p in PROBLEMS),
        "  - torch says: ...",
    ]
    assert "Traceback" not in err


def test_no_problem_is_silent(capsys):
    report_problems([])
    assert capsys.readouterr().err == ""


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


def test_system_exit_passes_through_config_evaluation_unwrapped(monkeypatch, bundle_command_line):
    """MONAI wraps an ``Exception`` raised by a config expression in a RuntimeError; SystemExit is not one; the
    ValidationError is found in the chain (what ``mskd`` reports)."""
    parser = ConfigParser(
        {
            "imports": ["$import mskd", "$import mskd.validation"],
            "check": f"$mskd.validation.report_problems({PROBLEMS})",
        }
    )
    with pytest.raises(SystemExit) as exit_info:
        parser.get_parsed_content("check")
    assert exit_info.value.code == 2
    monkeypatch.setenv("MSKD_DEBUG", "1")
    parser = ConfigParser(
        {
            "imports": ["$import mskd", "$import mskd.validation"],
            "check": f"$mskd.validation.report_problems({PROBLEMS})",
        }
    )
    with pytest.raises(RuntimeError) as info:
        parser.get_parsed_content("check")
    assert isinstance(info.value.__cause__, ValidationError)
    assert validation_error(info.value) is info.value.__cause__ and validation_error(ValueError("x")) is None


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
    assert _label_value_problems("x", label, 8, "0..8") == ([] if expected is None else [expected])


# --- datasets -----------------------------------------------------------------------------------------------------


def test_good_phantom_has_no_problem(phantom):
    assert dataset_problems(phantom, "msd", "training", 9, num_val_cases=1) == []
    assert dataset_problems(phantom, "msd", "test", 9) == []


def test_every_broken_case_is_reported_not_just_the_first(phantom, tmp_path):
    content = json.loads((phantom / "dataset.json").read_text())
    (tmp_path / "dataset.json").write_text(json.dumps(content))
    for folder in ("imagesTr", "labelsTr"):
        (tmp_path / folder).mkdir()
        for path in (phantom / folder).iterdir():
            (tmp_path / folder / path.name).write_bytes(path.read_bytes()[:300])  # every file truncated
    problems = dataset_problems(tmp_path, "msd", "training", 9)
    files = [
        tmp_path / folder / f"synapse_phantom_000{i}.nii.gz" for i in (0, 1) for folder in ("imagesTr", "labelsTr")
    ]
    assert [p.split(": ")[0] for p in problems] == [str(f) for f in files]
    assert all("not a NIfTI file" in p or "voxel data cannot be read" in p for p in problems)


@pytest.mark.parametrize(
    "content, expected",
    [
        ("[1, 2", "not valid JSON"),
        ("[1, 2]", "holds a JSON list, not an object with a 'training' list"),
        ('{"training": []}', "the 'training' list is empty or not a list"),
        ('{"training": ["a.nii.gz"]}', "training[0] is a str, not an {'image': ..., 'label': ...} object"),
        ('{"training": [{"image": "a.nii.gz"}]}', "training[0] has no 'label' file name"),
    ],
)
def test_dataset_json_problems(tmp_path, content, expected):
    (tmp_path / "dataset.json").write_text(content)
    problems = dataset_problems(tmp_path, "msd", "training", 9)
    assert any(expected in p for p in problems), problems
    assert all(p.startswith(f"{tmp_path / 'dataset.json'}: ") for p in problems)


def test_dataset_folder_problems(tmp_path):
    assert dataset_problems(tmp_path / "nope") == [
        f"dataset_dir: dataset folder not found: {tmp_path / 'nope'} (set --dataset_dir; `mskd phantom` writes one)"
    ]
    (tmp_path / "f").write_text("x")
    assert dataset_problems(tmp_path / "f") == [f"dataset_dir: {tmp_path / 'f'} is a file, not a dataset folder"]
    assert "data_format: unknown data format 'nifty'" in dataset_problems(tmp_path, "nifty")[0]


def test_other_formats_are_read_with_their_readers(tmp_path):
    write_btcv(tmp_path / "btcv", cases=(5, 6))  # labels 0..13, remapped when loaded: not a problem
    assert dataset_problems(tmp_path / "btcv", "btcv", "training", 9) == []
    write_kits19(tmp_path / "kits", cases=(1, 2), unlabelled=())
    assert dataset_problems(tmp_path / "kits", "kits19", "training", 3) == []
    assert "label values [2] outside the task's labels 0..1 (num_classes 2)" in str(
        dataset_problems(tmp_path / "kits", "kits19", "training", 2)
    )
    write_synapse_npz(tmp_path / "npz")
    assert dataset_problems(tmp_path / "npz", "synapse_npz", "training", 9) == []
    assert dataset_problems(tmp_path / "npz", "synapse_npz", "test", 9) == []
    broken = tmp_path / "npz" / "train_npz" / "case0006_slice001.npz"
    broken.write_bytes(b"\x00" * 64)
    problems = dataset_problems(tmp_path / "npz", "synapse_npz", "training", 9)
    assert len(problems) == 1 and problems[0].startswith(f"cannot read {broken} as .npz")  # once, not per key
    assert dataset_problems(tmp_path / "empty_btcv_parent", "btcv")[0].startswith("dataset_dir: dataset folder not")


def test_a_format_whose_datalist_fails_names_dataset_dir(tmp_path):
    (tmp_path / "img").mkdir()
    problems = dataset_problems(tmp_path, "btcv")
    assert problems == [
        f"dataset_dir: BTCV folder {tmp_path} lacks ['label'] (expected img/imgXXXX.nii.gz, label/labelXXXX.nii.gz)"
    ]


# --- configs and checkpoints ----------------------------------------------------------------------------------------


def test_good_training_configs_have_no_problem(phantom, checkpoints):
    common = {"dataset_dir": phantom, "num_classes": 9, "num_val_cases": 1, "teacher": "unet"}
    distill = {"role": "student", "distill_stages": ["low", "high"], "teacher_ckpt": checkpoints / "unet9.pt"}
    assert training_problems(**common) == []
    assert training_problems(**common, **distill) == []
    for teacher_outputs, augment in (("auto", True), ("auto", "false"), ("cached", False), ("live", True)):
        assert training_problems(**common, **distill, teacher_outputs=teacher_outputs, augment=augment) == []
    assert training_problems(**common, **distill, teacher_cache_gib=0.5) == []
    evaluate = {**common, "split": "test", "num_val_cases": None, "role": "student"}
    assert training_problems(**evaluate, ckpt_path=checkpoints / "tiny9.pt") == []
    # a network without declared taps names them in the config: not checked here
    no_taps = {**common, "teacher": "attention_unet", "student": "segresnet", "distill_stages": ["x"]}
    assert training_problems(**no_taps, role="student") == []
    check_training(**common)  # returns: nothing to report


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"loss_weights": {"kd_weight": float("nan")}}, "kd_weight: loss weight must be a finite number >= 0, got nan"),
        ({"loss_weights": {"w": True}}, "w: loss weight must be a finite number >= 0, got True"),
        ({"loss_weights": {"w": "1"}}, "w: loss weight must be a finite number >= 0, got '1'"),
        ({"distill_stages": "low"}, "distill_stages: must be a non-empty list of tap names, got 'low'"),
        ({"role": "pupil"}, "role: must be 'teacher' or 'student', got 'pupil'"),
        (
            {"teacher_outputs": "cached", "augment": "true"},
            "teacher_outputs: 'cached' needs augment false (random augmentation makes every input new, so the cache "
            "would never hit and only cost memory); set teacher_outputs to 'auto' or 'live', or augment to false",
        ),
        ({"teacher_outputs": "always", "augment": False}, "teacher_outputs: Unsupported option 'always'"),
        ({"teacher_cache_gib": "4"}, "teacher_cache_gib: must be a number > 0 (GiB), got '4'"),
        ({"teacher_cache_gib": 0}, "teacher_cache_gib: must be a number > 0 (GiB), got 0"),
        ({"teacher_cache_gib": float("inf")}, "teacher_cache_gib: must be a number > 0 (GiB), got inf"),
        ({"teacher_kwargs": [1]}, "teacher_kwargs: must be a mapping of constructor arguments, got [1]"),
        ({"num_classes": 1}, "num_classes: must be an integer >= 2 (background included), got 1"),
        ({"teacher_ckpt": "list.pt"}, "teacher_ckpt: teacher checkpoint {ckpt}/list.pt holds a list, not a state dict"),
        (
            {"teacher_ckpt": "unet3.pt"},
            "teacher_ckpt: teacher checkpoint {ckpt}/unet3.pt predicts 3 classes, but the task has 9 (num_classes)",
        ),
        (
            {"role": "student", "ckpt_path": "unet3.pt", "student": "unet"},
            "ckpt_path: student checkpoint {ckpt}/unet3.pt predicts 3 classes, but the task has 9 (num_classes); "
            "another task's model?",
        ),
    ],
)
def test_config_problems(phantom, checkpoints, change, expected):
    change = {k: str(checkpoints / v) if k.endswith(("ckpt", "_path")) else v for k, v in change.items()}
    args = {"dataset_dir": phantom, "num_classes": 9, "teacher": "unet", **change}
    problems = training_problems(**args)
    assert any(expected.replace("{ckpt}", str(checkpoints)) in p for p in problems), problems


def test_networks_that_do_not_build_on_the_meta_device_are_built_for_real(phantom, checkpoints):
    problems = training_problems(phantom, teacher="swin_unetr", teacher_ckpt=checkpoints / "unet9.pt", role="teacher")
    assert len(problems) == 1 and "does not fit swin_unetr" in problems[0]


# --- inference ----------------------------------------------------------------------------------------------------


def test_good_inference_inputs_have_no_problem(phantom, checkpoints, tmp_path):
    assert inference_problems(phantom / "imagesTr", checkpoints / "tiny9.pt") == []
    write_dicom_series(tmp_path / "series", np.zeros((3, 8, 8)))
    assert inference_problems(tmp_path / "series", checkpoints / "tiny9.pt") == []


def test_inference_problems_are_all_reported(tmp_path):
    image = nib.Nifti1Image(np.zeros((4, 4, 4, 2), dtype=np.float32), np.eye(4))  # two channels: not one volume
    nib.save(image, tmp_path / "ct.nii.gz")
    problems = inference_problems(tmp_path, tmp_path / "model.pt", student="tinyunet")
    assert problems[0] == f"{tmp_path / 'ct.nii.gz'}: image is 4D, shape (4, 4, 4, 2); a 3D volume is expected"
    assert problems[1].startswith("student: unknown network 'tinyunet'")
    assert inference_problems(tmp_path / "none", tmp_path / "model.pt")[0].startswith(
        f"input: inference input not found: {tmp_path / 'none'}"
    )
    assert inference_problems(tmp_path, tmp_path / "model.pt")[-1].startswith(
        f"ckpt_path: student checkpoint not found: {tmp_path / 'model.pt'}"
    )


def test_mskd_predict_refuses_bad_input_with_every_problem(tmp_path, capsys):
    (tmp_path / "ct.nii.gz").write_bytes(b"\x00" * 100)
    argv = ["predict", "--input", str(tmp_path / "ct.nii.gz"), "--output-dir", str(tmp_path / "out")]
    argv += ["--ckpt-path", str(tmp_path / "model.pt")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "mskd: 2 problem(s) found before starting:" in err and "Traceback" not in err
    assert f"{tmp_path / 'ct.nii.gz'}: not a NIfTI file" in err and "--ckpt-path: student checkpoint not found" in err
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
def test_each_bad_setting_is_named_with_its_value(phantom, settings, problem):
    assert training_problems(phantom, teacher="unet", settings=settings) == [problem]


def test_good_settings_have_no_problem(phantom, tmp_path):
    settings = {"max_epochs": 1, "checkpoint_every": 0, "learning_rate": 1e-3, "resume": "false", "image_size": 32}
    outputs = {"output_dir": tmp_path / "new" / "output", "ckpt_dir": tmp_path}
    assert training_problems(phantom, teacher="unet", settings=settings, output_dirs=outputs, task="synapse") == []


def test_an_output_folder_that_cannot_be_written_is_refused(tmp_path, monkeypatch):
    import os

    (tmp_path / "file").write_text("x")
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked and real_access(path, mode))
    from mskd.validation import _output_problems

    assert _output_problems({"output_dir": tmp_path / "file", "ckpt_dir": locked / "models", "x": locked}) == [
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
        ("swin_unetr", 64, None),  # built for real, not on the meta device
    ],
)
def test_the_image_size_must_fit_every_network_built(phantom, name, size, problem):
    problems = training_problems(phantom, student=name, role="student", settings={"image_size": size})
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
    assert dataset_problems(tmp_path, window=[-125, 275]) == [
        f"{tmp_path / 'imagesTr/mr.nii.gz'}: intensities span [300, 300] (float32), with no air below -500 HU: not a "
        "CT in Hounsfield units (an MR or a rescaled export?); the models are trained on HU"
    ]
    assert dataset_problems(tmp_path) == []  # no window, no intensity check
    assert "outside [0, 1]" in dataset_problems(tmp_path, window=[0.0, 1.0])[0]


def test_background_only_labels_are_refused_and_a_class_never_seen_is_warned(tmp_path):
    ct = np.full((8, 8, 4), -1000, np.int16)
    empty = np.zeros((8, 8, 4), np.uint8)
    cases = {
        "training": [_write_case(tmp_path, "a.nii.gz", ct, empty)],
        "test": [_write_case(tmp_path, "t.nii.gz", ct, empty)],
    }
    (tmp_path / "dataset.json").write_text(json.dumps(cases))
    assert dataset_problems(tmp_path, num_classes=3) == [
        f"{tmp_path}: every label of the 1 'training' cases is background only (all 0); nothing to learn (are the "
        "label files the images' segmentations?)"
    ]
    assert dataset_problems(tmp_path, split="test", num_classes=3) == []  # a test case may hold no organ
    (tmp_path / "dataset.json").write_text(json.dumps({"training": [_write_case(tmp_path, "b.nii.gz", ct, empty + 1)]}))
    with pytest.warns(UserWarning, match=r"class\(es\) \[2\] appear in no 'training' label"):
        assert dataset_problems(tmp_path, num_classes=3) == []


def test_a_case_listed_twice_or_in_both_splits_is_a_leak(tmp_path):
    ct = np.full((8, 8, 4), -1000, np.int16)
    label = np.ones((8, 8, 4), np.uint8)
    a, b = _write_case(tmp_path, "a.nii.gz", ct, label), _write_case(tmp_path, "b.nii.gz", ct, label)
    (tmp_path / "dataset.json").write_text(json.dumps({"training": [a, b, a]}))
    assert dataset_problems(tmp_path) == [
        f"{tmp_path}: 'training' cases 0 and 2 are the same image {tmp_path / a['image']}; a case listed twice can be "
        "trained on and validated on (a leak); list each case once"
    ]
    (tmp_path / "dataset.json").write_text(json.dumps({"training": [a, b], "test": [b]}))
    assert dataset_problems(tmp_path) == [
        f"{tmp_path}/dataset.json: 1 'test' case(s) are also 'training' cases "
        f"([{str(tmp_path / b['image'])!r}]); test cases must never be trained on"
    ]
    assert dataset_problems(tmp_path, split="test") == []


def test_a_singular_affine_is_not_a_physical_grid(tmp_path):
    from mskd.validation import _grid_problems

    singular = np.diag([1.0, 1.0, 0.0, 1.0])
    assert _grid_problems("a.nii", singular) == [
        "a.nii: the header's affine is singular or not finite (voxel spacing [1.0, 1.0, 0.0] mm), so the volume has "
        "no physical grid; fix the header (qform/sform or DICOM geometry)"
    ]
    assert _grid_problems("a.nii", np.diag([0.8, 0.8, 2.5, 1.0])) == []
