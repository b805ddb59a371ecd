"""A corpus of broken inputs: each is refused by the bundle before any compute, with every problem on one line.

Each case copies a good tiny phantom (or inference input), breaks one thing (or two, to see both reported), runs the
bundle in-process through ``monai.bundle.run`` and checks: exit status 2 and no traceback; the key phrase of the
message and the file or config key it names; nothing written to the output or checkpoint folder; no MLflow run left
``RUNNING``. One case runs as a user types it (``python -m monai.bundle run``) in a subprocess.
"""

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from mskd.data.phantom import generate_phantom_dataset
from mskd.networks import get_network
from tests.bundles.runner import BUNDLES, run_bundle
from tests.data.fixtures import write_dicom_series

BUNDLE = BUNDLES / "mskd_synapse"
CONFIGS = BUNDLE / "configs"
TEACHER = ("train_teacher.json",)
STUDENT = ("train_teacher.json", "train_student.json")
DISTILL = ("train_teacher.json", "distill.json")
EVALUATE = ("train_teacher.json", "distill.json", "evaluate.json")
INFERENCE = ("inference.json",)
# the CPU networks and tiny sizes of tests/bundles/runner.py, as Python values for an in-process run
TINY = {"teacher": "unet", "student": "tiny_unet", "image_size": 32, "max_epochs": 1, "val_interval": 1}
TINY |= {"batch_size": 2, "slices_per_volume": 2, "num_val_cases": 1, "val_slice_batch": 8, "log_every": 1}

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A good phantom (2 training cases, 1 test case), good checkpoints and a good inference input."""
    root = tmp_path_factory.mktemp("base")
    generate_phantom_dataset(root / "data", cases=3, size=(32, 32, 16), test_cases=1)
    (root / "ckpt").mkdir()
    torch.save(get_network("unet", 1, 9).state_dict(), root / "ckpt" / "unet9.pt")
    torch.save(get_network("unet", 1, 3).state_dict(), root / "ckpt" / "unet3.pt")
    torch.save(get_network("tiny_unet", 1, 9).state_dict(), root / "ckpt" / "tiny9.pt")
    return root


@dataclass
class Workspace:
    """One case's copy of the base: ``data`` (the phantom), ``base`` (shared checkpoints), ``root`` (tmp_path)."""

    root: Path
    base: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    def image(self, case: int = 0) -> Path:
        return self.data / "imagesTr" / f"synapse_phantom_{case:04d}.nii.gz"

    def label(self, case: int = 0) -> Path:
        return self.data / "labelsTr" / f"synapse_phantom_{case:04d}.nii.gz"

    def ckpt(self, name: str) -> Path:
        return self.base / "ckpt" / name


def _save(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, path)


def _edit(path: Path, change: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]) -> None:
    """Rewrite a NIfTI file with ``(array, affine) = change(array, affine)``."""
    image = nib.load(path)
    array, affine = change(np.asanyarray(image.dataobj).copy(), image.affine.copy())
    _save(path, array, affine)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(4000))


def _with_voxel(value: float):
    def change(array, affine):
        array = array.astype(np.float32)
        array[5, 6, 7] = value
        return array, affine

    return change


def _shifted(array, affine):
    affine[0, 3] += 5.0
    return array, affine


def _dataset_json(ws: Workspace, change: Callable[[dict], dict | str]) -> None:
    path = ws.data / "dataset.json"
    content = change(json.loads(path.read_text()))
    path.write_text(content if isinstance(content, str) else json.dumps(content))


def _two_series(ws: Workspace) -> dict:
    volume = np.random.default_rng(0).integers(-200, 200, (4, 16, 16))
    write_dicom_series(ws.root / "dicom", volume, series_uid="1.2.826.0.1.3680043.2.1125.7.1")
    write_dicom_series(ws.root / "dicom", volume, series_uid="1.2.826.0.1.3680043.2.1125.7.2", suffix="")
    return {"input": str(ws.root / "dicom")}


def _bad_input_file(ws: Workspace) -> dict:
    _random_bytes(ws.root / "ct.nii.gz")
    return {"input": str(ws.root / "ct.nii.gz")}


def _nan_input(ws: Workspace) -> dict:
    shutil.copy(ws.image(2), ws.root / "ct.nii.gz")
    _edit(ws.root / "ct.nii.gz", _with_voxel(np.nan))
    return {"input": str(ws.root / "ct.nii.gz")}


