import json
from pathlib import Path

import numpy as np
import pytest
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd

from mskd.data.datalist import (
    SYNAPSE_TEST_CASES,
    SYNAPSE_TRAIN_CASES,
    btcv_datalist,
    dicom_datalist,
    get_datalist,
    image_datalist,
    kits19_datalist,
    msd_datalist,
    split_cases,
    synapse_npz_datalist,
)
from tests.data.fixtures import write_btcv, write_dicom_series, write_kits19, write_synapse_npz


def _dataset(tmp_path, content):
    (tmp_path / "dataset.json").write_text(content if isinstance(content, str) else json.dumps(content))
    for folder in ("imagesTr", "labelsTr"):
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / "a.nii.gz").write_bytes(b"")  # the datalist checks that files exist, not what they hold
    return tmp_path


def test_msd_datalist_resolves_paths(tmp_path):
    root = _dataset(tmp_path, {"training": [{"image": "./imagesTr/a.nii.gz", "label": "./labelsTr/a.nii.gz"}]})
    [item] = msd_datalist(root)
    assert item == {"image": str(root / "imagesTr/a.nii.gz"), "label": str(root / "labelsTr/a.nii.gz")}


GOOD = {"image": "imagesTr/a.nii.gz", "label": "labelsTr/a.nii.gz"}


@pytest.mark.parametrize(
    "content, key, error, message",
    [
        (None, "training", FileNotFoundError, "no dataset.json in"),
        ("[1, 2", "training", ValueError, r"dataset.json: not valid JSON \(Expecting"),
        ("[1, 2]", "training", ValueError, r"dataset.json: holds a JSON list, not an object with a 'training' list$"),
        ({"training": []}, "training", ValueError, r"dataset.json: the 'training' list is empty or not a list$"),
        ({"training": GOOD}, "training", ValueError, "the 'training' list is empty or not a list"),
        ({"training": [GOOD]}, "test", ValueError, r"dataset.json: has no 'test' list; it has \['training'\]"),
        (
            {"training": [GOOD, "a.nii.gz"]},
            "training",
            ValueError,
            r"dataset.json: training\[1\] is a str, not an \{'image': ..., 'label': ...\} object$",
        ),
        ({"training": [{"image": GOOD["image"]}]}, "training", ValueError, r"training\[0\] has no 'label' file name$"),
        (
            {"training": [GOOD, {"image": "x.nii", "label": "y.nii"}]},
            "training",
            ValueError,
            r"dataset.json: training\[1\]: image file not found: .*x.nii; "
            r"training\[1\]: label file not found: .*y.nii$",
        ),
    ],
)
def test_msd_datalist_errors(tmp_path, content, key, error, message):
    """Every entry that is not an object naming existing files is named, in one error."""
    if content is not None:
        _dataset(tmp_path, content)
    with pytest.raises(error, match=message):
        msd_datalist(tmp_path, key)


def test_msd_datalist_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset folder not found: .*absent .*mskd phantom"):
        msd_datalist(tmp_path / "absent")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="file is a file, not a dataset folder"):
        msd_datalist(tmp_path / "file")


def test_split_cases_is_reproducible_and_disjoint():
    cases = [{"image": str(i)} for i in range(10)]
    train, val = split_cases(cases, 3, seed=1)
    assert len(train) == 7 and len(val) == 3
    assert {c["image"] for c in train}.isdisjoint({c["image"] for c in val})
    assert (train, val) == split_cases(cases, 3, seed=1)


@pytest.mark.parametrize(
    "num_val, message",
    [
        (0, r"^0 validation case\(s\) of the 4 cases leave 4 to train on; it must be an integer in \[1, 3\]$"),
        (4, r"^4 validation case\(s\) of the 4 cases leave 0 to train on"),
        (-1, r"^-1 validation case\(s\)"),
        ("2", r"^'2' validation case\(s\) of the 4 cases; it must be an integer in \[1, 3\]$"),
    ],
)
def test_split_cases_bad_count(num_val, message):
    with pytest.raises(ValueError, match=message):
        split_cases([{}] * 4, num_val)


