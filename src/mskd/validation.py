"""Up-front checks: refuse bad data, configs and checkpoints before any compute is spent (or any output written).

A bundle's first ``initialize`` step calls :func:`check_training` (``train_teacher.json`` and the stacks built on
it) or :func:`check_inference` (``inference.json``) with the run's config values (the ``checks`` entry of the
config). Every check runs and every problem is collected, each as one line that names the file or config key and
says what is wrong; then, if there is any, :func:`report_problems` prints::

    mskd: 2 problem(s) found before starting:
      - /data/labelsTr/case_0001.nii.gz: label values [12] outside the task's labels 0..8 (num_classes 9)
      - kd_weight: loss weight must be a finite number >= 0, got -0.1

to stderr and exits with status 2, without a traceback (``SystemExit`` is not an ``Exception``, so MONAI's config
evaluation lets it through unwrapped). With ``MSKD_DEBUG=1`` it raises :class:`ValidationError` instead, with the
full traceback.

What is checked:

- the dataset: the folder exists and is not empty; its datalist reads (``dataset.json`` is JSON, has the split's
  list, its entries name existing files); every image has its label; every file reads (each volume is read once,
  NIfTI with nibabel, the TransUNet ``.npz``/``.h5`` files with their readers); images are 3D and hold no NaN or
  infinite voxel; each label has its image's shape and affine (within :data:`SPACING_TOLERANCE_MM` and
  :data:`DIRECTION_TOLERANCE`) and only the task's label values; enough cases for ``num_val_cases``;
- the config: teacher and student names are registered networks that build with their kwargs; loss weights are
  finite and >= 0; every ``distill_stages`` tap is declared by both networks; ``teacher_outputs`` is a mode that
  ``augment`` allows (no cached teacher outputs with random augmentation) and ``teacher_cache_gib`` a size;
- checkpoints (the teacher's when distilling, the evaluated model's, the student's for inference): the file exists,
  reads, and fits the network (the first mismatching keys are named; a checkpoint of another class count says so);
- inference inputs: the file or folder exists, NIfTI files read and are 3D without NaN, a DICOM folder holds one
  series.
"""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np

from mskd.extras import require

__all__ = [
    "AIR_HU",
    "DEBUG_ENV",
    "SETTINGS",
    "DIRECTION_TOLERANCE",
    "SPACING_TOLERANCE_MM",
    "ValidationError",
    "check_inference",
    "check_training",
    "dataset_problems",
    "debug_enabled",
    "format_problems",
    "inference_problems",
    "report_problems",
    "training_problems",
    "validation_error",
]

DEBUG_ENV = "MSKD_DEBUG"  # set to 1: tracebacks, and ValidationError raised on MONAI's command line too
SPACING_TOLERANCE_MM = 1e-3  # image and label spacing and origin may differ by this much (mm)
DIRECTION_TOLERANCE = 1e-4  # ... and their direction cosines by this much
AIR_HU = -500.0  # a CT in Hounsfield units holds voxels at or below this (air is about -1000 HU)
EXIT_STATUS = 2

# run setting -> (kind, lowest value): "int" an integer, "number" a finite number above the lowest, "flag" true/false
SETTINGS: dict[str, tuple[str, float]] = {
    "max_epochs": ("int", 1),
    "val_interval": ("int", 1),
    "batch_size": ("int", 1),
    "slices_per_volume": ("int", 1),
    "val_slice_batch": ("int", 1),
    "log_every": ("int", 1),
    "checkpoint_every": ("int", 0),
    "num_workers": ("int", 0),
    "seed": ("int", 0),
    "image_size": ("int", 8),
    "learning_rate": ("number", 0.0),
    "resume": ("flag", 0),
    "augment": ("flag", 0),
    "mlflow": ("flag", 0),
}

_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_MAX_LISTED = 8  # values or keys named in one line


class ValidationError(ValueError):
    """The problems found before a run started (see :func:`report_problems`).

    Attributes:
        problems: one readable line per problem.
    """

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = [_one_line(p) for p in problems]
        super().__init__(format_problems(self.problems))


def format_problems(problems: Sequence[str]) -> str:
    """The report: a header line with the count, then one indented line per problem."""
    lines = [f"  - {_one_line(p)}" for p in problems]
    return "\n".join([f"mskd: {len(problems)} problem(s) found before starting:", *lines])


def debug_enabled() -> bool:
    """Whether ``MSKD_DEBUG`` asks for tracebacks (set, and not ``0``, ``false`` or ``no``)."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _bundle_command_line() -> bool:
    """Whether this process is ``python -m monai.bundle`` (also under ``torchrun``): a command line of MONAI's,
    where the report must come without a traceback and the process must exit."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec is not None and spec.name in ("monai.bundle", "monai.bundle.__main__")


