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
    FOV_XY_MM,
    FOV_Z_MM,
    KITS_LABELS,
    SYNAPSE_LABELS,
    TASK_LABELS,
    _draw_fov,
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
    """fov_jitter=0 gives the fixed 400 x 400 x 240 mm geometry of phantom v1."""
    _, _, affine = make_phantom_case(0, size=size, fov_jitter=0.0)
    assert affine.shape == (4, 4) and affine.dtype == np.float64
    assert np.array_equal(affine, phantom_affine(size))
    assert np.array_equal(affine, phantom_affine(size, (400.0, 400.0, 240.0)))
    assert nib.aff2axcodes(affine) == ("R", "A", "S")
    spacing = np.diag(affine)[:3]
    assert np.all(spacing > 0)
    assert np.allclose(affine[:3, :3], np.diag(spacing))
    np.testing.assert_allclose(spacing * np.array(size), (400.0, 400.0, 240.0))
    centre = nib.affines.apply_affine(affine, (np.array(size) - 1) / 2.0)
    np.testing.assert_allclose(centre, 0.0, atol=1e-9)


@pytest.mark.parametrize(
    "size, fov, spacing",
    [
        ((40, 40, 20), (400.0, 400.0, 240.0), (10.0, 10.0, 12.0)),
        ((100, 50, 16), (340.0, 460.0, 208.0), (3.4, 9.2, 13.0)),
        ([64, 64, 32], np.array([320.0, 320.0, 160.0]), (5.0, 5.0, 5.0)),
    ],
)
def test_phantom_affine_fov(size: tuple, fov: tuple, spacing: tuple) -> None:
    affine = phantom_affine(size, fov)
    np.testing.assert_allclose(np.diag(affine), (*spacing, 1.0))
    np.testing.assert_allclose(affine[:3, 3], -(np.array(size) - 1) / 2.0 * np.array(spacing))
    assert nib.aff2axcodes(affine) == ("R", "A", "S")


@pytest.mark.parametrize("fov_jitter", [0.15, 0.4])
def test_fov_jitter_draws_per_case_spacing(fov_jitter: float) -> None:
    """Each case gets its own field of view within the jitter range; the affine records it, centred and RAS."""
    fovs = []
    for seed in range(6):
        _, _, affine = make_phantom_case([1, seed], size=SMALL, fov_jitter=fov_jitter)
        spacing = np.diag(affine)[:3]
        fov = spacing * np.array(SMALL)
        assert fov[0] == pytest.approx(fov[1]), "the in-plane field of view is square"
        assert FOV_XY_MM * (1 - fov_jitter) <= fov[0] <= FOV_XY_MM * (1 + fov_jitter)
        assert FOV_Z_MM * (1 - fov_jitter) <= fov[2] <= FOV_Z_MM * (1 + fov_jitter)
        np.testing.assert_array_equal(affine, phantom_affine(SMALL, fov))
        fovs.append(fov)
    fovs = np.array(fovs)
    assert len(np.unique(fovs[:, 0])) == 6 and len(np.unique(fovs[:, 2])) == 6
    assert np.ptp(fovs[:, 0]) > 0.2 * FOV_XY_MM * fov_jitter, "the draws should spread over the range"


def test_fov_draw_never_shifts_the_stream() -> None:
    """The field-of-view draw consumes the same generator stream whatever fov_jitter, 0 included."""
    after = []
    for fov_jitter in (0.0, 0.15, 0.5):
        rng = np.random.default_rng([4, 2])
        fov = _draw_fov(rng, fov_jitter)
        if fov_jitter == 0.0:
            np.testing.assert_array_equal(fov, (FOV_XY_MM, FOV_XY_MM, FOV_Z_MM))
        after.append(rng.random(4))
    np.testing.assert_array_equal(after[0], after[1])
    np.testing.assert_array_equal(after[0], after[2])


def test_organ_volumes_are_physical_whatever_the_spacing() -> None:
    """Anatomy is placed in mm: organ volumes (mL) stay adult-like for coarse and fine grids and any field of view."""
    ranges = {"liver": (900, 2500), "spleen": (60, 450), "right_kidney": (70, 300), "left_kidney": (70, 300)}
    livers = []
    for size, fov_jitter in ((SMALL, 0.0), (SMALL, 0.5), ((64, 64, 40), 0.15)):
        for seed in range(3):
            _, label, affine = make_phantom_case([seed, 1], size=size, fov_jitter=fov_jitter)
            voxel_ml = float(np.prod(np.diag(affine)[:3])) / 1000.0
            for organ, (lo, hi) in ranges.items():
                volume = float((label == SYNAPSE_IDS[organ]).sum()) * voxel_ml
                assert lo <= volume <= hi, (
                    f"{organ} {volume:.0f} mL (size {size}, fov_jitter {fov_jitter}, seed {seed})"
                )
                if organ == "liver":
                    livers.append(volume)
    # the same anatomy on a 2x coarser / finer grid: volumes agree within partial-volume error
    assert np.ptp(livers) < 0.6 * np.mean(livers)


