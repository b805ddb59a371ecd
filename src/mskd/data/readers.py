"""MONAI image readers: the two TransUNet Synapse formats (stacked ``.npz`` slices and ``.npy.h5`` volumes) and DICOM
series stacked on their own grid (:class:`DicomSeriesReader`).

Both formats hold an image and a label in the same file under two keys, so a reader reads one key, and a pipeline
loads each key with its own reader::

    LoadImaged(keys="image", reader=NpzSliceStackReader(key="image"))
    LoadImaged(keys="label", reader=NpzSliceStackReader(key="label"))

Both give ``(H, W, D)`` volumes with the slice axis last (as NIfTI volumes are read), no channel axis (so
``EnsureChannelFirstd`` adds one) and an identity affine: these files carry no spacing, so every distance measured
on them (HD95 included) is in voxels, and the metadata says so with ``"spacing_known": False``.

``read`` only records the paths; the files are opened in ``get_data``. This is deliberate: ``LoadImage`` catches any
exception raised by a reader's ``read`` and silently tries MONAI's default readers next, and its ``NumpyReader``
would read a ``.npz`` that lacks the requested key by stacking *all* of its arrays. Errors raised in ``get_data``
reach the caller unchanged.
"""

from __future__ import annotations

import copy
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from monai.config import PathLike
from monai.data import ImageReader, PydicomReader
from monai.data.utils import is_supported_format
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

from mskd.extras import require

__all__ = ["DicomSeriesReader", "H5VolumeReader", "NpzSliceStackReader"]

# what a corrupt or truncated file raises from numpy's zip reader or from h5py
_READ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, RuntimeError)


@dataclass(frozen=True)
class _Files:
    """The paths handed to ``read``; opened by ``get_data``."""

    paths: tuple[str, ...]


def _checked_files(reader: ImageReader, data: Sequence[PathLike] | PathLike) -> _Files:
    """The paths of ``data`` if ``reader`` supports their suffix (``LoadImage`` with several readers tries each
    reader's ``read`` in turn and only moves on when it raises)."""
    if not reader.verify_suffix(data):
        raise ValueError(f"{type(reader).__name__} cannot read {data}")
    return _Files(tuple(str(p) for p in ensure_tuple(data)))


def _meta(shape: tuple[int, ...], filename: str) -> dict:
    """Metadata of a volume without spacing: identity affine, no channel axis."""
    return {
        MetaKeys.AFFINE: np.eye(4),
        MetaKeys.ORIGINAL_AFFINE: np.eye(4),
        MetaKeys.SPATIAL_SHAPE: np.asarray(shape),
        MetaKeys.SPACE: SpaceKeys.RAS,
        MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan"),  # "no_channel", as MONAI's own readers write it
        "spacing_known": False,
        "filename_or_obj": filename,
    }