def test_image_datalist(tmp_path):
    for name in ("b.nii.gz", "a.nii", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [d["image"] for d in image_datalist(tmp_path)] == [str(tmp_path / "a.nii"), str(tmp_path / "b.nii.gz")]
    assert image_datalist(tmp_path / "a.nii") == [{"image": str(tmp_path / "a.nii")}]
    with pytest.raises(FileNotFoundError, match="no .nii or .nii.gz file"):
        image_datalist(_empty(tmp_path))
    with pytest.raises(FileNotFoundError, match="inference input not found"):
        image_datalist(tmp_path / "missing")


def _empty(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    return d


# --- formats ------------------------------------------------------------------------------------------------------


def _names(paths):
    return [Path(p).name for p in paths]


def test_synapse_split_constants():
    assert len(SYNAPSE_TRAIN_CASES) == 18 and len(SYNAPSE_TEST_CASES) == 12
    assert set(SYNAPSE_TRAIN_CASES).isdisjoint(SYNAPSE_TEST_CASES)
    assert sorted(int(c) for c in SYNAPSE_TRAIN_CASES + SYNAPSE_TEST_CASES) == [*range(1, 11), *range(21, 41)]


def test_synapse_npz_datalist(tmp_path):
    write_synapse_npz(tmp_path, train_cases={"0006": 2, "0005": 3}, test_cases={"0002": 2, "0001": 3})
    train = synapse_npz_datalist(tmp_path)
    assert [d["case"] for d in train] == ["case0005", "case0006"]
    assert _names(train[0]["image"]) == [f"case0005_slice00{k}.npz" for k in range(3)]
    assert train[0]["label"] == train[0]["image"] and train[0]["label"] is not train[0]["image"]
    assert _names(train[1]["image"]) == ["case0006_slice000.npz", "case0006_slice001.npz"]
    test = synapse_npz_datalist(tmp_path, "test")
    assert test == [
        {
            "image": str(tmp_path / "test_vol_h5" / f"case{c}.npy.h5"),
            "label": str(tmp_path / "test_vol_h5" / f"case{c}.npy.h5"),
            "case": f"case{c}",
        }
        for c in ("0001", "0002")
    ]


def test_synapse_npz_slices_sorted_by_number(tmp_path):
    folder = tmp_path / "train_npz"
    folder.mkdir()
    for k in (10, 9, 100):  # sorted as text: 10, 100, 9
        np.savez(folder / f"case0005_slice{k}.npz", image=np.zeros((2, 2)), label=np.zeros((2, 2)))
    with pytest.warns(UserWarning, match=r"slice numbers of \['case0005'\] are not consecutive"):
        [item] = synapse_npz_datalist(tmp_path)
    assert _names(item["image"]) == ["case0005_slice9.npz", "case0005_slice10.npz", "case0005_slice100.npz"]


@pytest.mark.parametrize(
    "train, test, files, split, error, message",
    [
        (None, None, (), "val", ValueError, r"unknown split 'val' for synapse_npz .*\['training', 'test'\]"),
        ({}, None, (), "training", FileNotFoundError, r"Synapse training \(train_npz\) folder not found: .*train_npz"),
        (None, {}, (), "test", FileNotFoundError, r"Synapse test \(test_vol_h5\) folder not found: .*test_vol_h5"),
        ({}, None, ("train_npz/notes.txt",), "training", FileNotFoundError, r"no caseXXXX_sliceYYY.npz file in"),
        (None, {}, ("test_vol_h5/notes.txt",), "test", FileNotFoundError, r"no caseXXXX.npy.h5 file in .*test_vol_h5"),
        (
            None, None, ("train_npz/a.npz", "train_npz/case0005.npz"), "training", ValueError,
            r"train_npz: 2 .npz file\(s\) not named caseXXXX_sliceYYY.npz: \['a.npz', 'case0005.npz'\]",
        ),
        (
            None, None, ("train_npz/case0005_slice0.npz",), "training", ValueError,
            r"files holding the same slice: \['case0005_slice0.npz and case0005_slice000.npz'\]",
        ),
        (None, None, ("test_vol_h5/x.h5",), "test", ValueError, r"1 file\(s\) not named caseXXXX.npy.h5: \['x.h5'\]"),
    ],
)  # fmt: skip
def test_synapse_npz_errors(tmp_path, train, test, files, split, error, message):
    write_synapse_npz(tmp_path, train_cases=train, test_cases=test, size=2)
    for name in files:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(error, match=message):
        synapse_npz_datalist(tmp_path, split)


def test_synapse_npz_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="Synapse dataset folder not found: .*absent"):
        synapse_npz_datalist(tmp_path / "absent")


def _ras_loader():
    return Compose(
        [
            LoadImaged(keys=["image", "label"]),
            EnsureChannelFirstd(keys=["image", "label"]),
            Orientationd(keys=["image", "label"], axcodes="RAS"),
        ]
    )


def test_btcv_datalist_and_read_back(tmp_path):
    written = write_btcv(tmp_path, cases=(8, 1, 5, 2), shape=(8, 6, 4))
    test = btcv_datalist(tmp_path, "test")
    assert test == [
        {
            "image": str(tmp_path / f"img/img{n}.nii.gz"),
            "label": str(tmp_path / f"label/label{n}.nii.gz"),
            "case": f"case{n}",
        }
        for n in ("0001", "0002", "0008")
    ]
    assert [d["case"] for d in btcv_datalist(tmp_path)] == ["case0005"]
    out = _ras_loader()(test[0])
    image, label = written["case0001"]
    assert out["image"].shape == (1, 8, 6, 4)
    # BTCV_AFFINE flips voxel axes x and y (L, P, S); RAS reverses them
    np.testing.assert_array_equal(out["image"][0].numpy(), image[::-1, ::-1, :])
    np.testing.assert_array_equal(out["label"][0].numpy(), label[::-1, ::-1, :])
    np.testing.assert_allclose(np.diag(out["image"].affine.numpy())[:3], [0.8, 0.8, 2.5])


@pytest.mark.parametrize(
    "cases, unlabelled, remove, split, error, message",
    [
        ((1,), (), (), "val", ValueError, r"unknown split 'val' for btcv"),
        ((1, 2), (3, 4), (), "training", ValueError, r"images without label: \['img0003.nii.gz', 'img0004.nii.gz'\]$"),
        (
            (1, 2), (3,), ("img/img0001.nii.gz", "img/img0002.nii.gz"), "training", ValueError,
            r"images without label: \['img0003.nii.gz'\]; "
            r"labels without image: \['label0001.nii.gz', 'label0002.nii.gz'\]",
        ),
        ((1,), (), ("label/label0001.nii.gz", "label"), "training", FileNotFoundError, r"lacks \['label'\]"),
        ((1,), (), ("img/img0001.nii.gz",), "training", FileNotFoundError, r"no imgXXXX.nii.gz file in .*img"),
        ((1, 2), (), (), "training", ValueError, r"no case of split 'training' in"),
        ((5,), (), (), "test", ValueError, r"no case of split 'test' in .*'test' holds cases \['0001'"),
    ],
)  # fmt: skip
def test_btcv_errors(tmp_path, cases, unlabelled, remove, split, error, message):
    write_btcv(tmp_path, cases=cases, unlabelled=unlabelled, shape=(2, 2, 2))
    for name in remove:
        path = tmp_path / name
        path.rmdir() if path.is_dir() else path.unlink()
    with pytest.raises(error, match=message):
        btcv_datalist(tmp_path, split)


def test_btcv_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="BTCV dataset folder not found"):
        btcv_datalist(tmp_path / "absent")


