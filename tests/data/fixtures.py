"""Tiny on-disk datasets laid out exactly like the originals (DESIGN §3), for tests of datalists, readers and bundles.

Every writer is deterministic (seeded numpy) and returns the arrays it wrote, in the order they are stored on disk, so
a test derives what a reader must give back by hand. Import them as ``from tests.data.fixtures import ...``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "BTCV_AFFINE",
    "KITS19_AFFINE",
    "write_btcv",
    "write_dicom_series",
    "write_kits19",
    "write_synapse_npz",
]

# BTCV-like affine: voxel axes x, y flipped (L, P, S voxel order, as NIfTI converted from DICOM often is), 0.8 mm
# in-plane and 2.5 mm slices.
BTCV_AFFINE = np.array(
    [[-0.8, 0.0, 0.0, 120.0], [0.0, -0.8, 0.0, 110.0], [0.0, 0.0, 2.5, -200.0], [0.0, 0.0, 0.0, 1.0]]
)
# KiTS19 stores volumes slice-first: voxel axis 0 is cranio-caudal (3 mm, towards I), 1 is towards P, 2 towards L.
KITS19_AFFINE = np.array([[0.0, 0.0, -0.78, 0.0], [0.0, -0.78, 0.0, 0.0], [-3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])


def write_synapse_npz(
    root: str | os.PathLike,
    train_cases: Mapping[str, int] | None = None,
    test_cases: Mapping[str, int] | None = None,
    size: int = 16,
    seed: int = 0,
) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Write Synapse as TransUNet preprocessed it: ``train_npz/caseXXXX_sliceYYY.npz``, ``test_vol_h5/caseXXXX.npy.h5``.

    Args:
        root: dataset folder (created).
        train_cases: case number (``"0005"``) -> number of slices; one ``.npz`` (keys ``image``, ``label``) per slice.
            ``None`` writes two cases; ``{}`` writes no ``train_npz`` folder.
        test_cases: case number -> number of slices of its ``.npy.h5`` volume (datasets ``image``, ``label``).
            ``None`` writes one case; ``{}`` writes no ``test_vol_h5`` folder.
        size: height and width of a slice.
        seed: numpy seed.

    Returns:
        ``{"train": {case: (image, label)}, "test": {case: (image, label)}}`` with arrays stored slice-first,
        ``(D, size, size)``: for ``"train"`` ``image[k]`` is the content of slice ``k``'s file.
    """
    import h5py

    root = Path(root)
    train_cases = {"0005": 3, "0006": 2} if train_cases is None else train_cases
    test_cases = {"0001": 4} if test_cases is None else test_cases
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {"train": {}, "test": {}}
    for split, cases in (("train", train_cases), ("test", test_cases)):
        if not cases:
            continue
        folder = root / ("train_npz" if split == "train" else "test_vol_h5")
        folder.mkdir(parents=True, exist_ok=True)
        for case, depth in cases.items():
            image = rng.random((depth, size, size), dtype=np.float32)  # already windowed to [0, 1]
            label = rng.integers(0, 9, (depth, size, size)).astype(np.float32)
            out[split][f"case{case}"] = (image, label)
            if split == "train":
                for k in range(depth):
                    np.savez(folder / f"case{case}_slice{k:03d}.npz", image=image[k], label=label[k])
            else:
                with h5py.File(folder / f"case{case}.npy.h5", "w") as f:
                    f.create_dataset("image", data=image)
                    f.create_dataset("label", data=label)
    return out


def _write_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, path)


