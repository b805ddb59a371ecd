"""VolumeMetricsHandler inside a real SupervisedEvaluator: CSVs, summary, engine metrics, atomic writes, resets."""

from __future__ import annotations

import csv
import logging
import math

import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset, MetaTensor
from monai.engines import SupervisedEvaluator
from monai.inferers import SimpleInferer
from monai.networks.utils import one_hot
from monai.transforms import AsDiscreted
from scipy import ndimage

from mskd.handlers.volume_metrics import VolumeMetricsHandler, case_name

ORGANS = ["liver", "spleen", "kidney"]
SPACING = (2.0, 2.0, 3.0)
AFFINE = torch.diag(torch.tensor([*SPACING, 1.0], dtype=torch.float64))


class LabelEcho(torch.nn.Module):
    """A "network" whose logits are the one-hot of its input, read as a label map: the prediction is the image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return one_hot(x.long(), num_classes=len(ORGANS) + 1, dim=1)


def _volumes():
    """Two cases, (ground truth, prediction), shape (12, 10, 8)."""
    gt1 = np.zeros((12, 10, 8), np.uint8)
    gt1[2:8, 2:8, 1:7] = 1  # liver: 6³
    gt1[9:11, 1:3, 1:3] = 2  # spleen: missed
    pred1 = np.zeros_like(gt1)
    pred1[3:9, 2:8, 1:7] = 1  # liver shifted by 1 voxel (2 mm) along x
    pred1[0:2, 8:10, 6:8] = 3  # kidney: spurious
    gt2 = np.zeros((12, 10, 8), np.uint8)
    gt2[1:5, 1:5, 1:5] = 1
    gt2[6:10, 5:9, 2:6] = 2
    pred2 = gt2.copy()  # perfect; kidney absent in both
    return [(gt1, pred1), (gt2, pred2)]


def _ref_hd95_mm(a, b, spacing):
    """MONAI's HD95 with SciPy: the larger of the two directed 95th percentiles of surface distances."""
    sa = a & ~ndimage.binary_erosion(a)
    sb = b & ~ndimage.binary_erosion(b)
    d_ab = ndimage.distance_transform_edt(~sb, sampling=spacing)[sa]
    d_ba = ndimage.distance_transform_edt(~sa, sampling=spacing)[sb]
    return max(np.percentile(d_ab, 95), np.percentile(d_ba, 95))


def _ref_hd95_medpy(a, b):
    sa = a & ~ndimage.binary_erosion(a)
    sb = b & ~ndimage.binary_erosion(b)
    d = np.concatenate([ndimage.distance_transform_edt(~sb)[sa], ndimage.distance_transform_edt(~sa)[sb]])
    return float(np.percentile(d, 95))


def _evaluator(data, handler):
    loader = DataLoader(Dataset(data), batch_size=1, num_workers=0)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=loader,
        network=LabelEcho(),
        inferer=SimpleInferer(),
        postprocessing=AsDiscreted(keys="pred", argmax=True),
    )
    handler.attach(evaluator)
    return evaluator