def report_problems(problems: Sequence[str], debug: bool | None = None) -> None:
    """Do nothing when ``problems`` is empty; otherwise raise :class:`ValidationError`, or, on MONAI's command line
    (``python -m monai.bundle run``), print them and exit with status 2, without a traceback.

    A library raises: a host that builds a workflow in its own process (``monai.bundle.create_workflow``, MONAI
    Label, ``mskd``'s commands) gets the exception, and ``mskd`` prints its problems and exits 2 itself. Under
    ``torchrun`` every rank runs the checks and exits; only each node's local rank 0 prints.

    Args:
        problems: one line per problem.
        debug: raise :class:`ValidationError` (with its traceback) on MONAI's command line too; default whether
            ``MSKD_DEBUG`` is set to something other than ``0``.

    Raises:
        ValidationError: when there is a problem (in-process, or with ``debug``).
        SystemExit: with status 2, when there is a problem on MONAI's command line and not ``debug``.
    """
    if not problems:
        return
    if debug is None:
        debug = debug_enabled()
    if debug or not _bundle_command_line():
        raise ValidationError(problems)
    if os.environ.get("LOCAL_RANK", "0") == "0":
        print(format_problems(problems), file=sys.stderr, flush=True)
    raise SystemExit(EXIT_STATUS)


def validation_error(error: BaseException) -> ValidationError | None:
    """The :class:`ValidationError` in ``error``'s chain (MONAI wraps what a config expression raises), if any."""
    seen: list[BaseException] = []
    while error is not None and not any(error is e for e in seen):
        if isinstance(error, ValidationError):
            return error
        seen.append(error)
        error = error.__cause__ or error.__context__
    return None


def _one_line(text: object) -> str:
    """The first line of ``text`` (exception messages from torch or h5py can run over several)."""
    lines = str(text).strip().splitlines() or [""]
    return lines[0] + (" ..." if len(lines) > 1 else "")


def _listed(values: Sequence[Any]) -> str:
    values = list(values)
    return str(values[:_MAX_LISTED])[:-1] + (", ...]" if len(values) > _MAX_LISTED else "]")


# --- volumes ------------------------------------------------------------------------------------------------------


def _read_volume(path: str | Sequence[str], key: str = "image") -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """``(array, affine, "")``, or ``(None, None, problem)`` when the file does not read.

    NIfTI is read with nibabel (the header first, so a file that is not NIfTI is told apart from one whose data is
    truncated); TransUNet's ``.npz`` slice lists and ``.h5`` volumes with their readers (array ``key``); anything
    else with MONAI's ``LoadImage``.
    """
    if not isinstance(path, str):  # a case of TransUNet .npz slices
        return _read_with_reader(list(path), key)
    if path.endswith(_NIFTI_SUFFIXES):
        import nibabel as nib

        try:
            image = nib.load(path)
        except Exception as e:  # nibabel raises ImageFileError, OSError, ValueError, ... for foreign files
            return None, None, f"{path}: not a NIfTI file ({type(e).__name__}: {_one_line(e)})"
        try:
            array = np.asanyarray(image.dataobj)
        except Exception as e:  # a truncated .nii.gz raises EOFError, zlib.error, OSError, ...
            return None, None, f"{path}: voxel data cannot be read, truncated or corrupt ({type(e).__name__}: {e})"
        return array, np.asarray(image.affine, dtype=float), ""
    if path.endswith((".npz", ".h5", ".hdf5")):
        return _read_with_reader([path], key)
    from monai.transforms import LoadImage

    try:
        volume = LoadImage(image_only=True)(path)
    except Exception as e:  # any reader error: the file cannot be used
        return None, None, f"{path}: cannot be read as an image ({type(e).__name__}: {_one_line(e)})"
    return np.asarray(volume), np.asarray(volume.affine, dtype=float), ""


def _read_with_reader(paths: list[str], key: str) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    from mskd.data.readers import H5VolumeReader, NpzSliceStackReader

    reader = H5VolumeReader(key) if paths[0].endswith((".h5", ".hdf5")) else NpzSliceStackReader(key)
    try:
        array, meta = reader.get_data(reader.read(paths if len(paths) > 1 else paths[0]))
    except (OSError, ValueError) as e:  # the readers name the file and what is wrong with it
        return None, None, _one_line(e)
    return array, np.asarray(meta["affine"], dtype=float), ""


def _spatial(array: np.ndarray) -> np.ndarray:
    """``array`` without trailing singleton axes beyond the third (a 4D NIfTI of one volume is 3D)."""
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return array


def _image_problems(path: str, array: np.ndarray, what: str = "image", finite: bool = True) -> list[str]:
    """A volume must be 3D and (when ``finite``) hold no NaN or infinite voxel."""
    problems = []
    array = _spatial(array)
    if array.ndim != 3:
        problems.append(f"{path}: {what} is {array.ndim}D, shape {tuple(array.shape)}; a 3D volume is expected")
    if finite and array.dtype.kind in "fc":
        n_nan = int(np.isnan(array).sum())
        n_inf = int(np.isinf(array).sum())
        if n_nan:
            problems.append(f"{path}: {n_nan} NaN voxel(s) in the {what}")
        if n_inf:
            problems.append(f"{path}: {n_inf} infinite voxel(s) in the {what}")
    return problems


def _label_value_problems(path: str, label: np.ndarray, highest: int, labels: str) -> list[str]:
    if label.dtype.kind in "fc":
        if not np.isfinite(label).all():
            return [f"{path}: {int((~np.isfinite(label)).sum())} NaN or infinite voxel(s) in the label"]
        fractional = label != np.round(label)
        if fractional.any():
            values = np.unique(label[fractional]).tolist()
            return [f"{path}: non-integer label values {_listed(values)}; a label map holds class ids ({labels})"]
    if label.size and (label.min() < 0 or label.max() > highest):
        values = np.unique(label[(label < 0) | (label > highest)])
        return [f"{path}: label values {_listed([int(v) for v in values])} outside {labels}"]
    return []


