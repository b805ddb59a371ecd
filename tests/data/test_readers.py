import h5py
import numpy as np
import pytest
from monai.data import list_data_collate
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

from mskd.data.datalist import synapse_npz_datalist
from mskd.data.readers import H5VolumeReader, NpzSliceStackReader
from tests.data.fixtures import write_dicom_series, write_synapse_npz


def _load(reader_cls):
    """The pipeline a bundle uses: one LoadImaged per key, each with the reader of that key."""
    return Compose(
        [
            LoadImaged(keys="image", reader=reader_cls(key="image")),
            LoadImaged(keys="label", reader=reader_cls(key="label")),
            EnsureChannelFirstd(keys=["image", "label"]),
        ]
    )


@pytest.fixture
def synapse(tmp_path):
    written = write_synapse_npz(tmp_path, train_cases={"0005": 3, "0006": 2}, test_cases={"0001": 4}, size=8)
    return tmp_path, written


@pytest.mark.parametrize(
    "split, reader_cls, case", [("training", NpzSliceStackReader, "case0005"), ("test", H5VolumeReader, "case0001")]
)
def test_reader_gives_hwd_volume_with_channel(synapse, split, reader_cls, case):
    root, written = synapse
    item = next(d for d in synapse_npz_datalist(root, split) if d["case"] == case)
    out = _load(reader_cls)(item)
    image, label = written["train" if split == "training" else "test"][case]  # stored (D, H, W)
    depth = image.shape[0]
    assert out["image"].shape == out["label"].shape == (1, 8, 8, depth)
    np.testing.assert_array_equal(out["image"][0].numpy(), image.transpose(1, 2, 0))
    np.testing.assert_array_equal(out["label"][0].numpy(), label.transpose(1, 2, 0))
    meta = out["image"].meta
    np.testing.assert_array_equal(np.asarray(meta["affine"]), np.eye(4))
    np.testing.assert_array_equal(meta["spatial_shape"], (8, 8, depth))
    assert meta["spacing_known"] is False
    first = item["image"][0] if split == "training" else item["image"]
    assert meta["filename_or_obj"] == first


def test_npz_single_slice_and_collation(synapse):
    root, written = synapse
    [first, second] = synapse_npz_datalist(root)
    out = _load(NpzSliceStackReader)({"image": first["image"][1], "label": first["label"][1]})
    assert out["image"].shape == (1, 8, 8, 1)
    np.testing.assert_array_equal(out["image"][0, ..., 0].numpy(), written["train"]["case0005"][0][1])
    # volumes of two cases batch together (metadata collates); crop to a common depth first
    items = [_load(NpzSliceStackReader)(d) for d in (first, second)]
    batch = list_data_collate([{k: d[k][..., :2] for k in ("image", "label")} for d in items])
    assert batch["image"].shape == (2, 1, 8, 8, 2)


@pytest.mark.parametrize(
    "reader, name, expected",
    [
        (NpzSliceStackReader(), "a_slice000.npz", True),
        (NpzSliceStackReader(), ["a.npz", "b.npz"], True),
        (NpzSliceStackReader(), ["a.npz", "b.nii.gz"], False),
        (H5VolumeReader(), "case0001.npy.h5", True),
        (H5VolumeReader(), "case0001.hdf5", True),
        (H5VolumeReader(), "case0001.nii.gz", False),
    ],
)
def test_verify_suffix(reader, name, expected):
    assert reader.verify_suffix(name) is expected


@pytest.mark.parametrize("reader_cls", [NpzSliceStackReader, H5VolumeReader])
@pytest.mark.parametrize("key", ["", None])
def test_bad_key(reader_cls, key):
    with pytest.raises(ValueError, match="key must be a non-empty string"):
        reader_cls(key=key)