class NpzSliceStackReader(ImageReader):
    """Read TransUNet's ``caseXXXX_sliceYYY.npz`` slices and stack them into one ``(H, W, D)`` volume.

    Each file holds one 2D slice under ``key`` (TransUNet: ``"image"``, float32 already windowed to [0, 1], and
    ``"label"``). A list of files is stacked along a new last axis in the order given;
    :func:`mskd.data.synapse_npz_datalist` lists a case's slices sorted by slice number. A single file gives
    ``(H, W, 1)``.

    Args:
        key: the array to read from every file.

    Example::

        LoadImaged(keys="image", reader=NpzSliceStackReader(key="image"))
    """

    def __init__(self, key: str = "image") -> None:
        super().__init__()
        if not isinstance(key, str) or not key:
            raise ValueError(f"key must be a non-empty string naming the array in each .npz file, got {key!r}")
        self.key = key

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        """Whether every file name ends in ``.npz``."""
        return is_supported_format(filename, ["npz"])

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs) -> _Files:
        """Record the files to read (a path or a list of slice paths); ``get_data`` opens them.

        Raises:
            ValueError: when a file is not ``.npz``, so that ``LoadImage`` tries its next reader.
        """
        return _checked_files(self, data)

    def get_data(self, img: _Files) -> tuple[np.ndarray, dict]:
        """Load array ``key`` of every file and stack the slices along the last axis.

        Args:
            img: what :meth:`read` returned.

        Returns:
            ``(array, meta)``: an ``(H, W, D)`` array and its metadata (identity affine, ``spatial_shape``,
            ``original_channel_dim`` "no channel", ``spacing_known`` False, ``filename_or_obj`` the first file).

        Raises:
            FileNotFoundError: when a file is missing.
            ValueError: when a file is not a readable ``.npz``, lacks ``key`` (the message lists the keys it has),
                holds no 2D slice under ``key``, or when two slices differ in shape (both files are named).
        """
        slices = [self._read_slice(path) for path in img.paths]
        first = slices[0]
        for path, array in zip(img.paths, slices, strict=True):
            if array.shape != first.shape:
                raise ValueError(
                    f"slices of different shapes cannot be stacked: {img.paths[0]} has {first.shape}, "
                    f"{path} has {array.shape}"
                )
        volume = np.stack(slices, axis=-1)
        return volume, _meta(volume.shape, img.paths[0])

    def _read_slice(self, path: str) -> np.ndarray:
        if not Path(path).is_file():
            raise FileNotFoundError(f"slice file not found: {path}")
        try:
            npz = np.load(path, allow_pickle=False)
        except _READ_ERRORS as e:
            raise ValueError(f"cannot read {path} as .npz ({type(e).__name__}: {e})") from e
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ValueError(f"{path} holds a single .npy array, not an .npz archive of named arrays")
        with npz:
            keys = list(npz.keys())
            if self.key not in keys:
                raise ValueError(f"{path} has no array '{self.key}'; it has {keys}")
            try:
                array = npz[self.key]
            except _READ_ERRORS as e:
                raise ValueError(f"cannot read array '{self.key}' of {path} ({type(e).__name__}: {e})") from e
        if array.ndim != 2:
            raise ValueError(f"{path}: array '{self.key}' must be a 2D slice, got shape {array.shape}")
        return array


class H5VolumeReader(ImageReader):
    """Read one dataset of TransUNet's ``caseXXXX.npy.h5`` test volumes, stored ``(D, H, W)``, as ``(H, W, D)``.

    Args:
        key: the dataset to read (TransUNet: ``"image"``, already windowed to [0, 1], and ``"label"``).

    Example::

        LoadImaged(keys="label", reader=H5VolumeReader(key="label"))
    """

    def __init__(self, key: str = "image") -> None:
        super().__init__()
        if not isinstance(key, str) or not key:
            raise ValueError(f"key must be a non-empty string naming the dataset in each .h5 file, got {key!r}")
        self.key = key

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        """Whether every file name ends in ``.h5`` or ``.hdf5``."""
        return is_supported_format(filename, ["h5", "hdf5"])

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs) -> _Files:
        """Record the file to read; ``get_data`` opens it.

        Raises:
            ValueError: when the file is not ``.h5``/``.hdf5``, so that ``LoadImage`` tries its next reader.
        """
        return _checked_files(self, data)

    def get_data(self, img: _Files) -> tuple[np.ndarray, dict]:
        """Load dataset ``key`` and move its slice axis last.

        Args:
            img: what :meth:`read` returned.

        Returns:
            ``(array, meta)``: an ``(H, W, D)`` array and its metadata (as :class:`NpzSliceStackReader`).

        Raises:
            FileNotFoundError: when the file is missing.
            ValueError: when more than one file is given, the file is not readable HDF5, it lacks ``key`` (the
                message lists the datasets it has) or ``key`` is not a 3D dataset.
        """
        h5py = require("h5py", "h5", "reading Synapse .npy.h5 volumes")
        if len(img.paths) != 1:
            raise ValueError(f"H5VolumeReader reads one volume per file, got {len(img.paths)} files: {img.paths}")
        path = img.paths[0]
        if not Path(path).is_file():
            raise FileNotFoundError(f"volume file not found: {path}")
        try:
            f = h5py.File(path, "r")
        except _READ_ERRORS as e:
            raise ValueError(f"cannot read {path} as HDF5 ({type(e).__name__}: {e})") from e
        with f:
            keys = list(f.keys())
            if self.key not in keys:
                raise ValueError(f"{path} has no dataset '{self.key}'; it has {keys}")
            if not isinstance(f[self.key], h5py.Dataset):
                raise ValueError(f"{path}: '{self.key}' is an HDF5 group, not a dataset")
            try:
                array = np.asarray(f[self.key][()])
            except _READ_ERRORS as e:
                raise ValueError(f"cannot read dataset '{self.key}' of {path} ({type(e).__name__}: {e})") from e
        if array.ndim != 3:
            raise ValueError(f"{path}: dataset '{self.key}' must be a 3D (D, H, W) volume, got shape {array.shape}")
        volume = np.ascontiguousarray(np.moveaxis(array, 0, -1))
        return volume, _meta(volume.shape, path)


