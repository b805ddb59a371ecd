"""`mskd predict` on DICOM series: beside the NIfTI label map, a DICOM Segmentation (highdicom) that references the
source series and holds the same labels, frame for frame on the source slices; NIfTI inputs get no SEG.

The series are written by :func:`tests.data.fixtures.write_dicom_series` (slice ``k`` of the array in file
``slice<k>``, ascending along the slice normal) and renumbered head first, so that the order mskd stacks them in (by
position) is not their InstanceNumber order. The label map is on the reader's grid, index ``(column, row, slice)``,
so slice ``k``'s frame is ``nifti[:, :, k].T``, whatever the in-plane orientation.
"""

import json
import warnings
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.data import MetaTensor
from pydicom.sr.codedict import codes

from mskd.data import SaveDicomSegd, input_format, organ_names, writers
from mskd.data.writers import dicom_seg_frames, read_dicom_series, segment_descriptions
from mskd.networks import checkpoint_metadata, get_network, save_weights
from mskd.plotting import LABEL_COLOURS
from mskd.predict import predict
from tests.data.fixtures import write_dicom_series

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"
KWARGS = {"channels": [4, 8, 16, 32]}
FRAME_OF_REFERENCE = "1.2.826.0.1.3680043.2.1125.1.4"
# in-plane orientation (ImageOrientationPatient): the fixture's, and the same plane turned by 180 degrees (rows
# towards the patient's right, columns towards anterior)
ORIENTATIONS = {"axial": [1, 0, 0, 0, 1, 0], "turned": [-1, 0, 0, 0, -1, 0]}


def _series(folder: Path, orientation: str = "axial", frame_of_reference: bool = True) -> list[pydicom.Dataset]:
    """A 5-slice CT series (20 rows, 18 columns) numbered head first; returns its headers in position order."""
    volume = np.random.default_rng(1).integers(-200, 300, (5, 20, 18)).astype(np.int16)  # (slices, rows, columns)
    volume[:, :3] = -1000  # air, as around every body CT (inputs without any are refused as not HU)
    files = write_dicom_series(folder, volume, spacing=(0.9, 0.8, 3.0))
    for k, path in enumerate(files):
        dataset = pydicom.dcmread(path)
        dataset.InstanceNumber = len(files) - k  # head first: slice 0 (lowest) is the last instance
        dataset.ImageOrientationPatient = ORIENTATIONS[orientation]
        if frame_of_reference:
            dataset.FrameOfReferenceUID = FRAME_OF_REFERENCE
        dataset.save_as(path)
    return [pydicom.dcmread(path, stop_before_pixels=True) for path in files]


@pytest.fixture
def student(tmp_path):
    """A tiny_unet at 16x16 whose random weights give several organs on the series (seeded)."""
    torch.manual_seed(0)
    metadata = checkpoint_metadata("tiny_unet", 9, 16, network_kwargs=KWARGS, run_name="tiny_unet-baseline-s0")
    return save_weights(get_network("tiny_unet", 1, 9, **KWARGS), tmp_path / "student.pt", metadata)