def _world_grid(affine: np.ndarray, shape: tuple[int, int, int]) -> list[np.ndarray]:
    return [affine[i, 3] + affine[i, i] * np.arange(shape[i]) for i in range(3)]


@pytest.mark.parametrize("size, fov_jitter", [(SMALL, 0.0), (LARGE, 0.15), ((64, 64, 40), 0.3)])
def test_ribs_in_superior_slices_only(size: tuple[int, int, int], fov_jitter: float) -> None:
    """Ribs: bone-bright voxels well lateral / anterior of the vertebra, only in the upper part, and unlabelled.

    No soft tissue reaches 250 HU (liver ~60 HU plus texture and noise); partial volume dims thin ribs at coarse
    spacings, hence the threshold. The vertebra stays within 26 mm of the midline and behind y = 40 mm even after
    the random shifts and deformation.
    """
    for seed in range(2):
        image, label, affine = make_phantom_case([seed, 3], size=size, fov_jitter=fov_jitter)
        x, y, z = _world_grid(affine, size)
        off_spine = (np.abs(x)[:, None, None] > 60.0) | (y[None, :, None] > 40.0)
        bright = (image > 250) & off_spine
        superior = bright & (z[None, None, :] > 30.0)
        assert superior.sum() >= 3, f"seed {seed}: no ribs above z = 30 mm"
        assert not (bright & (z[None, None, :] < -70.0)).any(), f"seed {seed}: bone-bright voxels low in the abdomen"
        # ribs carry label 0; only the odd organ voxel next to a rib is brightened (< 320 HU) by the partial-volume blur
        assert (label[bright] > 0).mean() < 0.05
        assert not label[(image > 400) & off_spine].any()
        if size == LARGE:
            assert (superior & (x[:, None, None] > 0)).any() and (superior & (x[:, None, None] < 0)).any()
            assert image[superior].max() >= 400, "rib cortex is bone-bright"


def test_hu_range_and_background() -> None:
    image, label, _ = make_phantom_case(4, size=SMALL)
    assert image.min() >= -1024 and image.max() <= 3071
    corner = image[:3, :3, :]
    assert np.median(corner) < -900, "outside the body must be air"
    assert image.max() > 300, "the spine must be visible as bone"
    stomach = image[label == 6]
    assert stomach.min() < -300, "the stomach must contain an air pocket (partial volume at 8 mm voxels)"


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
    def gap(image: np.ndarray, label: np.ndarray) -> float:
        """Liver minus spleen median HU, two voxels away from organ borders (partial volume)."""
        liver, spleen = (ndimage.binary_erosion(label == idx, iterations=2) for idx in (5, 1))
        return float(np.median(image[liver]) - np.median(image[spleen]))

    # base gap 5 HU / difficulty: 10 HU when easy, 2.5 HU when hard (same per-case offsets: same seed); the mean over
    # three seeds keeps the noise of the hard cases (40 HU) and organ-shape effects well below the 7.5 HU expected
    gaps, liver_std = {0.5: [], 2.0: []}, {0.5: [], 2.0: []}
    for seed in (10, 11, 12):
        for difficulty in gaps:
            image, label, _ = make_phantom_case(seed, size=(80, 80, 40), difficulty=difficulty)
            gaps[difficulty].append(gap(image, label))
            liver_std[difficulty].append(float(np.std(image[label == 5])))
    assert np.mean(gaps[0.5]) > np.mean(gaps[2.0]) + 4.0, gaps
    assert min(liver_std[2.0]) > max(liver_std[0.5]), liver_std


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