def _data(with_meta=True):
    items = []
    for i, (gt, pred) in enumerate(_volumes(), start=1):
        if with_meta:
            meta = {"filename_or_obj": f"/data/label/case{i:04d}.nii.gz"}
            image = MetaTensor(torch.as_tensor(pred[None], dtype=torch.float32), affine=AFFINE, meta=dict(meta))
            label = MetaTensor(torch.as_tensor(gt[None], dtype=torch.float32), affine=AFFINE, meta=dict(meta))
        else:
            image = torch.as_tensor(pred[None], dtype=torch.float32)
            label = torch.as_tensor(gt[None], dtype=torch.float32)
        items.append({"image": image, "label": label})
    return items


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_handler_end_to_end(tmp_path, caplog):
    handler = VolumeMetricsHandler(ORGANS, tmp_path / "out", prefix="test")
    evaluator = _evaluator(_data(), handler)
    with caplog.at_level(logging.INFO, logger="mskd.handlers.volume_metrics"):
        evaluator.run()

    (gt1, pred1), _ = _volumes()
    liver_dice = 2 * 5 * 6 * 6 / (216 + 216)  # overlap 5·6·6 of two 6³ cubes
    liver_hd = _ref_hd95_mm(pred1 == 1, gt1 == 1, SPACING)
    liver_hd_vox = _ref_hd95_medpy(pred1 == 1, gt1 == 1)
    assert liver_hd == pytest.approx(2.0)  # a one-voxel shift along x at 2 mm

    # per-case CSV: one row per case and organ, exact values
    assert handler.csv_path == str(tmp_path / "out" / "test_metrics.csv")
    rows = _read(handler.csv_path)
    assert list(rows[0]) == [
        "case",
        "organ",
        "dice",
        "hd95_mm",
        "dice_transunet",
        "hd95_transunet_vox",
        "gt_voxels",
        "pred_voxels",
    ]
    assert [(r["case"], r["organ"]) for r in rows] == [(c, o) for c in ("case0001", "case0002") for o in ORGANS]
    table = {(r["case"], r["organ"]): r for r in rows}
    liver1 = table["case0001", "liver"]
    assert float(liver1["dice"]) == pytest.approx(liver_dice, abs=1e-12)
    assert float(liver1["hd95_mm"]) == pytest.approx(liver_hd, abs=1e-6)
    assert float(liver1["hd95_transunet_vox"]) == pytest.approx(liver_hd_vox, abs=1e-9)
    spleen1, kidney1 = table["case0001", "spleen"], table["case0001", "kidney"]
    assert (spleen1["dice"], spleen1["hd95_mm"], spleen1["dice_transunet"], spleen1["hd95_transunet_vox"]) == (
        "0.0",
        "nan",
        "0.0",
        "0.0",
    )  # missed
    assert (kidney1["dice"], kidney1["hd95_mm"], kidney1["dice_transunet"], kidney1["gt_voxels"]) == (
        "0.0",
        "nan",
        "1.0",
        "0",
    )  # spurious
    kidney2 = table["case0002", "kidney"]
    assert (kidney2["dice"], kidney2["hd95_mm"], kidney2["dice_transunet"], kidney2["hd95_transunet_vox"]) == (
        "nan",
        "nan",
        "1.0",
        "0.0",
    )  # absent in both
    assert (table["case0002", "liver"]["dice"], table["case0002", "liver"]["hd95_mm"]) == ("1.0", "0.0")

    # summary CSV
    summary = {r["organ"]: r for r in _read(handler.summary_path)}
    assert handler.summary_path == str(tmp_path / "out" / "test_metrics_summary.csv")
    assert list(summary) == [*ORGANS, "mean"]
    assert (summary["liver"]["n"], summary["liver"]["n_hd95"]) == ("2", "2")
    assert float(summary["liver"]["dice_mean"]) == pytest.approx((liver_dice + 1) / 2)
    assert float(summary["liver"]["dice_std"]) == pytest.approx((1 - liver_dice) / 2)
    assert float(summary["liver"]["hd95_mm_mean"]) == pytest.approx(liver_hd / 2, abs=1e-6)
    assert (summary["spleen"]["n"], summary["spleen"]["n_hd95"], summary["spleen"]["missed"]) == ("2", "1", "1")
    assert float(summary["spleen"]["dice_mean"]) == 0.5
    assert (summary["kidney"]["n"], summary["kidney"]["spurious"], summary["kidney"]["dice_mean"]) == ("1", "1", "0.0")
    assert summary["kidney"]["hd95_mm_mean"] == "nan"
    assert (summary["mean"]["n"], summary["mean"]["missed"], summary["mean"]["spurious"]) == ("2", "1", "1")

    # engine metrics
    m = evaluator.state.metrics
    expected = {
        "test_dice_liver": (liver_dice + 1) / 2,
        "test_dice_spleen": 0.5,
        "test_dice_kidney": 0.0,
        "test_hd95_liver": liver_hd / 2,
        "test_hd95_spleen": 0.0,
        "test_mean_dice": ((liver_dice + 1) / 2 + 0.5 + 0.0) / 3,
        "test_mean_hd95": (liver_hd / 2 + 0.0) / 2,
        "test_transunet_dice_liver": (liver_dice + 1) / 2,
        "test_transunet_dice_spleen": 0.5,
        "test_transunet_dice_kidney": 1.0,
        "test_transunet_hd95_liver": liver_hd_vox / 2,
        "test_transunet_hd95_spleen": 0.0,
        "test_transunet_hd95_kidney": 0.0,
        "test_transunet_mean_dice": ((liver_dice + 1) / 2 + 0.5 + 1.0) / 3,
        "test_transunet_mean_hd95": liver_hd_vox / 2 / 3,
        "test_missed": 1.0,
        "test_spurious": 1.0,
    }
    for key, value in expected.items():
        assert isinstance(m[key], float), key
        assert m[key] == pytest.approx(value, abs=1e-6), key
    assert math.isnan(m["test_hd95_kidney"])
    assert set(m) == {*expected, "test_hd95_kidney"}

    # logged table, and no temporary files left behind
    assert any("test over 2 cases" in r.getMessage() and "liver" in r.getMessage() for r in caplog.records)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["test_metrics.csv", "test_metrics_summary.csv"]