def _affine_difference(image: np.ndarray, label: np.ndarray) -> str:
    """How two 4x4 affines differ beyond the tolerances (spacing, origin, direction); ``""`` when they agree."""
    image, label = np.asarray(image, dtype=float), np.asarray(label, dtype=float)
    if image.shape != (4, 4) or label.shape != (4, 4):
        return ""
    spacing_i, spacing_l = np.linalg.norm(image[:3, :3], axis=0), np.linalg.norm(label[:3, :3], axis=0)
    parts = []
    if np.abs(spacing_i - spacing_l).max() > SPACING_TOLERANCE_MM:
        parts.append(f"label spacing {np.round(spacing_l, 4).tolist()}, image {np.round(spacing_i, 4).tolist()} mm")
    origin_i, origin_l = np.round(image[:3, 3], 3).tolist(), np.round(label[:3, 3], 3).tolist()
    if np.abs(image[:3, 3] - label[:3, 3]).max() > SPACING_TOLERANCE_MM:
        parts.append(f"label origin {origin_l}, image {origin_i} mm")
    if spacing_i.min() > 0 and spacing_l.min() > 0:
        direction = np.abs(image[:3, :3] / spacing_i - label[:3, :3] / spacing_l).max()
        if direction > DIRECTION_TOLERANCE:
            parts.append(f"direction cosines differ by up to {direction:.3g}")
    return "; ".join(parts)


def _grid_problems(path: str, affine: np.ndarray | None) -> list[str]:
    """A volume's affine must give a physical grid: finite, with every voxel spacing > 0 (not singular)."""
    if affine is None or affine.shape != (4, 4):
        return []
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if not np.isfinite(affine).all() or spacing.min() <= 1e-6 or abs(np.linalg.det(affine[:3, :3])) <= 1e-9:
        return [
            f"{path}: the header's affine is singular or not finite (voxel spacing {np.round(spacing, 4).tolist()} "
            "mm), so the volume has no physical grid; fix the header (qform/sform or DICOM geometry)"
        ]
    return []


def _intensity_problems(path: str, array: np.ndarray, window: Sequence[float] | None) -> list[str]:
    """The intensities must be what the protocol's window expects.

    A window below 0 is in Hounsfield units: every body CT holds air (about -1000 HU) around or inside the body, so a
    volume with no voxel at or below :data:`AIR_HU` is not a CT in HU (an MR, a uint8 export, a rescaled CT) and
    would be segmented silently wrong. The window ``[0, 1]`` (TransUNet's preprocessed files) needs values in it.
    """
    if window is None or not array.size or array.dtype.kind not in "uif":
        return []
    low, high = float(np.min(array)), float(np.max(array))
    if window[0] < 0 and low > AIR_HU:
        return [
            f"{path}: intensities span [{low:g}, {high:g}] ({array.dtype}), with no air below {AIR_HU:g} HU: not a "
            "CT in Hounsfield units (an MR or a rescaled export?); the models are trained on HU"
        ]
    if list(window) == [0.0, 1.0] and (low < -1e-3 or high > 1 + 1e-3):
        return [
            f"{path}: intensities span [{low:g}, {high:g}], outside [0, 1]: this format holds CT already windowed "
            "and scaled to [0, 1] (TransUNet's preprocessing); use data_format msd or btcv for CT in HU"
        ]
    return []


def _protocol_window(data_format: str | None, task: str | None) -> list[float] | None:
    """The intensity window of ``data_format`` and ``task``; ``None`` (no intensity check) when either is unknown
    (the unknown one is reported by its own check)."""
    from mskd.data import intensity_window

    if data_format is None or task is None:
        return None
    try:
        return intensity_window(data_format, task)
    except ValueError:
        return None


def _case_problems(
    case: Mapping[str, Any], highest: int, labels: str, window: Sequence[float] | None
) -> tuple[list[str], set[int]]:
    """Read one case's image and label once each and check them (readable, 3D, finite, physical grid, CT
    intensities, same grid, label set); returns the problems and the label values present."""
    image_path, label_path = case["image"], case.get("label")
    image, image_affine, problem = _read_volume(image_path, "image")
    problems = [problem] if problem else []
    if image is not None:
        problems += _image_problems(_name(image_path), image)
        problems += _grid_problems(_name(image_path), image_affine)
        problems += _intensity_problems(_name(image_path), image, window)
    if label_path is None:
        return problems, set()
    label, label_affine, problem = _read_volume(label_path, "label")
    if problem:
        return [*problems, problem], set()
    label_name = _name(label_path)
    problems += _image_problems(label_name, label, "label", finite=False)  # non-finite labels: next line
    value_problems = _label_value_problems(label_name, label, highest, labels)
    problems += value_problems
    present = set() if value_problems else {int(v) for v in np.flatnonzero(np.bincount(label.astype(np.int64).ravel()))}
    if image is not None:
        image_shape, label_shape = tuple(_spatial(image).shape), tuple(_spatial(label).shape)
        if image_shape != label_shape:
            problems.append(
                f"{label_name}: label shape {label_shape} differs from image shape {image_shape} of {_name(image_path)}"
            )
        elif difference := _affine_difference(image_affine, label_affine):
            problems.append(f"{label_name}: affine differs from its image's {_name(image_path)} ({difference})")
    return problems, present


