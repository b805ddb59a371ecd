"""`mskd predict`: segment CT volumes with a bundle's student, through the bundle's own ``inference.json``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mskd.data.datalist import get_datalist, input_format
from mskd.validation import Flag, ValidationError, validation_error

__all__ = ["FLAGS", "predict"]


def predict(
    bundle: str | os.PathLike,
    input: str | os.PathLike,
    output: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    student: str | None = None,
    image_size: int | None = None,
) -> list[Path]:
    """Segment every input volume and write one NIfTI label map per input onto the input's grid, and for a DICOM
    series also a DICOM Segmentation that references it (:class:`mskd.data.SaveDicomSegd`).

    The bundle stays the single source of truth: this runs its ``configs/inference.json`` with ``input``,
    ``output_dir``, ``ckpt_path``, ``student``, ``student_kwargs`` and ``image_size`` overridden. A checkpoint that
    describes itself (the bundles save them so) gives the student, its constructor arguments and the image size it
    was trained at when they are not given; given ones must be the checkpoint's.

    Args:
        bundle: the bundle folder (e.g. ``bundles/mskd_synapse``).
        input: a NIfTI file, a folder of NIfTI files, a DICOM series folder or a folder of series folders.
        output: folder for the label maps (``<input name>_seg.nii.gz``, and ``<series folder name>_seg.dcm`` for a
            DICOM series); created if needed.
        checkpoint: the student's weights; default the bundle's ``models/model.pt``.
        student: the student's registry name; default the checkpoint's (the bundle's for a plain state dict).
        image_size: the in-plane size the student was trained at; default the checkpoint's (the bundle's for a plain
            state dict, with a warning that it cannot be checked).

    Returns:
        the files written, in input order: each input's NIfTI label map, followed for a DICOM series by its
        DICOM-SEG (unless it was skipped with a warning: a series without FrameOfReferenceUID or without
        single-frame slices).

    Raises:
        FileNotFoundError: when the bundle does not exist.
        mskd.validation.ValidationError: every problem found by the bundle's pre-flight
            (:func:`mskd.validation.preflight`: an input that is missing, unreadable, not one 3D volume, holds NaN or
            is not CT in HU; a folder with several DICOM series; a student checkpoint that is missing, unreadable,
            of another network or class count, or trained at another image size than ``image_size``), each on
            this command's flag (``--ckpt-path: ...``, :data:`FLAGS`); nothing is written.
    """
    from mskd.bundle import INFERENCE, Bundle

    bundle = Bundle(bundle)
    checkpoint = Path(checkpoint) if checkpoint is not None else bundle.root / "models" / "model.pt"
    overrides = {"input": str(input), "output_dir": str(output), "ckpt_path": str(checkpoint)}
    overrides.update(_student_settings(checkpoint, student, image_size))
    try:
        bundle.run((INFERENCE,), **overrides)
    except Exception as e:
        refused = validation_error(e)
        if refused is None:
            raise
        raise ValidationError(refused.problems, FLAGS) from None
    data_format = input_format(input)
    written = []
    for case in get_datalist(data_format, input):
        stem = _stem(case["image"], output)
        written.append(Path(stem + ".nii.gz"))
        if data_format == "dicom" and Path(stem + ".dcm").is_file():
            written.append(Path(stem + ".dcm"))
    return written


def _student_settings(checkpoint: Path, student: str | None, image_size: int | None) -> dict[str, Any]:
    """The ``student``, ``student_kwargs`` and ``image_size`` overrides: the given ones, else the checkpoint's."""
    from mskd.networks import read_checkpoint

    try:
        metadata = read_checkpoint(checkpoint, "student", mmap=True)[1] or {}
    except (OSError, ValueError):  # missing or unreadable: the checks report it
        metadata = {}
    settings = {
        "student": student if student is not None else metadata.get("network"),
        "image_size": image_size if image_size is not None else metadata.get("image_size"),
    }
    if metadata and settings["student"] == metadata["network"]:  # its kwargs built the weights
        settings["student_kwargs"] = metadata["network_kwargs"]
    return {key: value for key, value in settings.items() if value is not None}


_FROM_CHECKPOINT = "the checkpoint's"  # what predict uses for a flag left out
# config id of inference.json -> the `mskd predict` flag that sets it (the problems of the pre-flight name these)
FLAGS: dict[str, Flag] = {
    "input": Flag("--input"),
    "output_dir": Flag("--output-dir"),
    "ckpt_path": Flag("--ckpt-path"),
    "student": Flag("--student", _FROM_CHECKPOINT),
    "image_size": Flag("--image-size", _FROM_CHECKPOINT),
    "num_classes": Flag("--bundle"),  # the class count is the bundle's task
    "task": Flag("--bundle"),
}


def _stem(path: str, output: str | os.PathLike) -> str:
    """The path, without extension, that SaveImaged and SaveDicomSegd give a prediction in ``output``: the input's
    base name without its extension (``.nii.gz`` as one; a series folder ``1.2.3`` gives ``1.2``), then ``_seg``."""
    from monai.data.utils import create_file_basename

    return create_file_basename("seg", path, output, separate_folder=False, makedirs=False)
