"""Writers of predictions: MONAI's NIfTI writer made atomic (:class:`AtomicNibabelWriter`, for ``SaveImaged``) and a
DICOM Segmentation of each DICOM series input (:class:`SaveDicomSegd`, highdicom).

A DICOM-SEG is what clinical viewers and PACS take: one BINARY segment per organ of the task (SNOMED CT codes where
DICOM has one, the project's overlay colours), referencing the source series (study, series and SOP instance UIDs,
frame of reference, each frame's ImagePositionPatient), so that it lies on the CT it was made from.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Hashable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from monai.config import KeysCollection
from monai.data import NibabelWriter
from monai.data.utils import create_file_basename
from monai.transforms import MapTransform
from monai.utils import MetaKeys, SpaceKeys, look_up_option

from mskd.extras import require
from mskd.io import atomic_path

from .labels import TASK_LABELS, organ_names

if TYPE_CHECKING:  # pragma: no cover
    import highdicom
    import pydicom

__all__ = ["AtomicNibabelWriter", "SaveDicomSegd", "dicom_seg_frames", "read_dicom_series", "segment_descriptions"]

logger = logging.getLogger(__name__)


class AtomicNibabelWriter(NibabelWriter):
    """MONAI's ``NibabelWriter`` writing through :func:`mskd.io.atomic_path`: a label map appears whole or not at all,
    and a failed write leaves an earlier file of the same name intact.

    Use it from a config as ``SaveImaged(..., writer="mskd.data.AtomicNibabelWriter")``.
    """

    def write(self, filename: str | os.PathLike, verbose: bool = False, **obj_kwargs: Any) -> None:
        """Write ``filename`` (NIfTI, by its extension) atomically; see ``NibabelWriter.write``."""
        with atomic_path(filename) as tmp:
            super().write(tmp, verbose=False, **obj_kwargs)
        if verbose:
            logger.info(f"writing: {filename}")


# ----------------------------------------------------------------------------------------------------------------------
# DICOM-SEG
# ----------------------------------------------------------------------------------------------------------------------
# organ name -> (segmented property category, type, type modifier, anatomic region), keywords of pydicom's SNOMED CT
# code set (``pydicom.sr.codedict.codes.SCT``). Left and right kidney are "Kidney" with the laterality as a
# Segmented Property Type Modifier; the KiTS tumour is a neoplasm with the kidney as its anatomic region. Organs not
# listed get the generic "Anatomical Structure" type.
_ORGAN_CODES: dict[str, tuple[str, str, str | None, str | None]] = {
    "spleen": ("AnatomicalStructure", "Spleen", None, None),
    "right_kidney": ("AnatomicalStructure", "Kidney", "Right", None),
    "left_kidney": ("AnatomicalStructure", "Kidney", "Left", None),
    "kidney": ("AnatomicalStructure", "Kidney", None, None),
    "gallbladder": ("AnatomicalStructure", "Gallbladder", None, None),
    "liver": ("AnatomicalStructure", "Liver", None, None),
    "stomach": ("AnatomicalStructure", "Stomach", None, None),
    "aorta": ("AnatomicalStructure", "Aorta", None, None),
    "pancreas": ("AnatomicalStructure", "Pancreas", None, None),
    "tumour": ("MorphologicallyAbnormalStructure", "Neoplasm", None, "Kidney"),  # KiTS: kidney tumour
}
_GENERIC_CODES = ("AnatomicalStructure", "AnatomicalStructure", None, None)
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
_IN_PLANE_TOLERANCE = 0.05  # voxels: a source pixel must fall this close to a label-map voxel centre


def segment_descriptions(task: str, network: str, version: str) -> list[highdicom.seg.SegmentDescription]:
    """One BINARY-segment description per organ of ``task``, numbered as the label map's values (organ ``k`` is
    segment ``k``).

    Each has the organ's name as its label (:func:`mskd.data.organ_names`), SNOMED CT category and type codes
    (pydicom's code set; the generic "Anatomical Structure" for an organ without one), the colour the project's
    overlays give it (:func:`mskd.plotting.default_colours`) and the algorithm: ``mskd <network>`` of family
    "Artificial Intelligence", version ``version``.

    Args:
        task: ``"synapse"`` or ``"kits"``.
        network: the student network's registry name (``"tiny_unet"``).
        version: the bundle version (``metadata.json``'s ``version``).

    Returns:
        ``highdicom.seg.SegmentDescription`` items, segment numbers 1, 2, ...

    Raises:
        ValueError: for an unknown task, or one whose foreground labels are not 1, 2, ... (segment numbers must be).
    """
    hd = require("highdicom", "dicom", "writing DICOM-SEG")
    from pydicom.sr.codedict import codes

    from mskd.plotting import default_colours

    labels = look_up_option(task, TASK_LABELS)
    numbers = sorted(k for k in labels if k > 0)
    if numbers != list(range(1, len(numbers) + 1)):
        raise ValueError(f"task {task!r} has foreground labels {numbers}; DICOM segment numbers must be 1, 2, ...")
    colours = default_colours(labels)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=f"mskd {network}",
        family=codes.cid7162.ArtificialIntelligence,
        version=str(version),
        parameters={"network": str(network), "task": task},
    )
    descriptions = []
    for number, organ in zip(numbers, organ_names(task), strict=True):
        category, kind, modifier, region = _ORGAN_CODES.get(organ, _GENERIC_CODES)
        description = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=organ,
            segmented_property_category=getattr(codes.SCT, category),
            segmented_property_type=getattr(codes.SCT, kind),
            algorithm_type="AUTOMATIC",
            algorithm_identification=algorithm,
            anatomic_regions=[getattr(codes.SCT, region)] if region else None,
            display_color=hd.color.CIELabColor.from_rgb(*_rgb(colours[number])),
        )
        if modifier:  # laterality: Segmented Property Type Modifier Code Sequence, inside the type's item
            laterality = hd.sr.CodedConcept.from_code(getattr(codes.SCT, modifier))
            description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [laterality]
        descriptions.append(description)
    return descriptions


def _rgb(colour: str) -> tuple[int, int, int]:
    """``"#56B4E9"`` -> ``(86, 180, 233)``."""
    return tuple(int(colour.lstrip("#")[i : i + 2], 16) for i in (0, 2, 4))  # type: ignore[return-value]


def _position_along_normal(dataset: pydicom.Dataset) -> float:
    normal = np.cross(*np.reshape(np.asarray(dataset.ImageOrientationPatient, dtype=float), (2, 3)))
    return float(normal @ np.asarray(dataset.ImagePositionPatient, dtype=float))


def read_dicom_series(folder: str | os.PathLike) -> list[pydicom.Dataset]:
    """The headers (no pixel data) of a series folder's image slices, in :class:`mskd.data.DicomSeriesReader`'s
    order: by ImagePositionPatient along the slice normal, then InstanceNumber.

    Every file with the DICOM preamble is read (whatever its extension), as :func:`mskd.data.dicom_datalist` finds
    series; files without ImagePositionPatient/ImageOrientationPatient (reports, multi-frame images) are left out.

    Args:
        folder: a series folder.

    Returns:
        the slices' datasets, read with ``stop_before_pixels``.

    Raises:
        FileNotFoundError: when ``folder`` holds no single-frame DICOM image with a position.
    """
    pydicom = require("pydicom", "dicom", "reading DICOM series")

    datasets = []
    for path in sorted(Path(folder).iterdir()):
        if path.is_file() and pydicom.misc.is_dicom(path):
            dataset = pydicom.dcmread(path, stop_before_pixels=True)
            if all(k in dataset for k in ("ImagePositionPatient", "ImageOrientationPatient", "Rows", "Columns")):
                datasets.append(dataset)
    if not datasets:
        raise FileNotFoundError(f"no single-frame DICOM image with ImagePositionPatient in {folder}")
    return sorted(datasets, key=lambda ds: (_position_along_normal(ds), int(ds.get("InstanceNumber", 0) or 0)))


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Logger ``name`` at WARNING at least inside the block."""
    logger_ = logging.getLogger(name)
    level = logger_.level
    logger_.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger_.setLevel(level)


def _unit_axis(step: np.ndarray) -> int | None:
    """The label-map axis along which ``step`` (in voxels) is one voxel forwards or backwards, else ``None``."""
    axis = int(np.argmax(np.abs(step)))
    unit = np.eye(3)[axis] * np.sign(step[axis])
    return axis if np.abs(step - unit).max() <= _IN_PLANE_TOLERANCE else None


def dicom_seg_frames(labels: np.ndarray, affine: np.ndarray, datasets: Sequence[pydicom.Dataset]) -> np.ndarray:
    """The label map resampled (by index, no interpolation) onto the source slices: frame ``i`` is slice
    ``datasets[i]``, pixel for pixel (``[row, column]``, as its PixelData).

    Each source pixel is located through its slice's ImagePositionPatient, ImageOrientationPatient and PixelSpacing
    and looked up in the label map through ``affine``; whatever the label map's axis order and flips, every source
    pixel must fall on a voxel centre in-plane (within 0.05 voxel) and each slice on its own label-map slice (the
    nearest, so slightly uneven slice spacing still maps).

    Args:
        labels: ``(X, Y, Z)`` integer label map.
        affine: its voxel-to-world affine in RAS (MONAI's and NIfTI's convention).
        datasets: the source slices (:func:`read_dicom_series`).

    Returns:
        ``(len(datasets), Rows, Columns)`` array of ``labels``' dtype.

    Raises:
        ValueError: when ``labels`` is not 3D, or a source pixel does not fall on the label map's grid (the label map
            is not on the series' grid: the slice and the distance are named), or two slices map to one.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"the label map must be 3D (X, Y, Z), got shape {labels.shape}")
    to_index = np.linalg.inv(_RAS_TO_LPS @ np.asarray(affine, dtype=float))
    frames, taken = [], {}
    for dataset in datasets:
        orientation = np.asarray(dataset.ImageOrientationPatient, dtype=float)
        row_spacing, column_spacing = (float(s) for s in dataset.PixelSpacing)
        origin = to_index @ np.append(np.asarray(dataset.ImagePositionPatient, dtype=float), 1.0)
        along_row = to_index[:3, :3] @ (orientation[:3] * column_spacing)  # one column to the right
        along_column = to_index[:3, :3] @ (orientation[3:] * row_spacing)  # one row down
        where = f"slice {dataset.get('InstanceNumber', '?')} (SOPInstanceUID {dataset.get('SOPInstanceUID', '?')})"
        # one column and one row of the source must each be one voxel along a label-map axis of their own
        axes = [_unit_axis(along_row), _unit_axis(along_column)]
        if None in axes or axes[0] == axes[1]:
            raise ValueError(
                f"{where} is not on the label map's grid: one source column and row span {np.round(along_row, 3)} "
                f"and {np.round(along_column, 3)} voxels; the label map must be written on the series' own grid"
            )
        slice_axis = 3 - sum(axes)  # the axis the in-plane steps do not move along
        rows, columns = np.arange(int(dataset.Rows)), np.arange(int(dataset.Columns))
        index = origin[:3, None, None] + along_column[:, None, None] * rows[:, None]
        index = index + along_row[:, None, None] * columns
        nearest = np.rint(index)
        off = np.abs(index - nearest)
        off[slice_axis] = 0.0  # the nearest slice, so that slightly uneven slice spacing still maps
        if off.max() > _IN_PLANE_TOLERANCE:
            raise ValueError(
                f"{where} is not on the label map's grid (a pixel falls {off.max():.3f} voxel from a voxel centre); "
                "the label map must be written on the series' own grid"
            )
        nearest = nearest.astype(int)
        bounds = np.asarray(labels.shape)[:, None, None]
        if (nearest < 0).any() or (nearest >= bounds).any():
            raise ValueError(f"{where} lies outside the label map of shape {labels.shape}")
        k = int(nearest[slice_axis, 0, 0])
        if k in taken:
            raise ValueError(f"{where} and slice {taken[k]} both map to label-map slice {k}")
        taken[k] = dataset.get("InstanceNumber", "?")
        frames.append(labels[tuple(nearest)])
    return np.stack(frames)


class SaveDicomSegd(MapTransform):
    """Write a DICOM Segmentation ``<name>_<postfix>.dcm`` of each label map whose source is a DICOM series; a no-op
    for any other source (a NIfTI file).

    Put it after ``Invertd`` (the label map back on the series' grid), beside ``SaveImaged``: the file is named as
    ``SaveImaged(output_postfix=..., separate_folder=False)`` names the NIfTI, with ``.dcm``. The source slices are
    read again (headers only, :func:`read_dicom_series`) and the SEG is built from them (highdicom): BINARY, one
    segment per organ of ``task`` (:func:`segment_descriptions`, empty ones included), its frames the label map on
    the source slices (:func:`dicom_seg_frames`: frame order and pixel orientation of the source, whatever mskd
    reoriented in between), frames without a segment left out; same patient, study and frame of reference, a new
    series. A series without FrameOfReferenceUID cannot be referenced, and a folder without single-frame slices
    (an enhanced multi-frame image) is not mapped: both are skipped with a warning (the NIfTI is still written).

    Args:
        keys: the label-map key(s): ``(1, X, Y, Z)`` or ``(X, Y, Z)`` ``MetaTensor`` with ``filename_or_obj`` (the
            series folder) and ``affine`` in its metadata.
        output_dir: folder of the ``.dcm`` files (created if needed).
        task: the label set, ``"synapse"`` or ``"kits"``.
        network: the student network's name, written as the algorithm (``mskd <network>``) and model name.
        version: the bundle version, written as the algorithm version.
        output_postfix: appended to the series folder's name.
        series_number: the SEG series' number; default the source's plus 1000 (1000 when it has none).
        print_log: log each file written.
        allow_missing_keys: skip missing keys instead of raising.

    Example::

        SaveDicomSegd("pred", output_dir="predictions", task="synapse", network="tiny_unet", version="0.7.1")
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        output_dir: str | os.PathLike = "./",
        task: str = "synapse",
        network: str = "unknown",
        version: str = "unknown",
        output_postfix: str = "seg",
        series_number: int | None = None,
        print_log: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        look_up_option(task, TASK_LABELS)  # raises for an unknown task, naming the known ones
        self.task = task
        self.output_dir = Path(output_dir)
        self.network, self.version = str(network), str(version)
        self.output_postfix = output_postfix
        self.series_number = series_number
        self.print_log = print_log

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            self.write(d[key])
        return d

    def output_path(self, source: str | os.PathLike) -> Path:
        """``<output_dir>/<name>_<postfix>.dcm`` for a series folder, named as ``SaveImaged`` names the NIfTI."""
        stem = create_file_basename(self.output_postfix, str(source), self.output_dir, separate_folder=False)
        return Path(stem + ".dcm")

    def write(self, label_map: Any) -> Path | None:
        """Write the SEG of one label map if its source is a DICOM series folder.

        Returns:
            the file written, or ``None``: not a DICOM series folder, or (with a warning) a folder without single-frame
            slices or a series without FrameOfReferenceUID.

        Raises:
            ValueError: when the label map is not one 3D volume of integers 0..(number of organs), or is not on the
                series' grid (:func:`dicom_seg_frames`).
        """
        meta = getattr(label_map, "meta", {})
        source = meta.get("filename_or_obj")
        if isinstance(source, (list, tuple)):  # a batch would carry one name per item; postprocessing sees one case
            source = source[0] if len(source) == 1 else None
        if not source or not Path(source).is_dir():
            return None  # a NIfTI (or other single-file) source: the NIfTI label map is the output
        try:
            datasets = read_dicom_series(source)
        except FileNotFoundError as e:  # e.g. one enhanced (multi-frame) image: its frames are not mapped here
            warnings.warn(f"{e}: no DICOM-SEG is written, only the NIfTI label map", stacklevel=2)
            return None
        if any("FrameOfReferenceUID" not in ds for ds in datasets):
            warnings.warn(
                f"{source}: the series has no FrameOfReferenceUID, so a DICOM-SEG cannot reference it; "
                "only the NIfTI label map is written",
                stacklevel=2,
            )
            return None
        labels = self._labels(label_map, source)
        affine = np.asarray(label_map.affine if hasattr(label_map, "affine") else meta[MetaKeys.AFFINE], dtype=float)
        if str(meta.get(MetaKeys.SPACE, SpaceKeys.RAS)) != SpaceKeys.RAS:
            affine = _RAS_TO_LPS @ affine  # an LPS affine: make it RAS
        frames = dicom_seg_frames(labels, affine, datasets)
        seg = self._segmentation(datasets, frames)
        path = self.output_path(source)
        with atomic_path(path) as tmp:
            seg.save_as(tmp)
        if self.print_log:
            logger.info(f"writing: {path}")
        return path

    def _labels(self, label_map: Any, source: str) -> np.ndarray:
        array = np.asarray(label_map.detach().cpu() if hasattr(label_map, "detach") else label_map)
        if array.ndim == 4 and array.shape[0] == 1:
            array = array[0]
        if array.ndim != 3:
            raise ValueError(f"{source}: the label map must be (1, X, Y, Z) or (X, Y, Z), got shape {array.shape}")
        count = len(organ_names(self.task))
        low, high = float(array.min()), float(array.max())
        labels = array.astype(np.uint8)
        if low < 0 or high > count or not np.array_equal(labels, array):
            raise ValueError(
                f"{source}: the label map must hold integers 0..{count} (the {self.task} organs), got values from "
                f"{low:g} to {high:g}" + ("" if np.array_equal(labels, array) else ", not all integers")
            )
        return labels

    def _segmentation(self, datasets: Sequence[pydicom.Dataset], frames: np.ndarray) -> highdicom.seg.Segmentation:
        hd = require("highdicom", "dicom", "writing DICOM-SEG")

        import mskd

        first = datasets[0]
        number = self.series_number
        if number is None:
            number = int(first.SeriesNumber) + 1000 if first.get("SeriesNumber") not in (None, "") else 1000
        with _quiet("highdicom"):  # it logs every module it copies from the source at INFO: 9 lines per series
            return hd.seg.Segmentation(
                source_images=list(datasets),
                pixel_array=frames,
                segmentation_type="BINARY",
                segment_descriptions=segment_descriptions(self.task, self.network, self.version),
                series_instance_uid=hd.UID(),
                series_number=number,
                sop_instance_uid=hd.UID(),
                instance_number=1,
                manufacturer="mskd",
                manufacturer_model_name=self.network[:64],
                software_versions=f"mskd {mskd.__version__}",
                device_serial_number="0",
                content_label="MSKD",
                content_description=f"{self.task} organs, mskd {self.network}"[:64],
                series_description=f"mskd {self.network} {self.task} segmentation"[:64],
            )