def _empty_folder(ws: Workspace) -> dict:
    (ws.root / "empty").mkdir()
    return {"dataset_dir": str(ws.root / "empty")}


def _two_d(ws: Workspace) -> None:
    for path in (ws.image(0), ws.label(0)):
        _edit(path, lambda array, affine: (array[:, :, 8], affine))


def _two_broken_files(ws: Workspace) -> None:
    _truncate(ws.image(0))
    _edit(ws.label(1), lambda array, affine: (np.where(array == 1, 12, array).astype(np.uint8), affine))


def _as_uint8(array, affine):
    return np.clip(array + 1024, 0, 255).astype(np.uint8), affine


def _mr_like(array, affine):
    return (np.clip(array, -1024, None) + 1024).astype(np.float32) * 0.5, affine  # positive, MR-like intensities


def _rotated(array, affine):
    """The same voxels on axes turned by 0.2 rad about z: not the image's grid, whatever the orientation."""
    c, s = np.cos(0.2), np.sin(0.2)
    affine[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ affine[:3, :3]
    return array, affine


def _scaled(array, affine):
    affine[:3, :3] *= 1.5
    return array, affine


def _every_label_empty(ws: Workspace) -> None:
    for case in (0, 1):
        _edit(ws.label(case), lambda array, affine: (np.zeros_like(array), affine))


def _each_training_case_twice(ws: Workspace) -> None:
    _dataset_json(ws, lambda c: {**c, "training": c["training"] * 2})


def _test_case_in_training(ws: Workspace) -> None:
    _dataset_json(ws, lambda c: {**c, "training": [*c["training"], *c["test"]]})


def _mr_dicom(ws: Workspace) -> dict:
    import pydicom

    volume = np.full((4, 16, 16), -1000, dtype=np.int16)
    for file in write_dicom_series(ws.root / "dicom", volume):
        header = pydicom.dcmread(file)
        header.Modality = "MR"
        header.save_as(file)
    return {"input": str(ws.root / "dicom")}


def _input_edited(change) -> Callable[[Workspace], dict]:
    def breaker(ws: Workspace) -> dict:
        shutil.copy(ws.image(2), ws.root / "ct.nii.gz")
        _edit(ws.root / "ct.nii.gz", change)
        return {"input": str(ws.root / "ct.nii.gz")}

    return breaker


def _a_file(ws: Workspace, name: str) -> Path:
    (ws.root / name).write_text("not a folder")
    return ws.root / name


# (id, stack, break it (returns extra overrides or None), phrases that must appear; {image}, {label}, {data},
# {root} name the files of the case)
CASES = [
    (
        "truncated_nifti",
        TEACHER,
        lambda ws: _truncate(ws.image(0)),
        ["{image}: cannot be read (EOFError: Compressed file ended"],
    ),
    (
        "random_bytes_nifti",
        TEACHER,
        lambda ws: _random_bytes(ws.label(1)),
        ["{label1}: cannot be read (ImageFileError: File {label1} is not a gzip file)"],
    ),
    (
        "mismatched_shapes",
        TEACHER,
        lambda ws: _edit(ws.label(0), lambda array, affine: (array[:, :, :8], affine)),
        ["{label}: label shape (32, 32, 8) differs from image shape (32, 32, 16) of {image}"],
    ),
    (
        "mismatched_affines",
        TEACHER,
        lambda ws: _edit(ws.label(0), _shifted),
        ["{label}: affine differs from its image's {image} (label origin "],
    ),
    (
        "out_of_range_labels",
        TEACHER,
        lambda ws: _edit(ws.label(0), lambda array, affine: (np.where(array == 1, 12, array).astype(np.uint8), affine)),
        ["{label}: label values [12] outside the task's labels 0..8 (num_classes 9)"],
    ),
    (
        "nan_voxels",
        TEACHER,
        lambda ws: _edit(ws.image(1), _with_voxel(np.nan)),
        ["{image1}: 1 NaN voxel(s) in the image"],
    ),
    (
        "inf_voxels",
        TEACHER,
        lambda ws: _edit(ws.image(0), _with_voxel(np.inf)),
        ["{image}: 1 infinite voxel(s) in the image"],
    ),
    ("image_2d", TEACHER, _two_d, ["{image}: image is 2D, shape (32, 32); a 3D volume is expected"]),
    ("empty_folder", TEACHER, _empty_folder, ["dataset_dir: no dataset.json in {root}/empty"]),
    ("missing_label_file", TEACHER, lambda ws: ws.label(1).unlink(), ["training[1]: label file not found: {label1}"]),
    (
        "dataset_json_not_json",
        TEACHER,
        lambda ws: _dataset_json(ws, lambda content: json.dumps(content)[:-20]),
        ["{data}/dataset.json: not valid JSON"],
    ),
    (
        "dataset_json_missing_key",
        TEACHER,
        lambda ws: _dataset_json(ws, lambda content: {k: v for k, v in content.items() if k != "training"}),
        ["{data}/dataset.json: has no 'training' list"],
    ),
    (
        "dataset_json_entry_to_missing_file",
        TEACHER,
        lambda ws: _dataset_json(ws, lambda c: {**c, "training": [*c["training"], {"image": "a.nii", "label": "b"}]}),
        ["training[2]: image file not found: {data}/a.nii", "training[2]: label file not found: {data}/b"],
    ),
    (
        "too_few_cases_for_validation",
        TEACHER,
        lambda ws: {"num_val_cases": 2},
        ["num_val_cases: 2 validation case(s) of the 2 cases leave 0 to train on; it must be an integer in [1, 1]"],
    ),
    (
        "unknown_teacher",
        TEACHER,
        lambda ws: {"teacher": "unett"},
        ["teacher: unett, teacher_kwargs {}: By 'unett', did you mean 'unet'?"],
    ),
    (
        "unknown_student",
        STUDENT,
        lambda ws: {"student": "tinyunet"},
        ["student: tinyunet, student_kwargs {}: By 'tinyunet', did you mean 'tiny_unet'?"],
    ),
    (
        "bad_network_kwargs",
        TEACHER,
        lambda ws: {"teacher_kwargs": {"chanels": [4, 8]}},
        [
            "teacher: unet, teacher_kwargs {'chanels': [4, 8]}: UNet.__init__() got an unexpected keyword argument "
            "'chanels'"
        ],
    ),
    (
        "negative_loss_weight",
        DISTILL,
        lambda ws: {"kd_weight": -0.1},
        ["loss: term 'kd': weight must be finite and >= 0, got -0.1."],
    ),
    (
        "negative_seg_loss_weight",
        TEACHER,
        lambda ws: {"seg_loss#lambda_ce": -1.0},
        ["seg_loss: lambda_ce should be no less than 0.0."],
    ),
    (
        "unknown_stage",
        DISTILL,
        lambda ws: {"distill_stages": ["low", "middle"]},
        [
            "distill_stages: the teacher's taps: UNet declares taps ['high', 'low'], not ['middle']",
            "distill_stages: the student's taps: UNet declares taps ['high', 'low'], not ['middle']",
        ],
    ),
    (
        "missing_teacher_checkpoint",
        DISTILL,
        lambda ws: {"teacher_ckpt": str(ws.root / "models" / "unet-teacher-s0.pt")},
        ["teacher_ckpt: teacher checkpoint not found: {root}/models/unet-teacher-s0.pt. Train the teacher first"],
    ),
    (
        "corrupt_teacher_checkpoint",
        DISTILL,
        lambda ws: _random_bytes(ws.root / "t.pt") or {"teacher_ckpt": str(ws.root / "t.pt")},
        ["teacher_ckpt: teacher checkpoint {root}/t.pt is not a readable PyTorch checkpoint"],
    ),
    (
        "teacher_checkpoint_of_another_network",
        DISTILL,
        lambda ws: {"teacher_ckpt": str(ws.ckpt("tiny9.pt"))},
        ["teacher_ckpt: teacher checkpoint {base}/ckpt/tiny9.pt does not fit UNet", "missing: ['model.0.conv.unit1"],
    ),
    (
        "teacher_student_class_count_mismatch",
        DISTILL,
        lambda ws: {"teacher_ckpt": str(ws.ckpt("unet3.pt"))},
        [
            "teacher_ckpt: teacher checkpoint {base}/ckpt/unet3.pt does not fit UNet (it predicts 3 classes, but the "
            "task has 9: num_classes; teacher and student must predict the same classes): shape mismatch: "
        ],
    ),
    (
        "missing_student_checkpoint_to_evaluate",
        EVALUATE,
        lambda ws: None,
        ["ckpt_path: student checkpoint not found: {root}/models/tiny_unet_from_unet-mskd-s0.pt"],
    ),
    ("dicom_folder_with_two_series", INFERENCE, _two_series, ["input: {root}/dicom holds 2 DICOM series"]),
    ("inference_input_not_nifti", INFERENCE, _bad_input_file, ["{root}/ct.nii.gz: cannot be read (ImageFileError:"]),
    ("inference_input_with_nan", INFERENCE, _nan_input, ["{root}/ct.nii.gz: 1 NaN voxel(s) in the image"]),
    (
        "student_checkpoint_of_another_network",
        INFERENCE,
        lambda ws: {"ckpt_path": str(ws.ckpt("unet9.pt"))},
        ["ckpt_path: student checkpoint {base}/ckpt/unet9.pt does not fit UNet"],
    ),
    (
        "max_epochs_not_an_integer",
        TEACHER,
        lambda ws: {"max_epochs": "two"},
        ["max_epochs: must be an integer >= 1, got 'two'"],
    ),
    ("max_epochs_out_of_range", TEACHER, lambda ws: {"max_epochs": 0}, ["max_epochs: must be an integer >= 1, got 0"]),
    ("batch_size_out_of_range", TEACHER, lambda ws: {"batch_size": 0}, ["batch_size: must be an integer >= 1, got 0"]),
    (
        "batch_size_not_an_integer",
        TEACHER,
        lambda ws: {"batch_size": 2.5},
        ["batch_size: must be an integer >= 1, got 2.5"],
    ),
    (
        "slices_per_volume_out_of_range",
        TEACHER,
        lambda ws: {"slices_per_volume": 0},
        ["slices_per_volume: must be an integer >= 1, got 0"],
    ),
    (
        "val_interval_out_of_range",
        TEACHER,
        lambda ws: {"val_interval": 0},
        ["val_interval: must be an integer >= 1, got 0"],
    ),
    (
        "checkpoint_every_out_of_range",
        TEACHER,
        lambda ws: {"checkpoint_every": -1},
        ["checkpoint_every: must be an integer >= 0, got -1"],
    ),
    (
        "num_workers_out_of_range",
        TEACHER,
        lambda ws: {"num_workers": -1},
        ["num_workers: must be an integer >= 0, got -1"],
    ),
    ("seed_out_of_range", TEACHER, lambda ws: {"seed": -1}, ["seed: must be an integer >= 0, got -1"]),
    ("log_every_out_of_range", TEACHER, lambda ws: {"log_every": 0}, ["log_every: must be an integer >= 1, got 0"]),
    (
        "val_slice_batch_out_of_range",
        TEACHER,
        lambda ws: {"val_slice_batch": 0},
        ["val_slice_batch: must be an integer >= 1, got 0"],
    ),
    ("image_size_out_of_range", TEACHER, lambda ws: {"image_size": 4}, ["image_size: must be an integer >= 8, got 4"]),
    (
        "negative_learning_rate",
        TEACHER,
        lambda ws: {"learning_rate": -0.1},
        ["learning_rate: must be a finite number > 0, got -0.1"],
    ),
    (
        "nan_learning_rate",
        TEACHER,
        lambda ws: {"learning_rate": float("nan")},
        ["learning_rate: must be a finite number > 0, got nan"],
    ),
    (
        "learning_rate_not_a_number",
        TEACHER,
        lambda ws: {"learning_rate": "fast"},
        ["learning_rate: must be a finite number > 0, got 'fast'"],
    ),
    ("resume_not_a_flag", TEACHER, lambda ws: {"resume": "maybe"}, ["resume: must be true or false, got 'maybe'"]),
    (
        "augment_not_a_flag",
        TEACHER,
        lambda ws: {"augment": "sometimes"},
        ["augment: must be true or false, got 'sometimes'"],
    ),
    ("mlflow_not_a_flag", TEACHER, lambda ws: {"mlflow": "perhaps"}, ["mlflow: must be true or false, got 'perhaps'"]),
    (
        "image_size_the_teacher_cannot_take",
        TEACHER,
        lambda ws: {"image_size": 30},
        ["image_size: the teacher network unet fails on 30x30 slices; nearest sizes it takes: 24 or 32"],
    ),
    (
        "image_size_the_student_cannot_take",
        STUDENT,
        lambda ws: {"image_size": 30},
        ["image_size: the student network tiny_unet fails on 30x30 slices; nearest sizes it takes: 24 or 32"],
    ),
    (
        "image_size_enet_cannot_take",
        STUDENT,
        lambda ws: {"student": "enet", "image_size": 50},
        ["image_size: the student network enet fails on 50x50 slices; nearest sizes it takes: 48 or 56"],
    ),
    (
        "output_dir_is_a_file",
        TEACHER,
        lambda ws: {"output_dir": str(_a_file(ws, "out.txt"))},
        ["output_dir: {root}/out.txt is a file, not a folder"],
    ),
    (
        "ckpt_dir_is_a_file",
        TEACHER,
        lambda ws: {"ckpt_dir": str(_a_file(ws, "models.txt"))},
        ["ckpt_dir: {root}/models.txt is a file, not a folder"],
    ),
    (
        "uint8_image",
        TEACHER,
        lambda ws: _edit(ws.image(0), _as_uint8),
        ["{image}: intensities span [0, 255], with no air below -500 HU: not a CT in Hounsfield units"],
    ),
    (
        "mr_like_intensities",
        TEACHER,
        lambda ws: _edit(ws.image(1), _mr_like),
        ["{image1}: intensities span [0, ", "not a CT in Hounsfield units"],
    ),
    (
        "every_label_empty",
        TEACHER,
        _every_label_empty,
        ["{data}: every label of the 2 'training' cases is background only (all 0); nothing to learn"],
    ),
    (
        "training_cases_listed_twice",
        TEACHER,
        _each_training_case_twice,
        ["{data}: 'training' cases 0 and 2 are the same image", "(a leak)"],
    ),
    (
        "test_case_also_in_training",
        TEACHER,
        _test_case_in_training,
        ["{data}/dataset.json: 1 'test' case(s) are also 'training' cases", "must never be trained on"],
    ),
    (
        "label_spacing_differs",
        TEACHER,
        lambda ws: _edit(ws.label(0), _scaled),
        ["{label}: affine differs from its image's {image} (label spacing"],
    ),
    (
        "label_direction_differs",
        TEACHER,
        lambda ws: _edit(ws.label(1), _rotated),
        ["{label1}: affine differs from its image's {image1}", "direction cosines differ"],
    ),
    (
        "non_integer_label_values",
        TEACHER,
        lambda ws: _edit(ws.label(0), lambda array, affine: (array.astype(np.float32) + 0.5, affine)),
        ["{label}: non-integer label values [0.5, 1.5"],
    ),
    (
        "negative_label_values",
        TEACHER,
        lambda ws: _edit(ws.label(0), lambda array, affine: (np.where(array == 1, -1, array.astype(np.int16)), affine)),
        ["{label}: label values [-1] outside the task's labels 0..8"],
    ),
    (
        "nan_label",
        TEACHER,
        lambda ws: _edit(ws.label(1), _with_voxel(np.nan)),
        ["{label1}: 1 NaN or infinite voxel(s) in the label"],
    ),
    (
        "image_4d",
        TEACHER,
        lambda ws: _edit(ws.image(0), lambda array, affine: (np.stack([array, array], -1), affine)),
        ["{image}: image holds 2 volumes (channel-first shape (2, 32, 32, 16) once loaded); one 3D volume is expected"],
    ),
    (
        "dataset_dir_missing",
        TEACHER,
        lambda ws: {"dataset_dir": str(ws.root / "nowhere")},
        ["dataset_dir: dataset folder not found: {root}/nowhere"],
    ),
    (
        "dataset_dir_is_a_file",
        TEACHER,
        lambda ws: {"dataset_dir": str(_a_file(ws, "data.txt"))},
        ["dataset_dir: {root}/data.txt is a file, not a dataset folder"],
    ),
    ("unknown_data_format", TEACHER, lambda ws: {"data_format": "nifty"}, ["data_format: unknown data format 'nifty'"]),
    (
        "dataset_json_is_a_list",
        TEACHER,
        lambda ws: _dataset_json(ws, lambda c: c["training"]),
        ["{data}/dataset.json: holds a JSON list, not an object with a 'training' list"],
    ),
    (
        "dataset_json_empty_training_list",
        TEACHER,
        lambda ws: _dataset_json(ws, lambda c: {**c, "training": []}),
        ["{data}/dataset.json: the 'training' list is empty or not a list"],
    ),
    (
        "dataset_json_entry_not_an_object",
        TEACHER,
        lambda ws: _dataset_json(ws, lambda c: {**c, "training": [*c["training"], "case.nii.gz"]}),
        ["{data}/dataset.json: training[2] is a str, not an {'image': ..., 'label': ...} object"],
    ),
    (
        "dataset_json_entry_without_label",
        TEACHER,
        lambda ws: _dataset_json(
            ws, lambda c: {**c, "training": [*c["training"], {"image": c["training"][0]["image"]}]}
        ),
        ["{data}/dataset.json: training[2] has no 'label' file name"],
    ),
    ("btcv_format_on_an_msd_folder", TEACHER, lambda ws: {"data_format": "btcv"}, ["dataset_dir: "]),
    (
        "no_validation_case",
        TEACHER,
        lambda ws: {"num_val_cases": 0},
        ["num_val_cases: 0 validation case(s) of the 2 cases leave 2 to train on; it must be an integer in [1, 1]"],
    ),
    (
        "network_kwargs_not_a_mapping",
        TEACHER,
        lambda ws: {"teacher_kwargs": [4, 8]},
        [
            "teacher: unet, teacher_kwargs [4, 8]: mskd.networks.registry.get_network() argument after ** must be "
            "a mapping"
        ],
    ),
    (
        "distill_stages_empty",
        DISTILL,
        lambda ws: {"distill_stages": []},
        ["loss: term 'ffd': stages must be a non-empty list of non-empty tap names, got []."],
    ),
    (
        "distill_stages_a_string",
        DISTILL,
        lambda ws: {"distill_stages": "low"},
        ["loss: term 'ffd': stages must be a non-empty list of tap names, got 'low'."],
    ),
    (
        "cached_teacher_with_augmentation",
        DISTILL,
        lambda ws: {"teacher_outputs": "cached", "augment": True},
        ["teacher_outputs"],
    ),
    ("unknown_teacher_outputs_mode", DISTILL, lambda ws: {"teacher_outputs": "sometimes"}, ["teacher_outputs"]),
    (
        "teacher_cache_of_zero_bytes",
        DISTILL,
        lambda ws: {"teacher_cache_gib": 0},
        ["teacher_cache_gib: must be a number > 0 (GiB), got 0"],
    ),
    (
        "nan_loss_weight",
        DISTILL,
        lambda ws: {"cwd_weight": float("nan")},
        ["loss: term 'cwd': weight must be finite and >= 0, got nan."],
    ),
    (
        "loss_weight_not_a_number",
        DISTILL,
        lambda ws: {"kd_weight": "high"},
        ["loss: term 'kd': weight must be a real number >= 0, got 'high'."],
    ),
    (
        "evaluated_checkpoint_of_another_network",
        EVALUATE,
        lambda ws: {"ckpt_path": str(ws.ckpt("unet9.pt"))},
        ["ckpt_path: student checkpoint {base}/ckpt/unet9.pt does not fit UNet"],
    ),
    (
        "corrupt_checkpoint_to_evaluate",
        EVALUATE,
        lambda ws: _random_bytes(ws.root / "s.pt") or {"ckpt_path": str(ws.root / "s.pt")},
        ["ckpt_path: student checkpoint {root}/s.pt is not a readable PyTorch checkpoint"],
    ),
    (
        "inference_input_missing",
        INFERENCE,
        lambda ws: {"input": str(ws.root / "nowhere.nii.gz")},
        ["input: inference input not found: {root}/nowhere.nii.gz"],
    ),
    (
        "inference_folder_without_images",
        INFERENCE,
        lambda ws: (
            (ws.root / "notes").mkdir()
            or (ws.root / "notes" / "a.txt").write_text("x")
            and {"input": str(ws.root / "notes")}
        ),
        ["input: no .nii/.nii.gz file and no DICOM series in {root}/notes"],
    ),
    (
        "inference_input_2d",
        INFERENCE,
        _input_edited(lambda array, affine: (array[:, :, 8], affine)),
        ["{root}/ct.nii.gz: image is 2D, shape (32, 32); a 3D volume is expected"],
    ),
    (
        "inference_input_mr_like",
        INFERENCE,
        _input_edited(_mr_like),
        ["{root}/ct.nii.gz: intensities span [0, ", "not a CT in Hounsfield units"],
    ),
    (
        "inference_dicom_of_mr",
        INFERENCE,
        _mr_dicom,
        ["{root}/dicom: DICOM Modality is 'MR'; the models segment CT only"],
    ),
    (
        "inference_checkpoint_missing",
        INFERENCE,
        lambda ws: {"ckpt_path": str(ws.root / "none.pt")},
        ["ckpt_path: student checkpoint not found: {root}/none.pt"],
    ),
    (
        "two_broken_files",
        TEACHER,
        _two_broken_files,
        [
            "mskd: 2 problem(s) found before starting:",
            "{image}: cannot be read (EOFError",
            "{label1}: label values [12] outside",
        ],
    ),
]


def _overrides(ws: Workspace, stack: tuple[str, ...]) -> dict:
    """What a good run of ``stack`` would be given; the outputs go to ``root/output`` and ``root/models``."""
    if stack == INFERENCE:
        return {"input": str(ws.image(2)), "output_dir": str(ws.root / "output"), "ckpt_path": str(ws.ckpt("tiny9.pt"))}
    overrides = {
        "dataset_dir": str(ws.data),
        "output_dir": str(ws.root / "output"),
        "ckpt_dir": str(ws.root / "models"),
    }
    if "distill.json" in stack and "evaluate.json" not in stack:
        overrides["teacher_ckpt"] = str(ws.ckpt("unet9.pt"))
    return {**overrides, **TINY}


def _prepare(case_id: str, tmp_path: Path, base: Path) -> tuple[Workspace, tuple[str, ...], dict, list[str]]:
    _, stack, breaker, phrases = next(c for c in CASES if c[0] == case_id)
    ws = Workspace(tmp_path, base)
    shutil.copytree(base / "data", ws.data)
    overrides = {**_overrides(ws, stack), **(breaker(ws) or {})}
    names = {"image": ws.image(0), "label": ws.label(0), "image1": ws.image(1), "label1": ws.label(1)}
    names |= {"data": ws.data, "root": ws.root, "base": base}
    for name, value in names.items():
        phrases = [p.replace("{" + name + "}", str(value)) for p in phrases]
    return ws, stack, overrides, phrases


def _assert_nothing_written(ws: Workspace) -> None:
    for folder in (ws.root / "output", ws.root / "models"):
        assert not folder.exists() or not any(folder.iterdir()), sorted(folder.iterdir())
    store = ws.root / "output" / "mlruns.db"
    if store.exists():  # never, as the output folder stays empty; kept as the statement of the requirement
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=f"sqlite:///{store}")
        experiments = [e.experiment_id for e in client.search_experiments()]
        assert not client.search_runs(experiments, filter_string="attributes.status = 'RUNNING'")