def _position_along_normal(dataset) -> float | None:
    """``ImagePositionPatient`` projected on the slice normal (row x column direction), or ``None`` without them."""
    orientation = getattr(dataset, "ImageOrientationPatient", None)
    position = getattr(dataset, "ImagePositionPatient", None)
    if orientation is None or position is None or len(orientation) != 6 or len(position) != 3:
        return None
    normal = np.cross(np.asarray(orientation[:3], dtype=float), np.asarray(orientation[3:], dtype=float))
    return float(normal @ np.asarray(position, dtype=float))


class DicomSeriesReader(PydicomReader):
    """MONAI's ``PydicomReader`` that stacks a series' slices on the series' own grid.

    MONAI's reader stacks the slices by ``InstanceNumber``, which scanners count in acquisition order, often from the
    head down, against the slice normal: the volume (and a label map written on it) then has its slice axis reversed
    relative to the series' grid, with another direction and origin, as tools that compare index-wise see it. This
    reader stacks them as DICOM readers (GDCM, ITK, dcm2niix) do: by ``ImagePositionPatient`` along the slice normal
    (the cross product of the two ``ImageOrientationPatient`` directions), ascending, so that index ``k`` is the
    ``k``-th slice along the normal and the affine maps index ``(0, 0, 0)`` to the first slice's position (in RAS,
    like every affine mskd writes: LPS x and y negated). Slices at the same position keep their ``InstanceNumber``
    order; a series without that geometry is stacked by ``InstanceNumber``, as MONAI does.

    Args:
        kwargs: ``PydicomReader`` arguments; ``fname_regex`` defaults to ``None`` (only files that are DICOM are read,
            without a warning per stray file in the folder).

    Example::

        LoadImaged(keys="image", reader=DicomSeriesReader())
    """

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("fname_regex", None)
        super().__init__(**kwargs)

    def _combine_dicom_series(self, data, filenames: Sequence[PathLike]) -> tuple[np.ndarray, dict]:
        datasets = list(data)
        positions = [_position_along_normal(dataset) for dataset in datasets]
        if None in positions:
            return super()._combine_dicom_series(datasets, filenames)
        order = sorted(
            range(len(datasets)), key=lambda i: (positions[i], int(getattr(datasets[i], "InstanceNumber", 0) or 0))
        )
        stacked = []
        for rank, i in enumerate(order):  # MONAI stacks by InstanceNumber: number copies in position order
            dataset = copy.copy(datasets[i])
            dataset.InstanceNumber = rank + 1
            stacked.append(dataset)
        return super()._combine_dicom_series(stacked, [filenames[i] for i in order])
