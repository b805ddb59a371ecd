"""End to end on the real abdominal CT sample (3 mm, BTCV-13 label map from model predictions; plumbing only)."""

import csv
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from mskd.data import BTCV_TO_SYNAPSE, LoadCased, get_datalist, organ_names
from mskd.networks import get_network

REAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "real" / "totalsegmentator" / "ct_3mm"
CONFIGS = Path(__file__).resolve().parents[2] / "bundles" / "mskd_synapse" / "configs"
pytestmark = pytest.mark.skipif(not REAL.is_dir(), reason=f"real CT sample not present at {REAL}")


@pytest.fixture(scope="module")
def btcv_layout(tmp_path_factory):
    """The real CT laid out as raw BTCV (img/img0001.nii.gz, label/label0001.nii.gz: case 0001 is a test case)."""
    root = tmp_path_factory.mktemp("btcv")
    (root / "img").mkdir()
    (root / "label").mkdir()
    os.symlink(REAL / "example_ct.nii.gz", root / "img" / "img0001.nii.gz")
    os.symlink(REAL / "example_ct_seg_btcv13.nii.gz", root / "label" / "label0001.nii.gz")
    return root


def test_real_ct_loads_in_ras_at_3mm_with_the_synapse_label_set(btcv_layout):
    original = nib.load(REAL / "example_ct_seg_btcv13.nii.gz")
    btcv = np.asarray(original.dataobj)
    case = LoadCased(["image", "label"], "btcv")(get_datalist("btcv", btcv_layout, "test")[0])
    assert nib.aff2axcodes(np.asarray(case["image"].affine)) == ("R", "A", "S")
    np.testing.assert_allclose(case["image"].pixdim.numpy(), [3.0, 3.0, 3.0])
    assert case["label"].shape[1:] == btcv.shape  # the sample is stored RAS already: no axis moves
    remapped = case["label"][0].numpy()
    expected_ids = {BTCV_TO_SYNAPSE[int(v)] for v in np.unique(btcv)}
    assert set(np.unique(remapped).tolist()) == expected_ids
    for btcv_id, synapse_id in BTCV_TO_SYNAPSE.items():
        if synapse_id:  # every kept organ keeps all of its voxels
            assert (remapped == synapse_id).sum() == (btcv == btcv_id).sum()


def test_bundle_evaluator_scores_the_real_ct_on_its_original_grid(btcv_layout, tmp_path):
    torch.manual_seed(0)
    models = tmp_path / "models"
    models.mkdir()
    torch.save(get_network("tiny_unet", 1, 9).state_dict(), models / "tiny_unet-teacher-s0.pt")  # untrained
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train_teacher.json"), str(CONFIGS / "evaluate.json")])
    parser.update(
        {
            "bundle_root": str(tmp_path),
            "output_dir": str(tmp_path / "output"),
            "ckpt_dir": str(models),
            "dataset_dir": str(btcv_layout),
            "data_format": "btcv",
            "teacher": "tiny_unet",
            "image_size": 64,
            "device": "$torch.device('cpu')",
            "amp": False,
        }
    )
    evaluator = parser.get_parsed_content("validate#evaluator")
    evaluator.run()
    shape = nib.load(REAL / "example_ct.nii.gz").shape
    output = evaluator.state.output[0]
    assert output["pred"].shape[1:] == output["label"].shape[1:] == shape  # inverted back from 64 x 64 slices
    np.testing.assert_allclose(np.asarray(output["pred"].affine), nib.load(REAL / "example_ct.nii.gz").affine)
    with open(tmp_path / "output" / "tiny_unet-teacher-s0-test_metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["organ"] for r in rows] == organ_names("synapse") and {r["case"] for r in rows} == {"case0001"}
    gt = {r["organ"]: int(r["gt_voxels"]) for r in rows}
    assert gt["liver"] == int((np.asarray(nib.load(REAL / "example_ct_seg_btcv13.nii.gz").dataobj) == 6).sum())
    assert 0.0 <= evaluator.state.metrics["test_mean_dice"] <= 1.0