def write_btcv(
    root: str | os.PathLike,
    cases: Iterable[int] = (1, 2, 5),
    shape: Sequence[int] = (8, 6, 4),
    unlabelled: Iterable[int] = (),
    affine: np.ndarray = BTCV_AFFINE,
    seed: int = 0,
) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """Write raw BTCV NIfTI: ``img/imgXXXX.nii.gz`` (int16 HU) and ``label/labelXXXX.nii.gz`` (uint8, labels 0..13).

    Args:
        root: dataset folder (created).
        cases: case numbers with an image and a label.
        shape: voxel shape of every volume.
        unlabelled: case numbers written with an image only.
        affine: the image and label affine (default :data:`BTCV_AFFINE`).
        seed: numpy seed.

    Returns:
        ``{"case0001": (image, label)}`` as stored (``label`` is ``None`` for unlabelled cases).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    out: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    for number in sorted({*cases, *unlabelled}):
        image = rng.integers(-1000, 1000, shape).astype(np.int16)
        _write_nifti(root / "img" / f"img{number:04d}.nii.gz", image, affine)
        label = None
        if number in set(cases):
            label = rng.integers(0, 14, shape).astype(np.uint8)
            _write_nifti(root / "label" / f"label{number:04d}.nii.gz", label, affine)
        out[f"case{number:04d}"] = (image, label)
    return out


def write_kits19(
    root: str | os.PathLike,
    cases: Iterable[int] = (0, 1, 5),
    shape: Sequence[int] = (4, 8, 6),
    unlabelled: Iterable[int] = (210,),
    seed: int = 0,
) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """Write KiTS19: ``case_XXXXX/imaging.nii.gz`` (float HU) and ``case_XXXXX/segmentation.nii.gz`` (0, 1, 2).

    Volumes are stored slice-first, ``shape = (slices, rows, columns)``, with :data:`KITS19_AFFINE`, as the real
    KiTS19 files are.

    Args:
        root: dataset folder (created).
        cases: case numbers with a segmentation.
        shape: stored voxel shape, slice axis first.
        unlabelled: case numbers with ``imaging.nii.gz`` only (as the KiTS19 test set 210-299).
        seed: numpy seed.

    Returns:
        ``{"case_00000": (imaging, segmentation)}`` as stored (``segmentation`` is ``None`` for unlabelled cases).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    out: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    for number in sorted({*cases, *unlabelled}):
        folder = root / f"case_{number:05d}"
        image = rng.integers(-1000, 1000, shape).astype(np.float32)
        _write_nifti(folder / "imaging.nii.gz", image, KITS19_AFFINE)
        label = None
        if number in set(cases):
            label = rng.integers(0, 3, shape).astype(np.uint8)
            _write_nifti(folder / "segmentation.nii.gz", label, KITS19_AFFINE)
        out[folder.name] = (image, label)
    return out


def write_dicom_series(
    folder: str | os.PathLike,
    volume: np.ndarray,
    spacing: Sequence[float] = (0.7, 0.8, 2.5),
    origin: Sequence[float] = (-100.0, -120.0, 50.0),
    series_uid: str | None = None,
    suffix: str = ".dcm",
) -> list[Path]:
    """Write a 3D int16 volume as a CT DICOM series, one file per slice (SimpleITK's ``DicomSeriesFromArray`` example).

    Each slice carries ImagePositionPatient, ImageOrientationPatient (axial, identity direction), PixelSpacing,
    SliceThickness, InstanceNumber (from 1), SeriesInstanceUID and StudyInstanceUID.

    Args:
        folder: output folder (created).
        volume: ``(slices, rows, columns)`` array, SimpleITK's ``GetImageFromArray`` order.
        spacing: ``(column, row, slice)`` spacing in mm, SimpleITK's ``(x, y, z)`` order.
        origin: LPS position in mm of the first voxel.
        series_uid: SeriesInstanceUID; a fixed one when ``None``.
        suffix: file name suffix (``""`` writes files without extension).

    Returns:
        the written files in slice order.
    """
    import SimpleITK as sitk

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(np.asarray(volume, dtype=np.int16))
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in origin])
    direction = image.GetDirection()
    tags = {
        "0008|0060": "CT",
        "0008|0008": "DERIVED\\SECONDARY",
        "0008|0021": "20240101",
        "0008|0031": "120000",
        "0008|103e": "mskd test series",
        "0010|0010": "Phantom^Test",
        "0010|0020": "mskd-test",
        "0020|000d": "1.2.826.0.1.3680043.2.1125.1.1",
        "0020|000e": series_uid or "1.2.826.0.1.3680043.2.1125.1.2",
        "0020|0037": "\\".join(str(direction[i]) for i in (0, 3, 6, 1, 4, 7)),
        "0018|0050": str(float(spacing[2])),
    }
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetImageIO("GDCMImageIO")  # so files without extension are written as DICOM too
    files = []
    for k in range(image.GetDepth()):
        slice_k = image[:, :, k]
        for tag, value in tags.items():
            slice_k.SetMetaData(tag, value)
        slice_k.SetMetaData("0020|0032", "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, k)))))
        slice_k.SetMetaData("0020|0013", str(k + 1))
        slice_k.SetMetaData("0008|0018", f"{tags['0020|000e']}.{k + 1}")  # SOPInstanceUID
        path = folder / f"slice{k:03d}{suffix}"
        writer.SetFileName(str(path))
        writer.Execute(slice_k)
        files.append(path)
    return files
