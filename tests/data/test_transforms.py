"""Format-aware loading (LoadCased), the protocol's CT windows, the dataset caches and the bundle's train pipeline."""

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.bundle import ConfigParser
from monai.data import CacheDataset, PersistentDataset
from monai.transforms import Compose, ScaleIntensityd

from mskd.data import BTCV_TO_SYNAPSE, LoadCased, cached_dataset, get_datalist, intensity_window
from tests.data.fixtures import write_btcv, write_dicom_series, write_kits19, write_synapse_npz

CONFIGS = Path(__file__).resolve().parents[2] / "bundles" / "mskd_synapse" / "configs"
LUT = np.array([BTCV_TO_SYNAPSE[k] for k in range(14)], dtype=np.uint8)


def _axcodes(tensor) -> tuple[str, ...]:
    return nib.aff2axcodes(np.asarray(tensor.affine))


def test_synapse_npz_slices_are_stacked_into_one_volume(tmp_path):
    stored = write_synapse_npz(tmp_path, train_cases={"0005": 3}, test_cases={"0001": 2}, size=8)
    item = get_datalist("synapse_npz", tmp_path, "training")[0]
    case = LoadCased(["image", "label"], "synapse_npz")(item)
    image, label = stored["train"]["case0005"]
    assert case["image"].shape == case["label"].shape == (1, 8, 8, 3)  # slice axis last
    np.testing.assert_array_equal(case["image"][0].numpy(), image.transpose(1, 2, 0))
    np.testing.assert_array_equal(case["label"][0].numpy(), label.transpose(1, 2, 0))
    test = LoadCased(["image", "label"], "synapse_npz")(get_datalist("synapse_npz", tmp_path, "test")[0])
    np.testing.assert_array_equal(test["label"][0].numpy(), stored["test"]["case0001"][1].transpose(1, 2, 0))


def test_btcv_is_reoriented_to_ras_and_remapped_to_the_synapse_organs(tmp_path):
    stored = write_btcv(tmp_path, cases=(1,), shape=(8, 6, 4))
    case = LoadCased(["image", "label"], "btcv")(get_datalist("btcv", tmp_path, "test")[0])
    image, label = stored["case0001"]
    assert _axcodes(case["image"]) == _axcodes(case["label"]) == ("R", "A", "S")
    # the fixture's affine runs towards L and P: RAS flips the first two axes
    np.testing.assert_array_equal(case["image"][0].numpy(), image[::-1, ::-1, :])
    np.testing.assert_array_equal(case["label"][0].numpy(), LUT[label][::-1, ::-1, :])
    assert set(np.unique(case["label"].numpy())) <= set(range(9))


def test_kits19_slice_first_volumes_end_with_the_slice_axis_last(tmp_path):
    stored = write_kits19(tmp_path, cases=(1,), shape=(4, 8, 6))
    case = LoadCased(["image", "label"], "kits19")(get_datalist("kits19", tmp_path, "training")[0])
    image, label = stored["case_00001"]
    assert case["image"].shape == (1, 6, 8, 4)
    assert _axcodes(case["image"]) == ("R", "A", "S")
    np.testing.assert_array_equal(case["label"][0].numpy(), label.transpose(2, 1, 0)[::-1, ::-1, ::-1])
    np.testing.assert_allclose(case["image"].pixdim.numpy(), np.abs(np.diag(np.asarray(case["image"].affine))[:3]))


def test_dicom_series_loads_in_ras_with_its_spacing(tmp_path):
    volume = np.random.default_rng(0).integers(-1000, 1000, (5, 6, 7)).astype(np.int16)  # (slices, rows, columns)
    write_dicom_series(tmp_path / "series", volume, spacing=(0.7, 0.8, 2.5))
    case = LoadCased(["image"], "dicom")(get_datalist("dicom", tmp_path / "series")[0])
    assert _axcodes(case["image"]) == ("R", "A", "S")
    np.testing.assert_allclose(case["image"].pixdim.numpy(), [0.7, 0.8, 2.5], rtol=1e-5)
    # same voxels as SimpleITK reads them (LPS, (slices, rows, columns)), reordered to RAS (x, y, z)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "series")))
    lps = sitk.GetArrayFromImage(reader.Execute()).transpose(2, 1, 0)
    np.testing.assert_array_equal(case["image"][0].numpy(), lps[::-1, ::-1, :])


def test_unknown_format_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="synapse_npz"):
        LoadCased("image", "analyze")


@pytest.mark.parametrize(
    "data_format, task, window",
    [("msd", "synapse", [-125.0, 275.0]), ("btcv", "synapse", [-125.0, 275.0]), ("kits19", "kits", [-200.0, 300.0])]
    + [("synapse_npz", "synapse", [0.0, 1.0]), ("dicom", "kits", [-200.0, 300.0])],
)
def test_intensity_window_per_protocol(data_format, task, window):
    assert intensity_window(data_format, task) == window