def _name(path: str | Sequence[str]) -> str:
    """A file for a message (a case of TransUNet slices is named by its first slice and the count)."""
    if isinstance(path, str):
        return path
    return f"{path[0]} (+{len(path) - 1} more slices)" if len(path) > 1 else path[0]


def _map_cases(function, cases: Sequence[Any], *args: Any) -> list[Any]:
    """``[function(case, *args) for case in cases]`` (threads: reading and decompressing release the GIL)."""
    if len(cases) <= 1:
        return [function(case, *args) for case in cases]
    with ThreadPoolExecutor(max_workers=min(8, len(cases), os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda case: function(case, *args), cases))


# --- datasets -----------------------------------------------------------------------------------------------------


def _msd_cases(root: Path, split: str) -> tuple[list[str], list[dict]]:
    """Cases of an MSD-style ``dataset.json`` (every problem of the file collected) whose files exist."""
    path = root / "dataset.json"
    if not path.is_file():
        return [f"{path}: not found (an MSD-style dataset.json lists the cases; `mskd phantom` writes one)"], []
    try:
        content = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return [f"{path}: not valid JSON ({_one_line(e)})"], []
    if not isinstance(content, dict):
        return [f"{path}: holds a JSON {type(content).__name__}, not an object with a '{split}' list"], []
    if split not in content:
        return [f"{path}: has no '{split}' list; it has {sorted(content)}"], []
    entries = content[split]
    if not isinstance(entries, list) or not entries:
        return [f"{path}: the '{split}' list is empty or not a list"], []
    problems, cases = [], []
    for i, entry in enumerate(entries):
        where = f"{path}: {split}[{i}]"
        if not isinstance(entry, dict):
            problems.append(f"{where} is a {type(entry).__name__}, not an {{'image': ..., 'label': ...}} object")
            continue
        case, ok = {}, True
        for key in ("image", "label"):
            if not isinstance(entry.get(key), str) or not entry[key]:
                problems.append(f"{where} has no '{key}' file name")
                ok = False
                continue
            file = Path(entry[key]) if os.path.isabs(entry[key]) else root / entry[key]
            if not file.is_file():
                problems.append(f"{where}: {key} file not found: {file}")
                ok = False
            case[key] = str(file)
        if ok:
            cases.append(case)
    return problems, cases


def _listed_cases(root: Path, data_format: str, split: str) -> tuple[list[str], list[dict]]:
    """Cases of the other formats, through their datalist functions (each names what is wrong with the folder)."""
    from mskd.data.datalist import get_datalist

    try:
        cases = get_datalist(data_format, root, split)
    except (OSError, ValueError) as e:
        return [f"dataset_dir: {_one_line(e)}"], []
    problems, readable = [], []
    for case in cases:
        missing = []
        for key in ("image", "label"):
            files = case.get(key)
            missing += [(key, f) for f in ([files] if isinstance(files, str) else files or []) if not Path(f).is_file()]
        problems += [f"{key} file not found: {f}" for key, f in missing]
        if not missing:
            readable.append(case)
    return problems, readable


def dataset_problems(
    dataset_dir: str | os.PathLike,
    data_format: str = "msd",
    split: str = "training",
    num_classes: int = 9,
    num_val_cases: int | None = None,
    window: Sequence[float] | None = None,
) -> list[str]:
    """Everything wrong with the ``split`` cases of a dataset (every case is read once).

    Args:
        dataset_dir: the dataset folder.
        data_format: one of :data:`mskd.data.DATA_FORMATS` with labels (``msd``, ``phantom``, ``synapse_npz``,
            ``btcv``, ``kits19``).
        split: the cases to check (``"training"`` or ``"test"``).
        num_classes: the task's class count (background included); labels must lie in ``0..num_classes - 1``
            (raw BTCV in its own 0..13, remapped when loaded).
        num_val_cases: validation cases split off the training cases; when given there must be at least one more
            case.
        window: the protocol's intensity window (``hu_window``); the images' intensities are checked against it
            (HU with air for a window below 0, values in ``[0, 1]`` for ``[0, 1]``); ``None`` skips that check.

    Returns:
        one line per problem (empty when the dataset is usable).
    """
    from monai.utils import look_up_option

    from mskd.data.datalist import DATA_FORMATS
    from mskd.data.labels import BTCV_LABELS

    try:
        data_format = look_up_option(data_format, DATA_FORMATS)
    except ValueError:
        return [f"data_format: unknown data format {data_format!r}; choose one of {list(DATA_FORMATS)}"]
    root = Path(dataset_dir)
    if not root.exists():
        return [f"dataset_dir: dataset folder not found: {root} (set --dataset_dir; `mskd phantom` writes one)"]
    if not root.is_dir():
        return [f"dataset_dir: {root} is a file, not a dataset folder"]
    if not any(root.iterdir()):
        return [f"dataset_dir: dataset folder {root} is empty"]
    if data_format in ("msd", "phantom"):
        problems, cases = _msd_cases(root, split)
    else:
        problems, cases = _listed_cases(root, data_format, split)
    if num_val_cases is not None and not problems and not 1 <= num_val_cases < len(cases):
        problems.append(
            f"num_val_cases: {num_val_cases} validation case(s) of the {len(cases)} '{split}' cases of {root} leave "
            f"{max(len(cases) - num_val_cases, 0)} to train on; it must be in [1, {len(cases) - 1}]"
        )
    if not problems:
        problems += _repeated_case_problems(root, data_format, split, cases)
    if data_format == "btcv":
        highest, labels = max(BTCV_LABELS), f"BTCV's labels 0..{max(BTCV_LABELS)}"
    else:
        highest, labels = num_classes - 1, f"the task's labels 0..{num_classes - 1} (num_classes {num_classes})"
    reports = _map_cases(_case_problems, cases, highest, labels, window)
    for found, _ in reports:
        problems += found
    if cases and len(reports) == len(cases) and not problems:
        problems += _label_coverage_problems(root, split, [present for _, present in reports], highest)
    # the TransUNet formats hold image and label in the same files: a broken file is reported once
    return list(dict.fromkeys(problems))