def _npz_error_case(tmp_path, kind):
    """Write a broken slice file of ``kind``; return the files to read and the key to read."""
    good = tmp_path / "case0005_slice000.npz"
    np.savez(good, image=np.zeros((4, 4), np.float32), label=np.zeros((4, 4), np.float32))
    bad = tmp_path / "case0005_slice001.npz"
    if kind == "garbage":
        bad.write_bytes(b"not a zip archive at all")
    elif kind == "truncated":
        bad.write_bytes(good.read_bytes()[:200])
    elif kind == "npy":
        with open(bad, "wb") as f:
            np.save(f, np.zeros((4, 4)))
    elif kind == "no_label":
        np.savez(bad, image=np.zeros((4, 4), np.float32))
    elif kind == "shape":
        np.savez(bad, image=np.zeros((4, 5), np.float32), label=np.zeros((4, 5), np.float32))
    elif kind == "3d":
        np.savez(bad, image=np.zeros((4, 4, 2), np.float32), label=np.zeros((4, 4, 2), np.float32))
    return [str(good), str(bad)], bad


@pytest.mark.parametrize(
    "kind, key, error, message",
    [
        ("garbage", "image", ValueError, r"cannot read .*slice001.npz as .npz"),
        ("truncated", "image", ValueError, r"cannot read .*slice001.npz as .npz \(BadZipFile"),
        ("npy", "image", ValueError, r"slice001.npz holds a single .npy array, not an .npz archive"),
        ("no_label", "label", ValueError, r"slice001.npz has no array 'label'; it has \['image'\]"),
        ("shape", "image", ValueError, r"different shapes .*slice000.npz has \(4, 4\), .*slice001.npz has \(4, 5\)"),
        ("3d", "image", ValueError, r"slice001.npz: array 'image' must be a 2D slice, got shape \(4, 4, 2\)"),
        ("missing", "image", FileNotFoundError, r"slice file not found: .*slice001.npz"),
    ],
)
def test_npz_errors(tmp_path, kind, key, error, message):
    files, _ = _npz_error_case(tmp_path, kind)
    reader = NpzSliceStackReader(key=key)
    with pytest.raises(error, match=message):
        reader.get_data(reader.read(files))


def test_npz_error_reaches_load_imaged(tmp_path):
    """LoadImage falls back to MONAI's NumpyReader when ``read`` fails; errors from ``get_data`` are not swallowed."""
    files, _ = _npz_error_case(tmp_path, "no_label")
    with pytest.raises(ValueError, match="has no array 'label'; it has"):
        LoadImaged(keys="label", reader=NpzSliceStackReader(key="label"))({"label": files})


def _h5_error_case(tmp_path, kind):
    path = tmp_path / "case0001.npy.h5"
    if kind == "garbage":
        path.write_bytes(b"not hdf5")
    elif kind in ("truncated", "no_label"):
        with h5py.File(path, "w") as f:
            f.create_dataset("image", data=np.zeros((2, 64, 64), np.float32))
        if kind == "truncated":
            path.write_bytes(path.read_bytes()[:3000])
    elif kind == "group":
        with h5py.File(path, "w") as f:
            f.create_group("label")
    elif kind == "2d":
        with h5py.File(path, "w") as f:
            f.create_dataset("label", data=np.zeros((4, 4), np.float32))
    return [str(path)]


@pytest.mark.parametrize(
    "kind, error, message",
    [
        ("garbage", ValueError, r"cannot read .*case0001.npy.h5 as HDF5"),
        ("truncated", ValueError, r"cannot read .*case0001.npy.h5 as HDF5"),
        ("no_label", ValueError, r"case0001.npy.h5 has no dataset 'label'; it has \['image'\]"),
        ("group", ValueError, r"case0001.npy.h5: 'label' is an HDF5 group, not a dataset"),
        ("2d", ValueError, r"case0001.npy.h5: dataset 'label' must be a 3D \(D, H, W\) volume, got shape \(4, 4\)"),
        ("missing", FileNotFoundError, r"volume file not found: .*case0001.npy.h5"),
    ],
)
def test_h5_errors(tmp_path, kind, error, message):
    files = _h5_error_case(tmp_path, kind)
    reader = H5VolumeReader(key="label")
    with pytest.raises(error, match=message):
        reader.get_data(reader.read(files))


def test_h5_reads_one_file(tmp_path):
    reader = H5VolumeReader()
    with pytest.raises(ValueError, match="reads one volume per file, got 2 files"):
        reader.get_data(reader.read([tmp_path / "a.h5", tmp_path / "b.h5"]))


# --- DICOM series on their own grid ---------------------------------------------------------------------------------