def test_kits19_datalist_and_read_back(tmp_path):
    written = write_kits19(tmp_path, cases=(0, 1, 5, 10, 12), unlabelled=(210,), shape=(4, 8, 6))
    (tmp_path / "kits.json").write_text("{}")  # stray files beside the case folders are ignored
    test = kits19_datalist(tmp_path, "test")
    assert test == [
        {"image": str(tmp_path / c / "imaging.nii.gz"), "label": str(tmp_path / c / "segmentation.nii.gz"), "case": c}
        for c in ("case_00000", "case_00005", "case_00010")
    ]
    assert [d["case"] for d in kits19_datalist(tmp_path)] == ["case_00001", "case_00012"]  # 210 has no label
    out = _ras_loader()(test[1])
    image, label = written["case_00005"]  # stored (slices, rows, columns) = voxel axes towards (I, P, L)
    expected_image = image.transpose(2, 1, 0)[::-1, ::-1, ::-1]  # -> (R, A, S): slice axis last, all reversed
    expected_label = label.transpose(2, 1, 0)[::-1, ::-1, ::-1]
    assert out["image"].shape == (1, 6, 8, 4)
    np.testing.assert_array_equal(out["image"][0].numpy(), expected_image)
    np.testing.assert_array_equal(out["label"][0].numpy(), expected_label)
    np.testing.assert_allclose(np.diag(out["image"].affine.numpy())[:3], [0.78, 0.78, 3.0])