def _files_of(case: Mapping[str, Any]) -> tuple[str, ...]:
    image = case["image"]
    return (image,) if isinstance(image, str) else tuple(image)


def _repeated_case_problems(root: Path, data_format: str, split: str, cases: Sequence[Mapping[str, Any]]) -> list[str]:
    """A case listed twice, or in both the training and the test lists, leaks: with ``num_val_cases`` the copy can
    land in the validation split (best-model choice on training data), and a test case trained on scores too high."""
    problems, first = [], {}
    for i, case in enumerate(cases):
        for file in _files_of(case):
            resolved = os.path.realpath(file)
            if resolved in first and first[resolved] != i:
                problems.append(
                    f"{root}: '{split}' cases {first[resolved]} and {i} are the same image {file}; a case listed "
                    "twice can be trained on and validated on (a leak); list each case once"
                )
            first.setdefault(resolved, i)
    if split == "training" and data_format in ("msd", "phantom"):
        from mskd.data.datalist import msd_datalist

        try:
            test = msd_datalist(root, "test")
        except (OSError, ValueError, KeyError):  # no test list: nothing to compare
            test = []
        shared = sorted({os.path.realpath(f) for case in test for f in _files_of(case)} & set(first))
        if shared:
            problems.append(
                f"{root}/dataset.json: {len(shared)} 'test' case(s) are also 'training' cases ({_listed(shared)}); "
                "test cases must never be trained on"
            )
    return problems


def _label_coverage_problems(root: Path, split: str, present: Sequence[set[int]], highest: int) -> list[str]:
    """Labels that hold only background cannot train (every Dice is 0 or undefined, and a 0-Dice model would be saved
    as the best); a class present in no label of the split is warned about (its Dice is never measured)."""
    if split != "training":
        return []
    seen = set().union(*present)
    if not seen - {0}:
        return [
            f"{root}: every label of the {len(present)} '{split}' cases is background only (all 0); nothing to learn "
            "(are the label files the images' segmentations?)"
        ]
    missing = sorted(set(range(1, highest + 1)) - seen)
    if missing:
        warnings.warn(
            f"{root}: class(es) {missing} appear in no '{split}' label; the model cannot learn them", stacklevel=3
        )
    return []


# --- networks, losses, checkpoints --------------------------------------------------------------------------------


def _build(name: str, kwargs: Mapping[str, Any] | None, num_classes: int):
    """The registered network ``name``, on the meta device when it builds there (no memory, no init time)."""
    import torch

    from mskd.networks import get_network

    kwargs = dict(kwargs or {})
    try:
        with torch.device("meta"):
            return get_network(name, 1, num_classes, **kwargs)
    except Exception:  # some networks call .item() while building; build them for real
        return get_network(name, 1, num_classes, **kwargs)


def _network_problems(key: str, name: Any, kwargs: Any, num_classes: int, build: bool) -> tuple[list[str], Any | None]:
    """``([problem], None)`` for an unknown or unbuildable network, else ``([], network or None)``."""
    from mskd.networks import list_networks

    known = list(list_networks())
    if not isinstance(name, str) or name not in known:
        return [f"{key}: unknown network {name!r}; choose one of {known}"], None
    if kwargs is not None and not isinstance(kwargs, Mapping):
        return [f"{key}_kwargs: must be a mapping of constructor arguments, got {kwargs!r}"], None
    if not build:
        return [], None
    try:
        return [], _build(name, kwargs, num_classes)
    except Exception as e:  # a bad constructor argument raises anything
        return [f"{key}_kwargs: {name} does not build with {dict(kwargs or {})}: {type(e).__name__}: {e}"], None