def test_running_twice_does_not_accumulate(tmp_path):
    handler = VolumeMetricsHandler(ORGANS, tmp_path, prefix="val", csv_name="per_case.csv")
    evaluator = _evaluator(_data(), handler)
    handler.attach(evaluator)  # attaching twice registers once
    evaluator.run()
    first = (tmp_path / "per_case.csv").read_text()
    evaluator.run()
    assert (tmp_path / "per_case.csv").read_text() == first
    assert len(_read(handler.csv_path)) == 2 * len(ORGANS)
    assert handler.summary_path == str(tmp_path / "per_case_summary.csv")
    assert handler.cases == ["case0001", "case0002"]
    assert "val_mean_dice" in evaluator.state.metrics
    assert sorted(p.name for p in tmp_path.iterdir()) == ["per_case.csv", "per_case_summary.csv"]


def test_no_meta_falls_back_to_unit_spacing(tmp_path, caplog):
    handler = VolumeMetricsHandler(ORGANS, tmp_path)
    evaluator = _evaluator(_data(with_meta=False), handler)
    with caplog.at_level(logging.WARNING, logger="mskd.handlers.volume_metrics"):
        evaluator.run()
    warnings = [r for r in caplog.records if "carries no metadata" in r.getMessage()]
    assert len(warnings) == 1  # once per epoch, not once per case
    rows = _read(handler.csv_path)
    assert [r["case"] for r in rows[:: len(ORGANS)]] == ["case_0000", "case_0001"]
    (gt1, pred1), _ = _volumes()
    assert float(rows[0]["hd95_mm"]) == pytest.approx(_ref_hd95_mm(pred1 == 1, gt1 == 1, (1, 1, 1)), abs=1e-6)


def test_case_key_wins_and_label_channels_checked(tmp_path):
    handler = VolumeMetricsHandler(ORGANS, tmp_path)
    gt = torch.zeros(1, 4, 4, 4)
    gt[0, 1:3, 1:3, 1:3] = 1
    engine = type("E", (), {})()
    engine.state = type("S", (), {"output": [{"pred": gt.clone(), "label": gt, "case": "abc"}], "metrics": {}})()
    handler.iteration_completed(engine)
    assert handler.cases == ["abc"]
    engine.state.output = [{"pred": torch.zeros(4, 4, 4, 4), "label": gt}]
    with pytest.raises(ValueError, match=r"shape \(1, H, W, D\), got \(4, 4, 4, 4\); add AsDiscreted"):
        handler.iteration_completed(engine)
    engine.state.output = [{"pred": gt}]
    with pytest.raises(KeyError, match="'pred' and 'label'"):
        handler.iteration_completed(engine)


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("/d/label/label0001.nii.gz", "label0001"),
        ("/d/test_vol_h5/case0001.npy.h5", "case0001"),
        ("img0002.nii", "img0002"),
        ("/kits/case_00007/segmentation.nii.gz", "case_00007"),
        ("/d/case0003.npz", "case0003"),
    ],
)
def test_case_name(filename, expected):
    assert case_name(filename) == expected


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"class_names": []}, "at least one"),
        ({"class_names": ["a", "a"]}, "unique"),
        ({"class_names": ["a", "mean"]}, "'mean'"),
        ({"class_names": ["a"], "prefix": ""}, "prefix"),
    ],
)
def test_handler_args(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        VolumeMetricsHandler(output_dir=tmp_path, **kwargs)