@pytest.mark.parametrize(
    "cases, unlabelled, remove, split, error, message",
    [
        ((0,), (), (), "all", ValueError, r"unknown split 'all' for kits19"),
        ((0, 1), (), ("case_00000/imaging.nii.gz", "case_00001/imaging.nii.gz"), "training", ValueError,
         r"case folder\(s\) without imaging.nii.gz: \['case_00000', 'case_00001'\]"),
        ((), (210,), (), "training", FileNotFoundError, r"no case_XXXXX folder of .* holds segmentation.nii.gz"),
        ((0, 5), (), (), "training", ValueError, r"no labelled case of split 'training'"),
        ((1,), (), (), "test", ValueError, r"no labelled case of split 'test' .*divisible by 5"),
    ],
)  # fmt: skip
def test_kits19_errors(tmp_path, cases, unlabelled, remove, split, error, message):
    write_kits19(tmp_path, cases=cases, unlabelled=unlabelled, shape=(2, 2, 2))
    for name in remove:
        (tmp_path / name).unlink()
    with pytest.raises(error, match=message):
        kits19_datalist(tmp_path, split)


def test_kits19_missing_or_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="KiTS19 dataset folder not found"):
        kits19_datalist(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="no case_XXXXX folder in"):
        kits19_datalist(tmp_path)


DICOM_VOLUME = np.random.default_rng(0).integers(-1000, 1000, (4, 5, 6)).astype(np.int16)  # (slices, rows, columns)


def test_dicom_datalist(tmp_path):
    write_dicom_series(tmp_path / "b_series", DICOM_VOLUME, suffix="")  # no extension: found by the DICOM preamble
    write_dicom_series(tmp_path / "a_series", DICOM_VOLUME, series_uid="1.2.3.4")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not DICOM")
    (tmp_path / "index.txt").write_text("not DICOM")
    assert dicom_datalist(tmp_path) == [
        {"image": str(tmp_path / "a_series"), "case": "a_series"},
        {"image": str(tmp_path / "b_series"), "case": "b_series"},
    ]
    assert dicom_datalist(tmp_path / "a_series") == [{"image": str(tmp_path / "a_series"), "case": "a_series"}]