def _stage_problems(stages: Any, networks: Mapping[str, tuple[str, Any]]) -> list[str]:
    if isinstance(stages, str) or not isinstance(stages, Sequence) or not stages:
        return [f"distill_stages: must be a non-empty list of tap names, got {stages!r}"]
    if not all(isinstance(s, str) and s for s in stages):
        return [f"distill_stages: tap names must be non-empty strings, got {list(stages)!r}"]
    problems = []
    for key, (name, network) in networks.items():
        points = getattr(network, "tap_points", None)
        if network is None or not points:  # no declared taps: they are named in the config (teacher_taps, ...)
            continue
        missing = [s for s in stages if s not in points]
        if missing:
            problems.append(
                f"distill_stages: the {key} network {name} has no tap {missing}; it declares {sorted(points)}"
            )
    return problems


def _weight_problems(weights: Mapping[str, Any] | None) -> list[str]:
    problems = []
    for key, value in (weights or {}).items():
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value < 0:
            problems.append(f"{key}: loss weight must be a finite number >= 0, got {value!r}")
    return problems


def _other_class_count(network, state: Mapping[str, Any], num_classes: int) -> int | None:
    """The class count a checkpoint was trained for, when it differs from ``num_classes`` only in that."""
    own = network.state_dict()
    if set(own) != set(state):
        return None
    counts = set()
    for key, tensor in own.items():
        mine, theirs = tuple(tensor.shape), tuple(getattr(state[key], "shape", ()))
        if mine == theirs:
            continue
        if len(mine) != len(theirs):
            return None
        diff = [(a, b) for a, b in zip(mine, theirs, strict=True) if a != b]
        if any(a != num_classes for a, _ in diff):
            return None
        counts.update(b for _, b in diff)
    return counts.pop() if len(counts) == 1 else None


def _checkpoint_problems(
    key: str,
    path: Any,
    role: str,
    name: str,
    kwargs: Any,
    network: Any,
    num_classes: int,
    expected: Mapping[str, Any] | None = None,
    flags: Mapping[str, str] | None = None,
) -> list[str]:
    """The checkpoint at ``path`` exists, reads and fits ``network`` (the registered ``name``); a self-describing one
    was trained as ``name`` with ``kwargs``, for ``num_classes``, and with the ``expected`` settings (metadata key ->
    the run's value: ``image_size``, ``run_name``). ``flags``: see :func:`mskd.networks.metadata_mismatch`."""
    from mskd.io import UnsafeCheckpointError
    from mskd.networks import metadata_mismatch, read_checkpoint, state_dict_mismatch

    try:
        state, metadata = read_checkpoint(path, role, mmap=True)
    except (FileNotFoundError, UnsafeCheckpointError) as e:  # their messages name the file and the fix
        return [f"{key}: {_one_line(e)}"]
    except (OSError, ValueError) as e:
        cause = e.__cause__
        if cause is None:  # read, but holds no state dict
            return [f"{key}: {_one_line(e)}"]
        first = _one_line(cause).split(". ")[0].rstrip(".")[:160]  # torch's own messages run over paragraphs
        return [
            f"{key}: {role} checkpoint {path} is not a readable PyTorch checkpoint ({type(cause).__name__}: {first})"
        ]
    run = {"network": name, "network_kwargs": dict(kwargs or {}), "num_classes": num_classes, **(expected or {})}
    mismatch = metadata_mismatch(path, role, metadata, run, flags)
    if mismatch:  # the weights would not fit either: the metadata says why
        return mismatch
    details = state_dict_mismatch(network, state)
    if not details:
        return []
    classes = _other_class_count(network, state, num_classes)
    if classes is not None and not state_dict_mismatch(_build(name, kwargs, classes), state):
        hint = "teacher and student must predict the same classes" if role == "teacher" else "another task's model?"
        return [
            f"{key}: {role} checkpoint {path} predicts {classes} classes, but the task has {num_classes} "
            f"(num_classes); {hint}"
        ]
    return [f"{key}: {role} checkpoint {path} does not fit {name} (written for another network?): {details}"]


def _setting_problems(settings: Mapping[str, Any]) -> list[str]:
    """Each run setting has the type and range :data:`SETTINGS` gives it (a command line passes ``two`` as easily
    as ``2``; the engine would fail on it only at its first epoch, after the run was opened)."""
    from mskd.flags import as_flag

    problems = []
    for key, value in settings.items():
        kind, lowest = SETTINGS[key]
        if kind == "flag":
            try:
                as_flag(value, key)
            except ValueError:
                problems.append(f"{key}: must be true or false, got {value!r}")
        elif kind == "int" and (isinstance(value, bool) or not isinstance(value, int) or value < lowest):
            problems.append(f"{key}: must be an integer >= {int(lowest)}, got {value!r}")
        elif kind == "number" and (
            isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value <= lowest
        ):
            problems.append(f"{key}: must be a finite number > {lowest:g}, got {value!r}")
    return problems


def _output_problems(folders: Mapping[str, Any]) -> list[str]:
    """Each output folder is a folder (or can be created) and is writable, checked before anything is written."""
    problems = []
    for key, folder in folders.items():
        if folder is None:
            continue
        path = Path(folder)
        if path.exists() and not path.is_dir():
            problems.append(f"{key}: {path} is a file, not a folder; give a folder (it is created if missing)")
            continue
        existing = next(p for p in (path, *path.parents) if p.exists())
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            what = "is not writable" if existing == path else f"cannot be created: {existing} is not writable"
            problems.append(f"{key}: {path} {what}; choose another folder or fix its permissions")
    return problems


