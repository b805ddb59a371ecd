"""Datalists: MONAI-style lists of ``{"image": path, "label": path}`` dicts for each on-disk format."""

from __future__ import annotations

import json
import os
from pathlib import Path

from monai.data import load_decathlon_datalist, partition_dataset

__all__ = ["image_datalist", "msd_datalist", "split_cases"]


def msd_datalist(dataset_dir: str | os.PathLike, key: str = "training", filename: str = "dataset.json") -> list[dict]:
    """Read an MSD-style ``dataset.json`` (as written by ``mskd phantom``) into absolute-path dicts.

    Args:
        dataset_dir: folder holding ``filename``; relative paths inside it are resolved against this folder.
        key: which list to read (``"training"``, ``"test"``, ...).
        filename: name of the JSON file.

    Returns:
        list of ``{"image": ..., "label": ...}`` dicts with absolute paths.

    Raises:
        FileNotFoundError: when the folder or its ``dataset.json`` is missing.
        ValueError: when ``key`` is not in the file or its list is empty.
    """
    dataset_dir = Path(dataset_dir)
    path = dataset_dir / filename
    if not dataset_dir.is_dir():
        raise FileNotFoundError(
            f"dataset folder not found: {dataset_dir} (set --dataset_dir; `mskd phantom --out DIR` makes a demo set)"
        )
    if not path.is_file():
        raise FileNotFoundError(f"no {filename} in {dataset_dir} (an MSD-style dataset.json lists the cases)")
    with open(path) as f:
        content = json.load(f)
    if key not in content:
        raise ValueError(f"{path} has no '{key}' list; it has {sorted(content)}")
    if not content[key]:
        raise ValueError(f"the '{key}' list of {path} is empty")
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
        ValueError: unless ``1 <= num_val < len(datalist)``.
    """
    if not 1 <= num_val < len(datalist):
        raise ValueError(f"num_val must be in [1, {len(datalist) - 1}] for {len(datalist)} cases, got {num_val}")
    train, val = partition_dataset(datalist, ratios=[len(datalist) - num_val, num_val], shuffle=True, seed=seed)
    return train, val


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
    files = sorted(p for p in path.iterdir() if p.name.endswith((".nii", ".nii.gz")))
    if not files:
        raise FileNotFoundError(f"no .nii or .nii.gz file in {path}")
    return [{"image": str(f)} for f in files]
