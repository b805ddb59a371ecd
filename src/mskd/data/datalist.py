"""Datalists: MONAI-style lists of ``{"image": path, "label": path}`` dicts for each on-disk format (DESIGN §3).

One function per format, and :func:`get_datalist` to pick one by name:

=============== ======================================================= ======================================
format          layout                                                  splits
=============== ======================================================= ======================================
``msd``         ``dataset.json`` (``phantom``: the same, written by     any list of the file
                ``mskd phantom``)
``synapse_npz`` TransUNet: ``train_npz/caseXXXX_sliceYYY.npz``,         ``training`` (slices), ``test`` (h5)
                ``test_vol_h5/caseXXXX.npy.h5``
``btcv``        ``img/imgXXXX.nii.gz``, ``label/labelXXXX.nii.gz``      ``test``: :data:`SYNAPSE_TEST_CASES`
``kits19``      ``case_XXXXX/imaging.nii.gz``, ``segmentation.nii.gz``  ``test``: case number % 5 == 0
``dicom``       one series folder, or a folder of series folders        none (inference)
``nifti``       a ``.nii``/``.nii.gz`` file or a folder of them         none (inference)
=============== ======================================================= ======================================

The TransUNet formats are read with :class:`mskd.data.NpzSliceStackReader` and :class:`mskd.data.H5VolumeReader`.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

from monai.data import load_decathlon_datalist, partition_dataset
from monai.utils import look_up_option

from mskd.extras import require

__all__ = [
    "DATA_FORMATS",
    "LABELLED_SPLITS",
    "SYNAPSE_TEST_CASES",
    "SYNAPSE_TRAIN_CASES",
    "btcv_datalist",
    "dicom_datalist",
    "get_datalist",
    "image_datalist",
    "input_format",
    "kits19_datalist",
    "msd_datalist",
    "split_cases",
    "synapse_npz_datalist",
]

# TransUNet's Synapse split (DESIGN §3): 18 training and 12 test cases of BTCV's 30 labelled scans.
SYNAPSE_TRAIN_CASES: tuple[str, ...] = (
    "0005", "0006", "0007", "0009", "0010", "0021", "0023", "0024", "0026",
    "0027", "0028", "0030", "0031", "0033", "0034", "0037", "0039", "0040",
)  # fmt: skip
SYNAPSE_TEST_CASES: tuple[str, ...] = (
    "0001", "0002", "0003", "0004", "0008", "0022", "0025", "0029", "0032", "0035", "0036", "0038",
)  # fmt: skip
# Splits of the labelled formats (synapse_npz, btcv, kits19).
LABELLED_SPLITS: tuple[str, ...] = ("training", "test")
# Names accepted by get_datalist.
DATA_FORMATS: tuple[str, ...] = ("msd", "phantom", "synapse_npz", "btcv", "kits19", "dicom", "nifti")

_NPZ_SLICE = re.compile(r"(?P<case>case\d+)_slice(?P<slice>\d+)\.npz")
_H5_VOLUME = re.compile(r"(?P<case>case\d+)\.npy\.h5")
_BTCV_IMAGE = re.compile(r"img(?P<number>\d+)\.nii(\.gz)?")
_BTCV_LABEL = re.compile(r"label(?P<number>\d+)\.nii(\.gz)?")
_KITS_CASE = re.compile(r"case_(?P<number>\d+)")


def msd_datalist(dataset_dir: str | os.PathLike, key: str = "training", filename: str = "dataset.json") -> list[dict]:
    """Read an MSD-style ``dataset.json`` (as written by ``mskd phantom``) into absolute-path dicts.

    Every entry of the list must be an object naming an existing ``image`` and ``label`` file (relative to the
    folder, or absolute); all the entries that do not are named in one error.

    Args:
        dataset_dir: folder holding ``filename``; relative paths inside it are resolved against this folder.
        key: which list to read (``"training"``, ``"test"``, ...).
        filename: name of the JSON file.

    Returns:
        list of ``{"image": ..., "label": ...}`` dicts with absolute paths.

    Raises:
        FileNotFoundError: when the folder or its ``dataset.json`` is missing.
        NotADirectoryError: when ``dataset_dir`` is a file.
        ValueError: when the file is not a JSON object, ``key`` is not in it, its list is empty or not a list, or
            entries are not ``{"image": ..., "label": ...}`` objects naming existing files (every such entry is named).
    """
    dataset_dir = Path(dataset_dir)
    path = dataset_dir / filename
    _check_folder(dataset_dir, "dataset", "(set --dataset_dir; `mskd phantom --output-dir DIR` makes a demo set)")
    if not path.is_file():
        raise FileNotFoundError(
            f"no {filename} in {dataset_dir} (an MSD-style dataset.json lists the cases; `mskd phantom` writes one)"
        )
    try:
        content = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(content, dict):
        raise ValueError(f"{path}: holds a JSON {type(content).__name__}, not an object with a '{key}' list")
    if key not in content:
        raise ValueError(f"{path}: has no '{key}' list; it has {sorted(content)}")
    entries = content[key]
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: the '{key}' list is empty or not a list")
    problems = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            problems.append(f"{key}[{i}] is a {type(entry).__name__}, not an {{'image': ..., 'label': ...}} object")
            continue
        for name in ("image", "label"):
            if not isinstance(entry.get(name), str) or not entry[name]:
                problems.append(f"{key}[{i}] has no '{name}' file name")
            elif not (file := dataset_dir / entry[name]).is_file():  # an absolute path replaces the folder
                problems.append(f"{key}[{i}]: {name} file not found: {file}")
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems))
    return load_decathlon_datalist(str(path), is_segmentation=True, data_list_key=key, base_dir=str(dataset_dir))


def split_cases(datalist: list[dict], num_val: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Split cases into training and validation (whole cases, so no slice of a validation case is trained on).

    Args:
        datalist: the cases.
        num_val: number of validation cases.
        seed: seed of the shuffle, so the split is reproducible.

    Returns:
        ``(train, val)``.

    Raises:
        ValueError: unless ``num_val`` is an integer and ``1 <= num_val < len(datalist)``.
    """
    if isinstance(num_val, bool) or not isinstance(num_val, int) or not 1 <= num_val < len(datalist):
        left = f" leave {len(datalist) - num_val} to train on" if isinstance(num_val, int) else ""
        raise ValueError(
            f"{num_val!r} validation case(s) of the {len(datalist)} cases{left}; it must be an integer in "
            f"[1, {len(datalist) - 1}]"
        )
    train, val = partition_dataset(datalist, ratios=[len(datalist) - num_val, num_val], shuffle=True, seed=seed)
    return train, val