def test_intensity_window_refuses_an_unknown_task():
    with pytest.raises(ValueError, match="liver"):
        intensity_window("msd", "liver")


def test_memory_and_disk_caches_run_the_deterministic_head_once(tmp_path):
    write_synapse_npz(tmp_path / "data", train_cases={"0005": 2, "0006": 2}, test_cases={}, size=8)
    data = get_datalist("synapse_npz", tmp_path / "data", "training")
    # nested as in the bundles' pipelines, where LoadCased is the first item of a Compose
    transform = Compose([LoadCased(["image", "label"], "synapse_npz"), ScaleIntensityd("image")])
    memory = cached_dataset(data, transform)
    assert isinstance(memory, CacheDataset) and memory[1]["image"].shape == (1, 8, 8, 2)
    disk = cached_dataset(data, transform, cache="disk", cache_dir=tmp_path / "cache")
    assert isinstance(disk, PersistentDataset)
    torch.testing.assert_close(disk[0]["image"], memory[0]["image"])
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1  # written on first access, read back afterwards
    # the caches hold the preprocessed volumes (a nested Compose counts as random for MONAI's caches unless
    # flattened): with the files gone, both datasets still serve the cases they have cached
    expected = memory[0]["image"].clone()
    shutil.rmtree(tmp_path / "data")
    torch.testing.assert_close(memory[0]["image"], expected)
    torch.testing.assert_close(disk[0]["image"], expected)
    with pytest.raises(ValueError, match="cache_dir"):
        cached_dataset(data, transform, cache="disk")


def _bundle_parser(dataset_dir: Path, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train_teacher.json"))
    parser.update({"dataset_dir": str(dataset_dir), "bundle_root": str(dataset_dir.parent), **overrides})
    return parser


def test_bundle_training_pipeline_samples_axial_slices_of_cached_volumes(tmp_path):
    stored = write_synapse_npz(tmp_path / "data", train_cases={"0005": 4}, test_cases={}, size=16)
    parser = _bundle_parser(tmp_path / "data", data_format="synapse_npz", image_size=16, augment=False)
    parser.update({"slices_per_volume": 3})
    transform = parser.get_parsed_content("train#preprocessing")
    item = get_datalist("synapse_npz", tmp_path / "data", "training")[0]
    samples = transform(item)
    image, label = stored["train"]["case0005"]
    assert len(samples) == 3
    for sample in samples:
        assert sample["image"].shape == sample["label"].shape == (1, 16, 16)
        # each sample is one whole slice of the volume (the window is the identity for pre-windowed npz)
        k = next(k for k in range(4) if np.array_equal(sample["label"][0].numpy(), label[k]))
        np.testing.assert_allclose(sample["image"][0].numpy(), image[k], atol=1e-6)


def test_bundle_augmentation_is_transunet_style_and_switchable(tmp_path):
    write_synapse_npz(tmp_path / "data", train_cases={"0005": 2}, test_cases={}, size=16)

    def pipeline(**overrides) -> list[str]:
        parser = _bundle_parser(tmp_path / "data", data_format="synapse_npz", image_size=16, **overrides)
        return [type(t).__name__ for t in parser.get_parsed_content("train#preprocessing").transforms]

    augmentation = ["RandRotate90d", "RandFlipd", "RandRotated"]
    assert pipeline()[-3:] == augmentation
    for switch in (False, "false"):  # the command line passes "--augment false" as a string
        assert not set(augmentation) & set(pipeline(augment=switch))
    with pytest.raises(RuntimeError) as raised:  # a typo is refused, not read as true
        pipeline(augment="ture")
    assert "augment must be true or false, got 'ture'" in str(raised.value.__cause__)


def test_label_map_equals_softmax_then_argmax_and_keeps_the_metadata():
    from monai.data import MetaTensor
    from monai.transforms import Activationsd, AsDiscreted, Compose

    from mskd.data import LabelMapd

    torch.manual_seed(0)
    scores = MetaTensor(torch.randn(9, 6, 5, 4), affine=torch.diag(torch.tensor([0.8, 0.8, 2.5, 1.0])))
    scores[:, 0, 0, 0] = torch.tensor([0.0, 2.0, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0])  # a tie: the first class wins
    reference = Compose([Activationsd("pred", softmax=True), AsDiscreted("pred", argmax=True)])({"pred": scores})
    labels = LabelMapd("pred")({"pred": scores})["pred"]
    assert labels.shape == (1, 6, 5, 4) and labels.dtype == torch.float32
    assert torch.equal(labels.as_tensor(), reference["pred"].as_tensor()) and labels[0, 0, 0, 0] == 1
    assert torch.equal(labels.affine, scores.affine)