@pytest.mark.parametrize("fov_jitter", [0.0, 0.15])
def test_kits_shares_synapse_image(fov_jitter: float) -> None:
    """Same entropy: same field of view, and the same image except next to the tumours (drawn last, then blurred)."""
    seen_tumour = seen_none = False
    for seed in range(20):  # (1/3)^2: a case without tumours every ninth case on average
        if seen_tumour and seen_none:
            break
        kits_img, kits, kits_aff = make_phantom_case([seed, 4], task="kits", size=SMALL, fov_jitter=fov_jitter)
        syn_img, synapse, syn_aff = make_phantom_case([seed, 4], task="synapse", size=SMALL, fov_jitter=fov_jitter)
        np.testing.assert_array_equal(kits_aff, syn_aff)
        tumour = kits == 2
        np.testing.assert_array_equal(kits == 1, np.isin(synapse, [2, 3]) & ~tumour)
        near = ndimage.binary_dilation(tumour, np.ones((3, 3, 3)), iterations=2)  # the blur reaches 2 voxels
        np.testing.assert_array_equal(kits_img[~near], syn_img[~near])
        seen_tumour |= bool(tumour.any())
        seen_none |= not tumour.any()
    assert seen_tumour and seen_none


# ----------------------------------------------------------------------------------------------------------------------
# on-disk dataset
# ----------------------------------------------------------------------------------------------------------------------
def test_dataset_json(dataset: Path) -> None:
    meta = json.loads(dataset.read_text())
    assert dataset.name == "dataset.json"
    assert meta["tensorImageSize"] == "3D" and meta["modality"] == {"0": "CT"}
    assert meta["labels"] == {str(k): v for k, v in SYNAPSE_LABELS.items()}
    assert "synthetic" in meta["description"].lower() and "seed=7" in meta["description"]
    assert "340-460 mm" in meta["description"] and "204-276 mm" in meta["description"]
    assert "fov_jitter=0.15" in meta["description"]
    assert meta["numTraining"] == 3 and meta["numTest"] == 1
    root = dataset.parent
    for key, count in (("training", meta["numTraining"]), ("test", meta["numTest"])):
        items = load_decathlon_datalist(str(dataset), is_segmentation=True, data_list_key=key)
        assert len(items) == count == len(meta[key])
        for item in items:
            assert Path(item["image"]).is_file() and Path(item["label"]).is_file()
            assert Path(item["image"]).parent == root / "imagesTr"
            assert Path(item["label"]).parent == root / "labelsTr"


def test_dataset_json_fixed_geometry(tmp_path: Path) -> None:
    path = generate_phantom_dataset(tmp_path, cases=2, seed=1, size=(40, 40, 20), test_cases=0, fov_jitter=0)
    meta = json.loads(path.read_text())
    assert "spacing_mm=[10.0, 10.0, 12.0]" in meta["description"]
    for item in meta["training"]:
        zooms = nib.load(tmp_path / item["image"]).header.get_zooms()
        np.testing.assert_allclose(zooms, (10.0, 10.0, 12.0))


def test_round_trip_nibabel_and_monai(dataset: Path) -> None:
    root = dataset.parent
    zooms = {nib.load(p).header.get_zooms() for p in (root / "imagesTr").iterdir()}
    assert len(zooms) == 4, "each case has its own spacing (fov_jitter defaults to 0.15)"
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

    def fake_case(rng: np.random.Generator, task: str, size: tuple, difficulty: float, fov_jitter: float) -> tuple:
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
        ({"fov_jitter": -0.1}, "-0.1"),
        ({"fov_jitter": 0.75}, "0.75"),
        ({"fov_jitter": float("nan")}, "nan"),
        ({"fov_jitter": "0.1"}, "'0.1'"),
        ({"fov_jitter": True}, "True"),
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
        ({"fov_jitter": 0.51}, "0.51"),
        ({"fov_jitter": None}, "None"),
    ],
)
def test_generate_phantom_dataset_rejects(tmp_path: Path, kwargs: dict, bad: str) -> None:
    with pytest.raises(ValueError) as err:
        generate_phantom_dataset(tmp_path / "out", **kwargs)
    assert bad in str(err.value)
    assert not (tmp_path / "out").exists(), "nothing may be written for invalid arguments"


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        ({"size": (8, 32, 32)}, "(8, 32, 32)"),
        ({"fov_mm": (400.0, 400.0)}, "(400.0, 400.0)"),
        ({"fov_mm": (400.0, 0.0, 240.0)}, "(400.0, 0.0, 240.0)"),
        ({"fov_mm": (400.0, float("inf"), 240.0)}, "inf"),
        ({"fov_mm": "wide"}, "'wide'"),
    ],
)
def test_phantom_affine_rejects(kwargs: dict, bad: str) -> None:
    kwargs = {"size": (32, 32, 32), **kwargs}
    with pytest.raises(ValueError) as err:
        phantom_affine(**kwargs)
    assert bad in str(err.value)