_NIFTI_SUFFIXES = (".nii", ".nii.gz")


def image_datalist(path: str | os.PathLike) -> list[dict]:
    """Inputs for inference: one NIfTI file, or every ``*.nii`` / ``*.nii.gz`` file of a folder (sorted).

    Args:
        path: a NIfTI file or a folder of them.

    Returns:
        list of ``{"image": path}`` dicts.

    Raises:
        FileNotFoundError: when ``path`` does not exist or a folder holds no NIfTI file.
    """
    path = Path(path)
    if path.is_file():
        return [{"image": str(path)}]
    if not path.is_dir():
        raise FileNotFoundError(f"inference input not found: {path} (give a .nii/.nii.gz file or a folder of them)")
    files = sorted(p for p in path.iterdir() if p.name.endswith(_NIFTI_SUFFIXES))
    if not files:
        raise FileNotFoundError(f"no .nii or .nii.gz file in {path}")
    return [{"image": str(f)} for f in files]


def _check_split(split: str, data_format: str, dataset_dir: Path) -> None:
    if split not in LABELLED_SPLITS:
        raise ValueError(
            f"unknown split '{split}' for {data_format} data in {dataset_dir}; choose one of {list(LABELLED_SPLITS)}"
        )


def _check_folder(folder: Path, what: str, hint: str = "") -> None:
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} is a file, not a {what} folder")
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} folder not found: {folder}" + (f" {hint}" if hint else ""))