@pytest.mark.parametrize("case_id", [c[0] for c in CASES])
def test_bad_input_is_refused_before_anything_runs(case_id, tmp_path, base, capsys, monkeypatch):
    from monai.bundle import run

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MSKD_DEBUG", raising=False)
    monkeypatch.setattr("mskd.validation._bundle_command_line", lambda: True)  # as `python -m monai.bundle run`
    ws, stack, overrides, phrases = _prepare(case_id, tmp_path, base)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run(config_file=[str(CONFIGS / f) for f in stack], bundle_root=str(BUNDLE), **overrides)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    report = err[err.index("mskd: ") :]
    for phrase in phrases:
        assert phrase in report, report
    lines = report.splitlines()
    count = int(lines[0].split()[1])
    assert count == len(lines) - 1 and all(line.startswith("  - ") for line in lines[1:])  # one line per problem
    _assert_nothing_written(ws)


def test_cases_cover_at_least_75_kinds():
    assert len({c[0] for c in CASES}) == len(CASES) >= 75


def test_a_user_typed_command_exits_non_zero_without_traceback(tmp_path, base, monkeypatch):
    monkeypatch.delenv("MSKD_DEBUG", raising=False)
    ws, stack, overrides, phrases = _prepare("two_broken_files", tmp_path, base)
    args = [a for key, value in overrides.items() for a in (f"--{key}", str(value))]
    proc = run_bundle(BUNDLE, *stack, args=args, check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    for phrase in phrases:
        assert phrase in proc.stderr
    _assert_nothing_written(ws)