def _bundle_version(bundle: str) -> str:
    return json.loads((BUNDLES / bundle / "configs" / "metadata.json").read_text())["version"]


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_predict_writes_a_dicom_seg_of_the_series(tmp_path, student, orientation):
    sources = _series(tmp_path / "dicom" / "series1", orientation)
    out = tmp_path / "out"
    written = predict(BUNDLES / "mskd_synapse", tmp_path / "dicom", out, checkpoint=student)
    assert written == [out / "series1_seg.nii.gz", out / "series1_seg.dcm"]  # what `mskd predict` reports
    nifti = np.asarray(nib.load(written[0]).dataobj)
    assert nifti.shape == (18, 20, 5) and len(np.unique(nifti)) >= 3  # several organs: a meaningful comparison

    seg = hd.seg.segread(written[1])
    # the source series: same patient, study and frame of reference; every slice referenced
    assert seg.SegmentationType == "BINARY" and seg.Modality == "SEG"
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID and seg.PatientID == sources[0].PatientID
    assert seg.FrameOfReferenceUID == FRAME_OF_REFERENCE and seg.SeriesInstanceUID != sources[0].SeriesInstanceUID
    [referenced] = seg.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence} == {
        s.SOPInstanceUID for s in sources
    }
    # one segment per organ, numbered as the labels, with the bundle's algorithm
    assert [d.SegmentLabel for d in seg.SegmentSequence] == organ_names("synapse")
    assert [d.SegmentNumber for d in seg.SegmentSequence] == list(range(1, 9))
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "mskd tiny_unet"
    assert algorithm.AlgorithmVersion == _bundle_version("mskd_synapse")

    # frames: one per (organ, slice) that holds the organ, each at its source slice's position
    slices = {s.SOPInstanceUID: k for k, s in enumerate(sources)}  # slice k of the label map is sources[k]
    present = {(organ, k) for k in range(5) for organ in np.unique(nifti[:, :, k]) if organ > 0}
    frames = set()
    for item in seg.PerFrameFunctionalGroupsSequence:
        source = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k = slices[source]
        frames.add((item.SegmentIdentificationSequence[0].ReferencedSegmentNumber, k))
        position = item.PlanePositionSequence[0].ImagePositionPatient
        np.testing.assert_allclose([float(p) for p in position], sources[k].ImagePositionPatient, atol=1e-4)
    assert seg.NumberOfFrames == len(present) and frames == present

    # the decoded labels are the NIfTI's, voxel for voxel, slice k's frame being nifti[:, :, k].T
    for uid, k in slices.items():
        frame = seg.get_pixels_by_source_instance([uid], combine_segments=True, skip_overlap_checks=True)[0]
        np.testing.assert_array_equal(frame, nifti[:, :, k].T)


def test_predict_on_nifti_writes_no_dicom_seg(tmp_path, student):
    """A NIfTI input gives its label map only, as before: the DICOM-SEG writer leaves it alone."""
    ct = tmp_path / "ct.nii.gz"
    volume = np.random.default_rng(0).integers(-1000, 300, (20, 18, 4)).astype(np.int16)
    nib.save(nib.Nifti1Image(volume, np.diag([1.5, 1.5, 3.0, 1.0])), ct)
    assert input_format(ct) == "nifti"
    out = tmp_path / "out"
    assert predict(BUNDLES / "mskd_synapse", ct, out, checkpoint=student) == [out / "ct_seg.nii.gz"]
    assert sorted(p.name for p in out.iterdir()) == ["ct_seg.nii.gz"]


def test_predict_on_a_series_without_frame_of_reference_warns_and_writes_the_nifti_only(tmp_path, student):
    _series(tmp_path / "series1", frame_of_reference=False)
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="no FrameOfReferenceUID, so a DICOM-SEG cannot reference it"):
        written = predict(BUNDLES / "mskd_synapse", tmp_path / "series1", out, checkpoint=student)
    assert written == [out / "series1_seg.nii.gz"]
    assert not list(out.glob("*.dcm"))