def synapse_npz_datalist(dataset_dir: str | os.PathLike, split: str = "training") -> list[dict]:
    """Synapse as preprocessed by TransUNet: ``train_npz/caseXXXX_sliceYYY.npz`` and ``test_vol_h5/caseXXXX.npy.h5``.

    The cases are what the folders hold (TransUNet's standard split is :data:`SYNAPSE_TRAIN_CASES` in ``train_npz``
    and :data:`SYNAPSE_TEST_CASES` in ``test_vol_h5``). A training case lists its slice files sorted by slice number,
    for :class:`mskd.data.NpzSliceStackReader` to stack into one volume (read and cached once per case); a test case
    is one file for :class:`mskd.data.H5VolumeReader`. The image and the label of a case are the same files, read
    under the keys ``image`` and ``label``.

    Args:
        dataset_dir: folder holding ``train_npz`` and/or ``test_vol_h5``.
        split: ``"training"`` (``train_npz``) or ``"test"`` (``test_vol_h5``).

    Returns:
        ``[{"image": [slice files], "label": [slice files], "case": "case0005"}, ...]`` for ``"training"``,
        ``[{"image": file, "label": file, "case": "case0001"}, ...]`` for ``"test"``, sorted by case.

    Raises:
        ValueError: for an unknown split, or when ``.npz`` / ``.h5`` files of the folder are not named as TransUNet
            names them (all such files are listed) or two files hold the same slice of a case.
        FileNotFoundError: when the dataset folder or the split's folder is missing or holds no case.

    Warns:
        UserWarning: when the slice numbers of a case are not consecutive (a slice file is probably missing).
    """
    root = Path(dataset_dir)
    _check_split(split, "synapse_npz", root)
    _check_folder(root, "Synapse dataset")
    if split == "test":
        folder = root / "test_vol_h5"
        _check_folder(folder, "Synapse test (test_vol_h5)")
        files = sorted(p for p in folder.iterdir() if p.name.endswith((".h5", ".hdf5")))
        bad = [p.name for p in files if not _H5_VOLUME.fullmatch(p.name)]
        if bad:
            raise ValueError(f"{folder}: {len(bad)} file(s) not named caseXXXX.npy.h5: {bad}")
        if not files:
            raise FileNotFoundError(f"no caseXXXX.npy.h5 file in {folder}")
        return [{"image": str(p), "label": str(p), "case": p.name.split(".")[0]} for p in files]
    folder = root / "train_npz"
    _check_folder(folder, "Synapse training (train_npz)")
    cases: dict[str, dict[int, str]] = {}
    bad, duplicates = [], []
    for p in sorted(folder.iterdir()):
        if not p.name.endswith(".npz"):
            continue
        match = _NPZ_SLICE.fullmatch(p.name)
        if match is None:
            bad.append(p.name)
            continue
        slices = cases.setdefault(match["case"], {})
        number = int(match["slice"])
        if number in slices:
            duplicates.append(f"{Path(slices[number]).name} and {p.name}")
        slices[number] = str(p)
    if bad:
        raise ValueError(f"{folder}: {len(bad)} .npz file(s) not named caseXXXX_sliceYYY.npz: {bad}")
    if duplicates:
        raise ValueError(f"{folder}: files holding the same slice: {duplicates}")
    if not cases:
        raise FileNotFoundError(f"no caseXXXX_sliceYYY.npz file in {folder}")
    gaps = [case for case, slices in sorted(cases.items()) if max(slices) - min(slices) + 1 != len(slices)]
    if gaps:
        warnings.warn(
            f"{folder}: slice numbers of {gaps} are not consecutive (a slice file missing?); "
            "their volumes stack the slices present",
            stacklevel=2,
        )
    datalist = []
    for case, slices in sorted(cases.items()):
        files = [slices[k] for k in sorted(slices)]
        datalist.append({"image": files, "label": list(files), "case": case})
    return datalist


def btcv_datalist(dataset_dir: str | os.PathLike, split: str = "training") -> list[dict]:
    """Raw BTCV NIfTI: ``img/imgXXXX.nii.gz`` paired by number with ``label/labelXXXX.nii.gz`` (13 labels).

    ``"test"`` holds the cases of TransUNet's Synapse test split (:data:`SYNAPSE_TEST_CASES`), ``"training"`` every
    other case. Mapping the 13 BTCV labels to the 8 Synapse ones is left to a transform
    (``MapLabelValued`` with :data:`mskd.data.labels.BTCV_TO_SYNAPSE`).

    Args:
        dataset_dir: folder holding ``img`` and ``label``.
        split: ``"training"`` or ``"test"``.

    Returns:
        ``[{"image": img path, "label": label path, "case": "case0001"}, ...]`` sorted by case number.

    Raises:
        ValueError: for an unknown split, when images lack a label or labels an image (all are listed), or when the
            split holds no case.
        FileNotFoundError: when the dataset folder, ``img`` or ``label`` is missing, or ``img`` holds no image.
    """
    root = Path(dataset_dir)
    _check_split(split, "btcv", root)
    _check_folder(root, "BTCV dataset")
    missing = [name for name in ("img", "label") if not (root / name).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"BTCV folder {root} lacks {missing} (expected img/imgXXXX.nii.gz, label/labelXXXX.nii.gz)"
        )
    images = _numbered(root / "img", _BTCV_IMAGE)
    labels = _numbered(root / "label", _BTCV_LABEL)
    if not images:
        raise FileNotFoundError(f"no imgXXXX.nii.gz file in {root / 'img'}")
    problems = []
    if no_label := sorted(images.keys() - labels.keys()):
        problems.append(f"images without label: {[images[n].name for n in no_label]}")
    if no_image := sorted(labels.keys() - images.keys()):
        problems.append(f"labels without image: {[labels[n].name for n in no_image]}")
    if problems:
        raise ValueError(f"{root}: " + "; ".join(problems))
    test = {int(c) for c in SYNAPSE_TEST_CASES}
    numbers = [n for n in sorted(images) if (n in test) == (split == "test")]
    if not numbers:
        raise ValueError(f"no case of split '{split}' in {root} ('test' holds cases {list(SYNAPSE_TEST_CASES)})")
    return [{"image": str(images[n]), "label": str(labels[n]), "case": f"case{n:04d}"} for n in numbers]