def test_dicom_read_back_matches_simpleitk(tmp_path):
    import SimpleITK as sitk

    files = write_dicom_series(tmp_path / "s", DICOM_VOLUME, spacing=(0.7, 0.8, 2.5), origin=(-100.0, -120.0, 50.0))
    [item] = dicom_datalist(tmp_path / "s")
    out = Compose([LoadImaged(keys="image", reader="PydicomReader"), EnsureChannelFirstd(keys="image")])(item)
    # PydicomReader gives (columns, rows, slices) = LPS voxel order, with an affine converted to RAS
    assert out["image"].shape == (1, 6, 5, 4)
    np.testing.assert_array_equal(out["image"][0].numpy(), DICOM_VOLUME.transpose(2, 1, 0))
    expected_affine = np.array([[-0.7, 0, 0, 100.0], [0, -0.8, 0, 120.0], [0, 0, 2.5, 50.0], [0, 0, 0, 1]])
    np.testing.assert_allclose(out["image"].affine.numpy(), expected_affine, atol=1e-6)
    # SimpleITK's own reading: same voxels (its array is (slices, rows, columns)), same geometry in LPS
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    ref = reader.Execute()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ref), DICOM_VOLUME)
    np.testing.assert_allclose(ref.GetSpacing(), (0.7, 0.8, 2.5))
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(lps_to_ras @ np.array(ref.GetOrigin()), expected_affine[:3, 3])
    np.testing.assert_allclose(
        lps_to_ras @ np.array(ref.GetDirection()).reshape(3, 3) @ np.diag(ref.GetSpacing()), expected_affine[:3, :3]
    )
    ras = Orientationd(keys="image", axcodes="RAS")(out)["image"]
    np.testing.assert_array_equal(ras[0].numpy(), DICOM_VOLUME.transpose(2, 1, 0)[::-1, ::-1, :])


def test_dicom_errors(tmp_path):
    write_dicom_series(tmp_path / "mixed", DICOM_VOLUME[:2], series_uid="1.2.3.1")
    for k, f in enumerate(write_dicom_series(tmp_path / "other", DICOM_VOLUME[:2], series_uid="1.2.3.2")):
        f.rename(tmp_path / "mixed" / f"other{k}.dcm")
    write_dicom_series(tmp_path / "mixed_too", DICOM_VOLUME[:1], series_uid="1.2.3.3")
    write_dicom_series(tmp_path / "x", DICOM_VOLUME[:1], series_uid="1.2.3.4", suffix=".ima")[0].rename(
        tmp_path / "mixed_too" / "x.ima"
    )
    with pytest.raises(
        ValueError, match=r"mixed holds 2 DICOM series; .*mixed_too holds 2 DICOM series; put one series per folder$"
    ):
        dicom_datalist(tmp_path)
    with pytest.raises(ValueError, match=r"mixed holds 2 DICOM series; put one series per folder"):
        dicom_datalist(tmp_path / "mixed")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.dcm").write_text("not DICOM")
    with pytest.raises(FileNotFoundError, match=r"no DICOM file in .*empty or its sub-folders"):
        dicom_datalist(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=r"DICOM input not found: .*absent"):
        dicom_datalist(tmp_path / "absent")
    with pytest.raises(NotADirectoryError, match=r"a.dcm is a file; give the folder"):
        dicom_datalist(tmp_path / "empty" / "a.dcm")


@pytest.mark.parametrize("data_format", ["msd", "phantom", "synapse_npz", "btcv", "kits19", "dicom", "nifti"])
def test_get_datalist_dispatches(tmp_path, data_format):
    _dataset(tmp_path, {"training": [GOOD]})
    expected = {
        "msd": lambda: msd_datalist(tmp_path),
        "phantom": lambda: msd_datalist(tmp_path),
        "synapse_npz": lambda: (write_synapse_npz(tmp_path, size=2), synapse_npz_datalist(tmp_path, "test"))[1],
        "btcv": lambda: (write_btcv(tmp_path, cases=(1,), shape=(2, 2, 2)), btcv_datalist(tmp_path, "test"))[1],
        "kits19": lambda: (write_kits19(tmp_path, cases=(5,), shape=(2, 2, 2)), kits19_datalist(tmp_path, "test"))[1],
        "dicom": lambda: (write_dicom_series(tmp_path, DICOM_VOLUME[:1]), dicom_datalist(tmp_path))[1],
        "nifti": lambda: ((tmp_path / "a.nii.gz").write_bytes(b""), image_datalist(tmp_path))[1],
    }[data_format]()
    split = "training" if data_format in ("msd", "phantom") else "test"
    assert get_datalist(data_format, tmp_path, split) == expected


def test_get_datalist_unknown_format(tmp_path):
    message = r"unknown data format 'synapse' for .*; choose one of \['msd', 'phantom', 'synapse_npz', 'btcv', 'kits19'"
    with pytest.raises(ValueError, match=message):
        get_datalist("synapse", tmp_path)