# ----------------------------------------------------------------------------------------------------------------------
# the pieces: segment descriptions, frames on the source slices, the transform on its own
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "task, number, label, category, kind, modifier",
    [
        ("synapse", 1, "spleen", codes.SCT.AnatomicalStructure, codes.SCT.Spleen, None),
        ("synapse", 2, "right_kidney", codes.SCT.AnatomicalStructure, codes.SCT.Kidney, codes.SCT.Right),
        ("synapse", 3, "left_kidney", codes.SCT.AnatomicalStructure, codes.SCT.Kidney, codes.SCT.Left),
        ("synapse", 7, "aorta", codes.SCT.AnatomicalStructure, codes.SCT.Aorta, None),
        ("kits", 1, "kidney", codes.SCT.AnatomicalStructure, codes.SCT.Kidney, None),
        ("kits", 2, "tumour", codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Neoplasm, None),
    ],
)
def test_segment_descriptions_code_each_organ(task, number, label, category, kind, modifier):
    descriptions = segment_descriptions(task, "enet", "1.2.3")
    assert [d.segment_number for d in descriptions] == list(range(1, len(organ_names(task)) + 1))
    description = descriptions[number - 1]
    assert description.segment_label == label
    assert description.segmented_property_category == category and description.segmented_property_type == kind
    modifiers = description.SegmentedPropertyTypeCodeSequence[0].get("SegmentedPropertyTypeModifierCodeSequence", [])
    assert [hd.sr.CodedConcept.from_dataset(m) for m in modifiers] == ([modifier] if modifier else [])
    rgb = tuple(int(LABEL_COLOURS[task][number][i : i + 2], 16) for i in (1, 3, 5))
    assert (
        np.abs(
            np.subtract(hd.color.CIELabColor.from_dicom_value(description.RecommendedDisplayCIELabValue).to_rgb(), rgb)
        ).max()
        <= 1
    )
    [algorithm] = description.SegmentationAlgorithmIdentificationSequence
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("mskd enet", "1.2.3")
    assert description.SegmentAlgorithmType == "AUTOMATIC"


def test_an_unknown_task_or_one_numbered_with_gaps_is_refused(monkeypatch):
    with pytest.raises(ValueError, match="brain"):
        segment_descriptions("brain", "enet", "1")
    with pytest.raises(ValueError, match="brain"):
        SaveDicomSegd("pred", task="brain")
    monkeypatch.setitem(writers.TASK_LABELS, "gaps", {0: "background", 1: "liver", 3: "spleen"})
    with pytest.raises(ValueError, match=r"task 'gaps' has foreground labels \[1, 3\]; DICOM segment numbers"):
        segment_descriptions("gaps", "enet", "1")


def test_a_label_map_that_is_not_3d_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"must be 3D \(X, Y, Z\), got shape \(18, 20\)"):
        dicom_seg_frames(np.zeros((18, 20)), np.eye(4), read_dicom_series(_series_folder(tmp_path)))


def test_frames_follow_the_source_slices_whatever_the_label_maps_axis_order(tmp_path):
    """A label map on the reader's grid (column, row, slice), then the same one transposed and flipped: the frames are
    the same."""
    sources = read_dicom_series(_series_folder(tmp_path))
    labels = np.arange(18 * 20 * 5).reshape(18, 20, 5)
    affine = np.diag([-0.9, -0.8, 3.0, 1.0])  # RAS: the series' LPS x and y negated
    affine[:3, 3] = [100.0, 120.0, 50.0]
    expected = labels.transpose(2, 1, 0)  # frame k: row i, column j = labels[j, i, k]
    np.testing.assert_array_equal(dicom_seg_frames(labels, affine, sources), expected)
    # slices reversed and the row axis first: affine columns permuted and the slice axis counted from the top
    flipped = labels[:, :, ::-1].transpose(1, 0, 2)
    flipped_affine = affine[:, [1, 0, 2, 3]]
    flipped_affine[:3, 2] *= -1
    flipped_affine[:3, 3] = affine[:3, 3] + 4 * affine[:3, 2]
    np.testing.assert_array_equal(dicom_seg_frames(flipped, flipped_affine, sources), expected)