def _numbered(folder: Path, pattern: re.Pattern) -> dict[int, Path]:
    """The files of ``folder`` whose name matches ``pattern``, by their number."""
    return {int(m["number"]): p for p in folder.iterdir() if (m := pattern.fullmatch(p.name))}


def kits19_datalist(dataset_dir: str | os.PathLike, split: str = "training") -> list[dict]:
    """KiTS19: ``case_XXXXX/imaging.nii.gz`` and ``case_XXXXX/segmentation.nii.gz`` (0 background, 1 kidney, 2 tumour).

    Cases without ``segmentation.nii.gz`` (the KiTS19 test set, cases 210-299) are skipped. The hold-out is
    deterministic: ``"test"`` holds the labelled cases whose number is a multiple of 5, ``"training"`` the others.
    The volumes are stored slice-first; ``Orientationd(axcodes="RAS")`` after loading puts the slice axis last.

    Args:
        dataset_dir: folder holding the ``case_XXXXX`` folders (``kits19/data`` of the KiTS19 repository).
        split: ``"training"`` or ``"test"``.

    Returns:
        ``[{"image": imaging path, "label": segmentation path, "case": "case_00000"}, ...]`` sorted by case.

    Raises:
        ValueError: for an unknown split, when case folders lack ``imaging.nii.gz`` (all are listed) or the split
            holds no labelled case.
        FileNotFoundError: when the dataset folder is missing or holds no labelled ``case_XXXXX`` folder.
    """
    root = Path(dataset_dir)
    _check_split(split, "kits19", root)
    _check_folder(root, "KiTS19 dataset")
    cases = sorted(p for p in root.iterdir() if p.is_dir() and _KITS_CASE.fullmatch(p.name))
    if not cases:
        raise FileNotFoundError(f"no case_XXXXX folder in {root}")
    no_image = [p.name for p in cases if not (p / "imaging.nii.gz").is_file()]
    if no_image:
        raise ValueError(f"{root}: case folder(s) without imaging.nii.gz: {no_image}")
    labelled = [p for p in cases if (p / "segmentation.nii.gz").is_file()]
    if not labelled:
        raise FileNotFoundError(f"no case_XXXXX folder of {root} holds segmentation.nii.gz (labelled cases needed)")
    chosen = [p for p in labelled if (int(p.name[len("case_") :]) % 5 == 0) == (split == "test")]
    if not chosen:
        raise ValueError(f"no labelled case of split '{split}' in {root} ('test' holds case numbers divisible by 5)")
    return [
        {"image": str(p / "imaging.nii.gz"), "label": str(p / "segmentation.nii.gz"), "case": p.name} for p in chosen
    ]


def _series_uids(folder: Path) -> set[str]:
    """SeriesInstanceUIDs of the DICOM files directly in ``folder`` (empty when it holds none)."""
    pydicom = require("pydicom", "dicom", "reading DICOM series")

    uids = set()
    for p in folder.iterdir():
        if p.is_file() and pydicom.misc.is_dicom(p):
            ds = pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
            uids.add(str(ds.get("SeriesInstanceUID", "")))
    return uids


