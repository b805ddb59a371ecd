"""Data: datalists for each on-disk format, readers, format-aware loading, writers (NIfTI, DICOM-SEG) and the phantom
generator."""

from .datalist import (
    DATA_FORMATS,
    LABELLED_SPLITS,
    SYNAPSE_TEST_CASES,
    SYNAPSE_TRAIN_CASES,
    btcv_datalist,
    dicom_datalist,
    get_datalist,
    image_datalist,
    input_format,
    kits19_datalist,
    msd_datalist,
    split_cases,
    synapse_npz_datalist,
)
from .labels import BTCV_TO_SYNAPSE, HU_WINDOWS, KITS_LABELS, SYNAPSE_LABELS, TASK_LABELS, organ_names
from .readers import DicomSeriesReader, H5VolumeReader, NpzSliceStackReader
from .transforms import LabelMapd, LoadCased, cached_dataset, intensity_window
from .writers import AtomicNibabelWriter, SaveDicomSegd

__all__ = [
    "BTCV_TO_SYNAPSE",
    "DATA_FORMATS",
    "HU_WINDOWS",
    "KITS_LABELS",
    "LABELLED_SPLITS",
    "SYNAPSE_LABELS",
    "SYNAPSE_TEST_CASES",
    "SYNAPSE_TRAIN_CASES",
    "TASK_LABELS",
    "AtomicNibabelWriter",
    "DicomSeriesReader",
    "H5VolumeReader",
    "LabelMapd",
    "LoadCased",
    "NpzSliceStackReader",
    "SaveDicomSegd",
    "btcv_datalist",
    "cached_dataset",
    "dicom_datalist",
    "get_datalist",
    "image_datalist",
    "input_format",
    "intensity_window",
    "kits19_datalist",
    "msd_datalist",
    "organ_names",
    "split_cases",
    "synapse_npz_datalist",
]