@pytest.mark.parametrize(
    "scale, shift, match",
    [
        ([2.0, 1.0, 1.0], [0.0, 0.0, 0.0], "one source column and row span"),  # labels at half the resolution
        ([1.0, 1.0, 1.0], [0.45, 0.0, 0.0], "a pixel falls 0.500 voxel from a voxel centre"),  # half a voxel off
        ([1.0, 1.0, 1.0], [0.0, 0.0, 30.0], r"lies outside the label map of shape \(18, 20, 5\)"),  # beyond the top
        ([1.0, 1.0, 10.0], [0.0, 0.0, 0.0], "both map to label-map slice"),  # 30 mm label slices: all on one
    ],
)
def test_a_label_map_off_the_series_grid_is_refused(tmp_path, scale, shift, match):
    sources = read_dicom_series(_series_folder(tmp_path))
    affine = np.diag([-0.9 * scale[0], -0.8 * scale[1], 3.0 * scale[2], 1.0])
    affine[:3, 3] = np.add([100.0, 120.0, 50.0], np.multiply(shift, [-1, -1, 1]))
    with pytest.raises(ValueError, match=match):
        dicom_seg_frames(np.zeros((18, 20, 5), np.uint8), affine, sources)


def test_the_transform_is_a_no_op_for_a_nifti_source(tmp_path):
    pred = MetaTensor(
        torch.ones(1, 4, 4, 2), affine=torch.eye(4), meta={"filename_or_obj": str(tmp_path / "ct.nii.gz")}
    )
    (tmp_path / "ct.nii.gz").write_bytes(b"")
    data = {"pred": pred}
    assert SaveDicomSegd("pred", output_dir=tmp_path / "out")(data)["pred"] is pred
    assert not (tmp_path / "out").exists()


def test_the_transform_skips_a_folder_without_single_frame_slices_with_a_warning(tmp_path):
    folder = tmp_path / "enhanced"
    [path] = write_dicom_series(folder, np.zeros((1, 4, 4)))
    dataset = pydicom.dcmread(path)
    del dataset.ImagePositionPatient  # as an enhanced image, whose positions are per frame: no slice to map
    dataset.save_as(path)
    pred = MetaTensor(torch.zeros(1, 4, 4, 2), affine=torch.eye(4), meta={"filename_or_obj": str(folder)})
    with pytest.warns(UserWarning, match="no single-frame DICOM image with ImagePositionPatient in .*enhanced"):
        SaveDicomSegd("pred", output_dir=tmp_path / "out")({"pred": pred})
    assert not (tmp_path / "out").exists()


def test_the_transform_names_the_seg_as_the_nifti_and_refuses_labels_out_of_range(tmp_path):
    folder = _series_folder(tmp_path, name="1.2.840.9")  # a UID-named series folder: SaveImaged writes 1.2.840_seg
    saver = SaveDicomSegd("pred", output_dir=tmp_path / "out", task="kits", network="enet", version="0.5.1")
    assert saver.output_path(folder) == tmp_path / "out" / "1.2.840_seg.dcm"
    affine = torch.tensor(np.diag([-0.9, -0.8, 3.0, 1.0]))
    affine[:3, 3] = torch.tensor([100.0, 120.0, 50.0])
    pred = MetaTensor(torch.full((1, 18, 20, 5), 3.0), affine=affine, meta={"filename_or_obj": str(folder)})
    with pytest.raises(ValueError, match=r"integers 0\.\.2 \(the kits organs\), got values from 3 to 3$"):
        saver({"pred": pred})
    with pytest.raises(ValueError, match=r"got values from 0\.5 to 0\.5, not all integers"):
        saver({"pred": pred * 0 + 0.5})
    with pytest.raises(ValueError, match=r"must be \(1, X, Y, Z\) or \(X, Y, Z\), got shape \(2, 18, 20, 5\)"):
        saver({"pred": pred.repeat(2, 1, 1, 1)})
    pred[0, :4, :4, 1] = 2.0
    pred[pred == 3.0] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        saver({"pred": pred})
    seg = hd.seg.segread(tmp_path / "out" / "1.2.840_seg.dcm")
    assert [d.SegmentLabel for d in seg.SegmentSequence] == ["kidney", "tumour"] and seg.NumberOfFrames == 1


def _series_folder(tmp_path: Path, name: str = "series") -> Path:
    _series(tmp_path / name)
    return tmp_path / name