def dicom_datalist(path: str | os.PathLike) -> list[dict]:
    """Inputs for inference: DICOM series, one per folder.

    If ``path`` itself holds DICOM files (any file with the DICOM preamble, whatever its extension) it is one series;
    otherwise every sub-folder of ``path`` holding DICOM files is one series (sub-folders without DICOM are skipped).
    Read the series with ``LoadImaged(keys="image", reader=mskd.data.readers.DicomSeriesReader())``, which stacks the
    slices on the series' own grid (by position along the slice normal).

    Args:
        path: a series folder, or a folder of series folders.

    Returns:
        ``[{"image": series folder, "case": folder name}, ...]`` sorted by folder name.

    Raises:
        FileNotFoundError: when ``path`` does not exist or no DICOM file is found.
        NotADirectoryError: when ``path`` is a file.
        ValueError: when a folder holds more than one SeriesInstanceUID (all such folders are listed).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"DICOM input not found: {path} (give a series folder or a folder of series folders)")
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is a file; give the folder that holds the DICOM series")
    series = {path: uids} if (uids := _series_uids(path)) else {}
    if not series:
        series = {d: u for d in sorted(p for p in path.iterdir() if p.is_dir()) if (u := _series_uids(d))}
    if not series:
        raise FileNotFoundError(f"no DICOM file in {path} or its sub-folders")
    mixed = [f"{folder} holds {len(uids)} DICOM series" for folder, uids in series.items() if len(uids) > 1]
    if mixed:
        raise ValueError("; ".join(mixed) + "; put one series per folder")
    return [{"image": str(folder), "case": folder.name} for folder in series]


def input_format(path: str | os.PathLike) -> str:
    """The format of an inference input: ``"nifti"`` (a NIfTI file or a folder holding some) or ``"dicom"``.

    Args:
        path: a ``.nii``/``.nii.gz`` file, a folder of them, a DICOM series folder or a folder of series folders.

    Returns:
        ``"nifti"`` or ``"dicom"`` (read the inputs with ``get_datalist(input_format(path), path)``).

    Raises:
        FileNotFoundError: when ``path`` does not exist, or is a folder with neither NIfTI nor DICOM files.
        ValueError: when ``path`` is a file that is not NIfTI.
    """
    path = Path(path)
    if path.is_file():
        if not path.name.endswith(_NIFTI_SUFFIXES):
            raise ValueError(f"inference input {path} is not a .nii/.nii.gz file (give a NIfTI file or a folder)")
        return "nifti"
    if not path.is_dir():
        raise FileNotFoundError(f"inference input not found: {path} (give a NIfTI file, a folder, or a DICOM series)")
    if any(p.name.endswith(_NIFTI_SUFFIXES) for p in path.iterdir()):
        return "nifti"
    if _series_uids(path) or any(_series_uids(d) for d in path.iterdir() if d.is_dir()):
        return "dicom"
    raise FileNotFoundError(f"no .nii/.nii.gz file and no DICOM series in {path}")


def get_datalist(data_format: str, dataset_dir: str | os.PathLike, split: str = "training") -> list[dict]:
    """The datalist of ``dataset_dir`` read as ``data_format``.

    Args:
        data_format: one of :data:`DATA_FORMATS`: ``"msd"`` / ``"phantom"`` (:func:`msd_datalist`, ``split`` is the
            list of ``dataset.json`` to read), ``"synapse_npz"``, ``"btcv"``, ``"kits19"`` (``split`` in
            :data:`LABELLED_SPLITS`), ``"dicom"`` (:func:`dicom_datalist`) or ``"nifti"`` (:func:`image_datalist`);
            the last two are inference inputs without labels and ignore ``split``.
        dataset_dir: the dataset folder (or, for ``"dicom"`` and ``"nifti"``, the input file or folder).
        split: which cases to list.

    Returns:
        MONAI-style dicts (see the function of each format).

    Raises:
        ValueError: for an unknown ``data_format`` (the message lists the valid ones), and as the format's function.
        FileNotFoundError: as the format's function.
    """
    try:
        data_format = look_up_option(data_format, DATA_FORMATS)
    except ValueError:
        raise ValueError(
            f"unknown data format '{data_format}' for {dataset_dir}; choose one of {list(DATA_FORMATS)}"
        ) from None
    if data_format in ("msd", "phantom"):
        return msd_datalist(dataset_dir, key=split)
    if data_format == "synapse_npz":
        return synapse_npz_datalist(dataset_dir, split)
    if data_format == "btcv":
        return btcv_datalist(dataset_dir, split)
    if data_format == "kits19":
        return kits19_datalist(dataset_dir, split)
    if data_format == "dicom":
        return dicom_datalist(dataset_dir)
    return image_datalist(dataset_dir)