def _series(tmp_path, numbering):
    """A 5-slice series, slice k filled with 10 k, InstanceNumbers as scanners may give them (the positions ascend
    along the normal with k); returns the folder and the volume ``(slices, rows, columns)``."""
    import pydicom

    volume = np.stack([np.full((3, 2), 10 * k, dtype=np.int16) for k in range(5)])
    volume[:, 0, 1] += 1  # in-plane orientation shows too
    files = write_dicom_series(tmp_path / "series", volume, spacing=(0.7, 0.8, 2.5), origin=(-100.0, -120.0, 50.0))
    numbers = {"as written": [1, 2, 3, 4, 5], "head first": [5, 4, 3, 2, 1], "shuffled": [3, 1, 5, 2, 4]}[numbering]
    for file, number in zip(files, numbers, strict=True):
        dataset = pydicom.dcmread(file)
        dataset.InstanceNumber = number
        dataset.save_as(file)
    return tmp_path / "series", volume


def _sitk_grid(folder):
    """The series as a DICOM reader (GDCM through SimpleITK) orders it: ``(columns, rows, slices)`` and a RAS affine."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    series = reader.Execute()
    lps = np.eye(4)
    lps[:3, :3] = np.array(series.GetDirection()).reshape(3, 3) @ np.diag(series.GetSpacing())
    lps[:3, 3] = series.GetOrigin()
    return sitk.GetArrayFromImage(series).transpose(2, 1, 0), np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


@pytest.mark.parametrize("numbering", ["as written", "head first", "shuffled"])
def test_dicom_series_is_stacked_by_position_along_the_slice_normal(tmp_path, numbering):
    from monai.transforms import LoadImage

    from mskd.data.readers import DicomSeriesReader

    folder, volume = _series(tmp_path, numbering)
    image = LoadImage(image_only=True, reader=DicomSeriesReader())(str(folder))
    np.testing.assert_array_equal(np.asarray(image), volume.transpose(2, 1, 0))  # index k is slice k
    affine = np.asarray(image.affine)
    np.testing.assert_allclose(affine @ [0, 0, 0, 1], [100.0, 120.0, 50.0, 1.0], atol=1e-4)  # first slice, in RAS
    np.testing.assert_allclose(affine[:3, :3], np.diag([-0.7, -0.8, 2.5]), atol=1e-4)
    expected, grid = _sitk_grid(folder)
    np.testing.assert_array_equal(np.asarray(image), expected)
    np.testing.assert_allclose(affine, grid, atol=1e-4)


def test_a_prediction_is_written_on_the_series_own_grid(tmp_path):
    """inference.json's path: load (reoriented to RAS), predict, undo the reorientation, save: the label map's index
    k is slice k, and its affine maps index (0, 0, 0) to the first slice's ImagePositionPatient."""
    import nibabel as nib
    from monai.transforms import Invertd, Orientationd, SaveImaged

    from mskd.data.readers import DicomSeriesReader
    from mskd.data.transforms import RAS_LABELS

    folder, volume = _series(tmp_path, "head first")
    load = Compose(
        [
            LoadImaged("image", reader=DicomSeriesReader(), image_only=True),
            EnsureChannelFirstd("image"),
            Orientationd("image", axcodes="RAS", labels=RAS_LABELS),
        ]
    )
    case = load({"image": str(folder)})
    case["pred"] = case["image"].clone()  # a "prediction" that is the slice's value
    case = Invertd("pred", transform=load, orig_keys="image", nearest_interp=True)(case)
    SaveImaged(
        "pred", output_dir=tmp_path / "out", output_postfix="seg", writer="mskd.data.AtomicNibabelWriter",
        resample=False, separate_folder=False, print_log=False,
    )(case)  # fmt: skip
    seg = nib.load(tmp_path / "out" / "series_seg.nii.gz")
    expected, grid = _sitk_grid(folder)
    np.testing.assert_array_equal(np.asarray(seg.dataobj), expected)
    np.testing.assert_allclose(seg.affine, grid, atol=1e-4)
    np.testing.assert_allclose(seg.affine @ [0, 0, 0, 1], [100.0, 120.0, 50.0, 1.0], atol=1e-4)
