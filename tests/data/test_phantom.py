"""Tests for the synthetic abdominal CT phantom (mskd.data.phantom)."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.data import load_decathlon_datalist
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd
from scipy import ndimage

from mskd.data.phantom import (
    KITS_LABELS,
    SYNAPSE_LABELS,
    TASK_LABELS,
    generate_phantom_dataset,
    make_phantom_case,
    phantom_affine,
)

SMALL = (48, 48, 24)
LARGE = (96, 96, 48)
REAL_BTCV_SEG = Path("/work/shared/data/real/totalsegmentator/ct_3mm/example_ct_seg_btcv13.nii.gz")

# organ name -> label id, for the laterality helper
SYNAPSE_IDS = {name: idx for idx, name in SYNAPSE_LABELS.items() if idx}
BTCV_IDS = {"spleen": 1, "right_kidney": 2, "left_kidney": 3, "liver": 6, "stomach": 7, "aorta": 8}


def centroids_world(label: np.ndarray, affine: np.ndarray, ids: dict[str, int]) -> dict[str, np.ndarray]:
    """World (RAS mm) centroid of each named label."""
    out = {}
    for name, idx in ids.items():
        voxels = np.argwhere(label == idx)
        assert len(voxels), f"label {name} ({idx}) is empty"
        out[name] = nib.affines.apply_affine(affine, voxels.mean(axis=0))
    return out


def assert_abdominal_laterality(label: np.ndarray, affine: np.ndarray, ids: dict[str, int]) -> None:
    """Anatomical sanity in RAS+ world coordinates (+x = patient right, +y = anterior); used on phantom and real CT."""
    c = centroids_world(label, affine, ids)
    assert nib.aff2axcodes(affine) == ("R", "A", "S")
    assert c["liver"][0] > c["spleen"][0], "liver must lie on the patient's right (+x) of the spleen"
    assert c["right_kidney"][0] > c["left_kidney"][0], "right kidney must be at larger x than the left one"
    midline = 0.5 * (c["right_kidney"][0] + c["left_kidney"][0])
    assert c["liver"][0] > midline > c["spleen"][0]
    assert c["left_kidney"][0] < c["aorta"][0] < c["right_kidney"][0]
    assert abs(c["aorta"][0] - midline) < 40.0, "aorta must be near the midline"
    for kidney in ("right_kidney", "left_kidney"):
        assert c[kidney][1] < c["stomach"][1], "kidneys must be posterior (lower y) to the stomach"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phantom")
    return generate_phantom_dataset(out, task="synapse", cases=4, seed=7, size=SMALL)


# ----------------------------------------------------------------------------------------------------------------------
# determinism
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", ["synapse", "kits"])
def test_case_is_deterministic(task: str) -> None:
    first = make_phantom_case([5, 2], task=task, size=SMALL)
    second = make_phantom_case([5, 2], task=task, size=SMALL)
    for a, b in zip(first, second, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()


def test_different_seeds_differ() -> None:
    img_a, lab_a, _ = make_phantom_case(0, size=SMALL)
    img_b, lab_b, _ = make_phantom_case(1, size=SMALL)
    assert not np.array_equal(img_a, img_b)
    assert not np.array_equal(lab_a, lab_b)


def test_dataset_prefix_is_stable(tmp_path: Path) -> None:
    """Generating N+1 cases leaves the first N unchanged, and case i equals make_phantom_case([seed, i])."""
    generate_phantom_dataset(tmp_path / "a", cases=2, seed=3, size=SMALL, test_cases=1)
    generate_phantom_dataset(tmp_path / "b", cases=3, seed=3, size=SMALL, test_cases=1)
    for i in range(2):
        name = f"synapse_phantom_{i:04d}.nii.gz"
        for sub in ("imagesTr", "labelsTr"):
            a = np.asarray(nib.load(tmp_path / "a" / sub / name).dataobj)
            b = np.asarray(nib.load(tmp_path / "b" / sub / name).dataobj)
            assert a.tobytes() == b.tobytes()
        image, label, _ = make_phantom_case([3, i], size=SMALL)
        assert np.array_equal(np.asarray(nib.load(tmp_path / "a" / "imagesTr" / name).dataobj), image)
        assert np.array_equal(np.asarray(nib.load(tmp_path / "a" / "labelsTr" / name).dataobj), label)


# ----------------------------------------------------------------------------------------------------------------------
# labels, geometry, anatomy
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "size, seeds",
    [
        (SMALL, [[0, 0], [0, 1], [0, 2], [1, 0], 11]),
        (LARGE, [[0, 0], [2, 5]]),
    ],
)
def test_synapse_every_organ_present(size: tuple[int, int, int], seeds: list) -> None:
    for seed in seeds:
        image, label, affine = make_phantom_case(seed, task="synapse", size=size)
        assert image.shape == label.shape == size
        assert image.dtype == np.int16 and label.dtype == np.uint8
        assert set(np.unique(label).tolist()) == set(SYNAPSE_LABELS), f"seed {seed}: missing organs"
        assert_abdominal_laterality(label, affine, SYNAPSE_IDS)


@pytest.mark.parametrize("size", [SMALL, (64, 80, 32), LARGE])
def test_affine_is_ras_and_centred(size: tuple[int, int, int]) -> None:
    _, _, affine = make_phantom_case(0, size=size)
    assert affine.shape == (4, 4) and affine.dtype == np.float64
    assert np.array_equal(affine, phantom_affine(size))
    assert nib.aff2axcodes(affine) == ("R", "A", "S")
    spacing = np.diag(affine)[:3]
    assert np.all(spacing > 0)
    assert np.allclose(affine[:3, :3], np.diag(spacing))
    np.testing.assert_allclose(spacing[:2] * np.array(size[:2]), 400.0)
    assert 200.0 <= spacing[2] * size[2] <= 250.0
    centre = nib.affines.apply_affine(affine, (np.array(size) - 1) / 2.0)
    np.testing.assert_allclose(centre, 0.0, atol=1e-9)


def test_hu_range_and_background() -> None:
    image, label, _ = make_phantom_case(4, size=SMALL)
    assert image.min() >= -1024 and image.max() <= 3071
    corner = image[:3, :3, :]
    assert np.median(corner) < -900, "outside the body must be air"
    assert image.max() > 300, "the spine must be visible as bone"
    stomach = image[label == 6]
    assert stomach.min() < -500, "the stomach must contain an air pocket"


def test_real_ct_laterality_matches_convention() -> None:
    """The same helper on a real RAS CT label map (BTCV ids): checks our orientation convention against real data."""
    if not REAL_BTCV_SEG.exists():
        pytest.skip(f"{REAL_BTCV_SEG} not available")
    img = nib.load(REAL_BTCV_SEG)
    label = np.asarray(img.dataobj).astype(np.int16)
    assert_abdominal_laterality(label, img.affine, BTCV_IDS)


def test_liver_spleen_intensity_overlap() -> None:
    for seed in range(3):
        image, label, _ = make_phantom_case(seed, size=SMALL)
        liver = np.percentile(image[label == 5], [5, 95])
        spleen = np.percentile(image[label == 1], [5, 95])
        assert liver[0] < spleen[1] and spleen[0] < liver[1], f"seed {seed}: {liver} vs {spleen}"


def test_difficulty_shrinks_contrast_and_raises_noise() -> None:
    easy_img, easy_lab, _ = make_phantom_case(9, size=LARGE, difficulty=0.5)
    hard_img, hard_lab, _ = make_phantom_case(9, size=LARGE, difficulty=2.0)

    def gap(img: np.ndarray, lab: np.ndarray) -> float:
        """Liver minus spleen median HU, away from organ borders (partial volume)."""
        liver, spleen = (ndimage.binary_erosion(lab == idx) for idx in (5, 1))
        return float(np.median(img[liver]) - np.median(img[spleen]))

    # base gap 5 HU / difficulty: 10 HU when easy, 2.5 HU when hard (same per-case offsets: same seed)
    assert gap(easy_img, easy_lab) > gap(hard_img, hard_lab) + 4.0
    assert np.std(hard_img[hard_lab == 5]) > np.std(easy_img[easy_lab == 5])


# ----------------------------------------------------------------------------------------------------------------------
# kits
# ----------------------------------------------------------------------------------------------------------------------
def test_kits_labels_and_tumours() -> None:
    found_tumour = False
    for seed in range(6):
        image, label, _ = make_phantom_case(seed, task="kits", size=SMALL)
        values = set(np.unique(label).tolist())
        assert values <= set(KITS_LABELS) and 1 in values
        if 2 in values:
            found_tumour = True
            kidney = np.percentile(image[label == 1], [5, 95])
            tumour = np.percentile(image[label == 2], [5, 95])
            assert kidney[0] < tumour[1] and tumour[0] < kidney[1], f"seed {seed}: {kidney} vs {tumour}"
    assert found_tumour, "no tumour in 6 seeds"


def test_kits_shares_synapse_anatomy() -> None:
    """Same seed: kits kidney voxels are synapse kidney voxels (tumours override some of them)."""
    _, kits, _ = make_phantom_case(2, task="kits", size=SMALL)
    _, synapse, _ = make_phantom_case(2, task="synapse", size=SMALL)
    assert np.isin(synapse[kits == 1], [2, 3]).all()
    assert (kits == 1).sum() <= np.isin(synapse, [2, 3]).sum()


# ----------------------------------------------------------------------------------------------------------------------
# on-disk dataset
# ----------------------------------------------------------------------------------------------------------------------
def test_dataset_json(dataset: Path) -> None:
    meta = json.loads(dataset.read_text())
    assert dataset.name == "dataset.json"
    assert meta["tensorImageSize"] == "3D" and meta["modality"] == {"0": "CT"}
    assert meta["labels"] == {str(k): v for k, v in SYNAPSE_LABELS.items()}
    assert "synthetic" in meta["description"].lower() and "seed=7" in meta["description"]
    assert meta["numTraining"] == 3 and meta["numTest"] == 1
    root = dataset.parent
    for key, count in (("training", meta["numTraining"]), ("test", meta["numTest"])):
        items = load_decathlon_datalist(str(dataset), is_segmentation=True, data_list_key=key)
        assert len(items) == count == len(meta[key])
        for item in items:
            assert Path(item["image"]).is_file() and Path(item["label"]).is_file()
            assert Path(item["image"]).parent == root / "imagesTr"
            assert Path(item["label"]).parent == root / "labelsTr"


def test_round_trip_nibabel_and_monai(dataset: Path) -> None:
    root = dataset.parent
    loader = Compose(
        [
            LoadImaged(keys=["image", "label"], image_only=True),
            EnsureChannelFirstd(keys=["image", "label"]),
            Orientationd(keys=["image", "label"], axcodes="RAS"),
        ]
    )
    for i in range(2):
        image, label, affine = make_phantom_case([7, i], size=SMALL)
        name = f"synapse_phantom_{i:04d}.nii.gz"
        paths = {"image": root / "imagesTr" / name, "label": root / "labelsTr" / name}
        for key, expected in (("image", image), ("label", label)):
            img = nib.load(paths[key])
            assert img.header.get_data_dtype() == expected.dtype
            assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
            np.testing.assert_allclose(img.affine, affine, atol=1e-5)
            np.testing.assert_allclose(img.header.get_zooms(), np.diag(affine)[:3], rtol=1e-6)
            assert np.array_equal(np.asarray(img.dataobj), expected)
        data = loader({k: str(v) for k, v in paths.items()})
        for key, expected in (("image", image), ("label", label)):
            tensor = data[key]
            assert tuple(tensor.shape) == (1, *SMALL)
            assert np.array_equal(tensor[0].numpy(), expected.astype(np.float32))
            np.testing.assert_allclose(np.asarray(tensor.affine), affine, atol=1e-4)
            np.testing.assert_allclose(np.asarray(tensor.pixdim), np.diag(affine)[:3], rtol=1e-5)


def test_no_temp_files_left(dataset: Path) -> None:
    root = dataset.parent
    names = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    expected = ["dataset.json"] + [
        f"{sub}/synapse_phantom_{i:04d}.nii.gz" for sub in ("imagesTr", "labelsTr") for i in range(4)
    ]
    assert names == sorted(expected)


def test_kits_dataset_with_progress(tmp_path: Path) -> None:
    path = generate_phantom_dataset(tmp_path, task="kits", cases=2, seed=1, size=SMALL, progress=True, test_cases=0)
    meta = json.loads(path.read_text())
    assert meta["labels"] == {"0": "background", "1": "kidney", "2": "tumour"}
    assert meta["numTraining"] == 2 and meta["numTest"] == 0 and meta["test"] == []
    assert sorted(p.name for p in (tmp_path / "imagesTr").iterdir()) == [
        "kits_phantom_0000.nii.gz",
        "kits_phantom_0001.nii.gz",
    ]


@pytest.mark.parametrize("cases, expected_test", [(1, 0), (2, 1), (4, 1), (8, 2), (12, 3)])
def test_default_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cases: int, expected_test: int) -> None:
    # only the split logic is under test here: replace the case generator with a tiny constant one
    import mskd.data.phantom as phantom

    def fake_case(rng: np.random.Generator, task: str, size: tuple, difficulty: float) -> tuple:
        return np.zeros(size, np.int16), np.zeros(size, np.uint8), phantom_affine(size)

    monkeypatch.setattr(phantom, "_make_case", fake_case)
    meta = json.loads(generate_phantom_dataset(tmp_path, cases=cases, size=(16, 16, 16)).read_text())
    assert meta["numTest"] == expected_test and meta["numTraining"] == cases - expected_test
    assert len(meta["test"]) == expected_test and len(meta["training"]) == cases - expected_test


def test_task_labels_table() -> None:
    assert TASK_LABELS == {"synapse": SYNAPSE_LABELS, "kits": KITS_LABELS}
    assert len(SYNAPSE_LABELS) == 9 and SYNAPSE_LABELS[5] == "liver" and KITS_LABELS[2] == "tumour"


# ----------------------------------------------------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, bad",
    [
        ({"task": "brats"}, "brats"),
        ({"size": (8, 96, 48)}, "(8, 96, 48)"),
        ({"size": (96, 96)}, "(96, 96)"),
        ({"size": (96.0, 96, 48)}, "(96.0, 96, 48)"),
        ({"difficulty": 0.0}, "0.0"),
        ({"difficulty": -1.5}, "-1.5"),
        ({"seed": -3}, "-3"),
    ],
)
def test_make_phantom_case_rejects(kwargs: dict, bad: str) -> None:
    kwargs = {"seed": 0, **kwargs}
    with pytest.raises(ValueError) as err:
        make_phantom_case(**kwargs)
    assert bad in str(err.value)


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        ({"task": "brats"}, "brats"),
        ({"cases": 0}, "0"),
        ({"cases": -2}, "-2"),
        ({"cases": 3, "test_cases": 3}, "3"),
        ({"cases": 3, "test_cases": 5}, "5"),
        ({"cases": 3, "test_cases": -1}, "-1"),
        ({"size": (15, 32, 32)}, "(15, 32, 32)"),
        ({"size": [32, 32, 32, 32]}, "[32, 32, 32, 32]"),
        ({"difficulty": 0}, "0"),
        ({"difficulty": -0.25}, "-0.25"),
        ({"seed": -1}, "-1"),
    ],
)
def test_generate_phantom_dataset_rejects(tmp_path: Path, kwargs: dict, bad: str) -> None:
    with pytest.raises(ValueError) as err:
        generate_phantom_dataset(tmp_path / "out", **kwargs)
    assert bad in str(err.value)
    assert not (tmp_path / "out").exists(), "nothing may be written for invalid arguments"