def _size_problems(key: str, name: str, network: Any, image_size: int) -> list[str]:
    """``network`` takes ``image_size`` x ``image_size`` slices and returns logits of that size (a forward on the
    meta device when the network was built there: no memory, no compute); otherwise the nearest sizes that work."""
    import torch

    def output_size(size: int) -> tuple[int, ...] | None:
        device = next((p.device for p in network.parameters()), torch.device("cpu"))
        with torch.no_grad():
            try:
                return tuple(network.eval()(torch.zeros(1, 1, size, size, device=device)).shape[2:])
            except NotImplementedError:  # an operator without a meta kernel: the size cannot be told here
                return (size, size)
            except Exception:  # any shape error of any layer: the size does not fit
                return None

    got = output_size(image_size)
    if got == (image_size, image_size):
        return []
    # every size on the meta device; multiples of 8 for a network built for real (a forward costs compute)
    step = 1 if next((p.is_meta for p in network.parameters()), True) else 8
    below = range(image_size - 1, 7, -1) if step == 1 else range(image_size // 8 * 8, 7, -8)
    lower = next((s for s in below if s != image_size and output_size(s) == (s, s)), None)
    above = range(image_size + 1, image_size + 65) if step == 1 else range(image_size // 8 * 8 + 8, image_size + 65, 8)
    upper = next((s for s in above if output_size(s) == (s, s)), None)
    nearest = " or ".join(str(s) for s in (lower, upper) if s is not None) or "none within 64"
    what = "fails on" if got is None else f"returns {got[0]}x{got[1]} logits for"
    size = f"{image_size}x{image_size}"
    return [f"image_size: the {key} network {name} {what} {size} slices; nearest sizes it takes: {nearest}"]


# --- the two entry points -----------------------------------------------------------------------------------------


def training_problems(
    dataset_dir: str | os.PathLike,
    data_format: str = "msd",
    num_classes: int = 9,
    split: str = "training",
    num_val_cases: int | None = None,
    teacher: str = "transunet",
    student: str = "tiny_unet",
    teacher_kwargs: Mapping[str, Any] | None = None,
    student_kwargs: Mapping[str, Any] | None = None,
    role: str = "teacher",
    loss_weights: Mapping[str, Any] | None = None,
    distill_stages: Sequence[str] | None = None,
    teacher_ckpt: str | os.PathLike | None = None,
    ckpt_path: str | os.PathLike | None = None,
    teacher_outputs: str | None = None,
    augment: Any = None,
    teacher_cache_gib: Any = None,
    settings: Mapping[str, Any] | None = None,
    output_dirs: Mapping[str, Any] | None = None,
    task: str | None = None,
    run_name: str | None = None,
) -> list[str]:
    """Everything wrong with a training (or evaluation) run's settings, outputs, data, networks, losses and
    checkpoints.

    Args:
        dataset_dir, data_format, num_classes, split, num_val_cases: the data (see :func:`dataset_problems`).
        teacher, student: registered network names (both are checked: every command of a run takes the same).
        teacher_kwargs, student_kwargs: their constructor arguments.
        role: the network trained or evaluated, ``"teacher"`` or ``"student"``.
        loss_weights: config key -> loss weight; each must be finite and >= 0.
        distill_stages: tap names distilled (distillation only); both networks must declare each.
        teacher_ckpt: the teacher's weights (distillation only); must exist and fit the teacher.
        ckpt_path: the weights of the network evaluated (evaluation only); must exist and fit it.
        teacher_outputs: ``auto``, ``cached`` or ``live`` (distillation only; see
            :func:`mskd.engines.resolve_teacher_outputs`), checked against ``augment``.
        augment: the random augmentation switch (checked with ``teacher_outputs``).
        teacher_cache_gib: the teacher cache's budget in GiB (distillation only); a number > 0.
        settings: config key -> value of the run settings in :data:`SETTINGS` (type and range each); with
            ``image_size``, every network built must take slices of that size and return logits of that size.
        output_dirs: config key -> folder the run writes to; each must be a folder (or creatable) and writable.
        task: ``"synapse"`` or ``"kits"``: the images' intensities are checked against the protocol's window of
            ``data_format`` and ``task`` (see :func:`dataset_problems`); ``None`` skips that check.
        run_name: the run whose model is evaluated; a self-describing ``ckpt_path`` must have been written by it
            (a self-describing teacher or evaluated checkpoint must also have been trained at ``image_size``).

    Returns:
        one line per problem (empty when the run can start).
    """
    settings = dict(settings or {})
    problems = _setting_problems(settings) + _output_problems(output_dirs or {})
    if role not in ("teacher", "student"):
        problems.append(f"role: must be 'teacher' or 'student', got {role!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        return [*problems, f"num_classes: must be an integer >= 2 (background included), got {num_classes!r}"]
    distilling = distill_stages is not None or teacher_ckpt is not None
    networks: dict[str, tuple[str, Any]] = {}
    for key, name, kwargs in (("teacher", teacher, teacher_kwargs), ("student", student, student_kwargs)):
        found, network = _network_problems(key, name, kwargs, num_classes, build=distilling or key == role)
        problems += found
        networks[key] = (name, network)
    problems += _weight_problems(loss_weights)
    if teacher_outputs is not None:
        from mskd.engines import resolve_teacher_outputs

        try:
            resolve_teacher_outputs(teacher_outputs, augment)
        except ValueError as e:
            problems.append(str(e))
    if teacher_cache_gib is not None and (
        isinstance(teacher_cache_gib, bool)
        or not isinstance(teacher_cache_gib, Real)
        or not math.isfinite(teacher_cache_gib)
        or int(teacher_cache_gib * 2**30) < 1
    ):
        problems.append(f"teacher_cache_gib: must be a number > 0 (GiB), got {teacher_cache_gib!r}")
    if distill_stages is not None:
        problems += _stage_problems(distill_stages, networks)
    size = settings.get("image_size")
    if size is not None and not _setting_problems({"image_size": size}):
        for key, (name, network) in networks.items():
            problems += [] if network is None else _size_problems(key, name, network, size)
    for key, path, which in (("teacher_ckpt", teacher_ckpt, "teacher"), ("ckpt_path", ckpt_path, role)):
        name, network = networks.get(which, (None, None))
        if path is not None and network is not None:
            kwargs = teacher_kwargs if which == "teacher" else student_kwargs
            expected = {"image_size": settings.get("image_size"), "run_name": run_name if key == "ckpt_path" else None}
            problems += _checkpoint_problems(key, path, which, name, kwargs, network, num_classes, expected)
    window = _protocol_window(data_format, task)
    return problems + dataset_problems(dataset_dir, data_format, split, num_classes, num_val_cases, window)


def check_training(**kwargs: Any) -> None:
    """:func:`training_problems`, reported by :func:`report_problems` (exit status 2 when there is any).

    The first ``initialize`` step of ``train_teacher.json``: ``$mskd.validation.check_training(**@checks)``.
    """
    report_problems(training_problems(**kwargs))


def _modality_problems(folder: str) -> list[str]:
    """A DICOM series must be CT (its Modality tag), the only modality the models have seen."""
    pydicom = require("pydicom", "dicom", "reading DICOM series")

    for file in sorted(Path(folder).iterdir()):
        try:
            header = pydicom.dcmread(file, stop_before_pixels=True)
        except Exception:  # not a DICOM file (a DICOMDIR, a note): the next one
            continue
        modality = str(header.get("Modality", "") or "")
        if modality and modality != "CT":
            return [f"{folder}: DICOM Modality is {modality!r}; the models segment CT only"]
        return []
    return []


def _input_problems(case: Mapping[str, Any], window: Sequence[float] | None) -> list[str]:
    """One inference input: a DICOM series of CT, readable, 3D, finite, on a physical grid, in HU."""
    path = case["image"]
    problems = _modality_problems(path) if os.path.isdir(path) else []
    if problems:
        return problems
    array, affine, problem = _read_volume(path)
    if problem:
        return [problem]
    return _image_problems(path, array) + _grid_problems(path, affine) + _intensity_problems(path, array, window)


def inference_problems(
    input: str | os.PathLike,
    ckpt_path: str | os.PathLike,
    student: str = "tiny_unet",
    student_kwargs: Mapping[str, Any] | None = None,
    num_classes: int = 9,
    task: str | None = None,
    image_size: int | None = None,
    flags: Mapping[str, str] | None = None,
) -> list[str]:
    """Everything wrong with an inference run's input and student.

    Args:
        input: a NIfTI file, a folder of them, a DICOM series folder or a folder of series folders.
        ckpt_path: the student's weights; must exist and fit the student.
        student: the student's registered name.
        student_kwargs: its constructor arguments.
        num_classes: the task's class count.
        task: ``"synapse"`` or ``"kits"``: the inputs' intensities are checked against the protocol's window (see
            :func:`dataset_problems`); ``None`` skips that check.
        image_size: the slice size inference runs at; a self-describing checkpoint must have been trained at it.
        flags: the command-line flags of a caller that takes ``student`` and ``image_size`` from the checkpoint
            unless given (``mskd predict``), for the fixes the messages suggest (see
            :func:`mskd.networks.metadata_mismatch`).

    Returns:
        one line per problem (empty when inference can start).
    """
    from mskd.data.datalist import get_datalist, input_format

    problems = []
    try:
        data_format = input_format(input)
        cases = get_datalist(data_format, input)
    except (OSError, ValueError) as e:
        problems.append(f"input: {_one_line(e)}")
        cases, data_format = [], None
    window = _protocol_window(data_format, task)
    problems += [p for found in _map_cases(_input_problems, cases, window) for p in found]
    found, network = _network_problems("student", student, student_kwargs, num_classes, build=True)
    problems += found
    if network is not None:
        problems += _checkpoint_problems(
            "ckpt_path", ckpt_path, "student", student, student_kwargs, network, num_classes,
            expected={"image_size": image_size}, flags=flags,
        )  # fmt: skip
    return problems


def check_inference(**kwargs: Any) -> None:
    """:func:`inference_problems`, reported by :func:`report_problems` (exit status 2 when there is any).

    The first ``initialize`` step of ``inference.json``: ``$mskd.validation.check_inference(**@checks)``.
    """
    report_problems(inference_problems(**kwargs))
