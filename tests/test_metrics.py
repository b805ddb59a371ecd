"""Tests of mskd.metrics: both HD95 definitions against independent SciPy computations, the absent/present rules,
summaries, CSVs and error paths."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from mskd.metrics import (
    CASE_CSV_COLUMNS,
    SUMMARY_CSV_COLUMNS,
    case_metrics,
    format_columns,
    format_mean_std,
    format_summary,
    gap_closed,
    hd95_medpy,
    mean_std,
    summarise,
    write_case_csv,
    write_summary_csv,
)

# ---------------------------------------------------------------- independent reference computations (SciPy only)


def _ref_directed(a: np.ndarray, b: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Distances of a's surface voxels to b's surface, and of b's to a's (surface = mask XOR 6-connected erosion)."""
    six = np.zeros((3, 3, 3), bool)
    six[1, 1, :] = six[1, :, 1] = six[:, 1, 1] = True
    sa = a & ~ndimage.binary_erosion(a, structure=six)
    sb = b & ~ndimage.binary_erosion(b, structure=six)
    return (
        ndimage.distance_transform_edt(~sb, sampling=spacing)[sa],
        ndimage.distance_transform_edt(~sa, sampling=spacing)[sb],
    )


def ref_hd95_monai(a, b, spacing) -> float:
    """MONAI's definition: 95th percentile of each directed set, the larger of the two."""
    d_ab, d_ba = _ref_directed(a, b, spacing)
    return max(np.percentile(d_ab, 95), np.percentile(d_ba, 95))


def ref_hd_max(a, b, spacing) -> float:
    d_ab, d_ba = _ref_directed(a, b, spacing)
    return max(d_ab.max(), d_ba.max())


def ref_hd95_medpy(a, b) -> float:
    """medpy's definition: 95th percentile of the concatenated directed sets, unit spacing."""
    return float(np.percentile(np.concatenate(_ref_directed(a, b, (1, 1, 1))), 95))


def ref_dice(a, b) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def sphere(shape, centre, radius) -> np.ndarray:
    grid = np.indices(shape, dtype=float)
    return ((grid - np.reshape(centre, (3, 1, 1, 1))) ** 2).sum(0) <= radius**2


def as_maps(pred_mask, gt_mask) -> tuple[np.ndarray, np.ndarray]:
    return pred_mask.astype(np.uint8), gt_mask.astype(np.uint8)


# ---------------------------------------------------------------- geometry cross-checks


def test_offset_cubes_anisotropic():
    gt = np.zeros((16, 12, 12), bool)
    gt[3:9, 3:9, 3:9] = True  # 6³ cube
    pred = np.roll(gt, 2, axis=0)  # shifted by 2 voxels along x
    spacing = (2.0, 1.0, 3.0)
    m = case_metrics(*as_maps(pred, gt), num_classes=2, spacing=spacing)
    # Hand-derived Dice: overlap 4·6·6 = 144, |P| = |G| = 216 -> 2·144 / 432 = 2/3.
    assert m["dice"][0] == pytest.approx(2 / 3, abs=1e-12)
    assert m["dice_transunet"][0] == pytest.approx(2 / 3, abs=1e-12)
    # Hand-derived maximum surface distance: the shift, 2 voxels × 2 mm.
    assert ref_hd_max(pred, gt, spacing) == pytest.approx(4.0)
    ref = ref_hd95_monai(pred, gt, spacing)
    assert m["hd95_mm"][0] == pytest.approx(ref, abs=1e-6)
    assert m["hd95_mm"][0] <= 4.0 + 1e-6
    assert m["hd95_transunet_vox"][0] == pytest.approx(ref_hd95_medpy(pred, gt), abs=1e-9)
    assert m["gt_voxels"][0] == m["pred_voxels"][0] == 216


def test_identical_spheres():
    s = sphere((20, 20, 20), (10, 10, 10), 6)
    m = case_metrics(*as_maps(s, s), num_classes=2, spacing=(0.8, 0.8, 2.5))
    assert m["dice"][0] == 1.0 and m["dice_transunet"][0] == 1.0
    assert m["hd95_mm"][0] == 0.0 and m["hd95_transunet_vox"][0] == 0.0


def test_concentric_spheres_isotropic():
    spacing = 1.5
    small = sphere((28, 28, 28), (14, 14, 14), 5)
    large = sphere((28, 28, 28), (14, 14, 14), 9)
    m = case_metrics(*as_maps(small, large), num_classes=2, spacing=(spacing,) * 3)
    assert m["dice"][0] == pytest.approx(ref_dice(small, large), abs=1e-12)
    assert m["hd95_mm"][0] == pytest.approx(ref_hd95_monai(small, large, (spacing,) * 3), abs=1e-6)
    assert abs(m["hd95_mm"][0] - 4 * spacing) <= spacing  # radius difference × spacing, within one voxel
    assert m["hd95_transunet_vox"][0] == pytest.approx(ref_hd95_medpy(small, large), abs=1e-9)
    assert abs(m["hd95_transunet_vox"][0] - 4) <= 1


def test_shifted_spheres_anisotropic():
    spacing = (1.0, 0.7, 2.0)
    gt = sphere((24, 24, 24), (12, 12, 11), 6)
    pred = sphere((24, 24, 24), (12, 12, 14), 6)
    m = case_metrics(*as_maps(pred, gt), num_classes=2, spacing=spacing)
    assert m["dice"][0] == pytest.approx(ref_dice(pred, gt), abs=1e-12)
    assert m["hd95_mm"][0] == pytest.approx(ref_hd95_monai(pred, gt, spacing), abs=1e-6)
    assert m["hd95_transunet_vox"][0] == pytest.approx(ref_hd95_medpy(pred, gt), abs=1e-9)
    assert m["hd95_mm"][0] <= ref_hd_max(pred, gt, spacing) + 1e-6


def test_hd95_conventions_differ():
    """A spike on one organ: MONAI's max of the directed percentiles (6) vs medpy's percentile of the union (4)."""
    gt = np.zeros((24, 24, 30), bool)
    gt[6:16, 6:16, 4:14] = True  # 10³ cube
    pred = gt.copy()
    pred[10:14, 10:14, 14:22] = True  # a 4×4×8 rod sticking out of one face
    m = case_metrics(*as_maps(pred, gt), num_classes=2, spacing=(1, 1, 1))
    monai_def, medpy_def = ref_hd95_monai(pred, gt, (1, 1, 1)), ref_hd95_medpy(pred, gt)
    assert (monai_def, medpy_def) == (6.0, 4.0)
    assert m["hd95_mm"][0] == pytest.approx(monai_def, abs=1e-6)
    assert m["hd95_transunet_vox"][0] == pytest.approx(medpy_def, abs=1e-9)


def test_multiclass_and_crop_at_volume_border():
    """Organs touching the volume border and several classes at once: each organ equals its own binary check."""
    rng = np.random.default_rng(0)
    gt = np.zeros((18, 16, 14), np.uint8)
    gt[0:7, 0:6, 2:9] = 1  # touches the border
    gt[9:16, 8:16, 5:14] = 2  # touches the opposite border
    gt[2:5, 10:13, 0:3] = 3
    pred = gt.copy()
    pred[ndimage.binary_dilation(gt == 1)] = 1
    pred[(gt == 2) & (rng.random(gt.shape) < 0.3)] = 0
    pred[3:6, 11:14, 1:4] = 3
    spacing = (0.9, 1.1, 2.4)
    m = case_metrics(pred, gt, num_classes=4, spacing=spacing)
    for k in (1, 2, 3):
        p, g = pred == k, gt == k
        assert m["dice"][k - 1] == pytest.approx(ref_dice(p, g), abs=1e-12)
        assert m["hd95_mm"][k - 1] == pytest.approx(ref_hd95_monai(p, g, spacing), abs=1e-5)
        assert m["hd95_transunet_vox"][k - 1] == pytest.approx(ref_hd95_medpy(p, g), abs=1e-9)
        assert m["gt_voxels"][k - 1] == g.sum() and m["pred_voxels"][k - 1] == p.sum()


def test_hd95_medpy_matches_reference_and_accepts_spacing():
    a = sphere((20, 20, 20), (9, 10, 10), 5)
    b = sphere((20, 20, 20), (11, 10, 9), 6)
    assert hd95_medpy(a, b) == pytest.approx(ref_hd95_medpy(a, b), abs=1e-12)
    d = np.concatenate(_ref_directed(a, b, (1.0, 2.0, 0.5)))
    assert hd95_medpy(a, b, spacing=(1.0, 2.0, 0.5)) == pytest.approx(np.percentile(d, 95), abs=1e-12)


def test_torch_and_float_inputs():
    gt = np.zeros((8, 8, 8), np.int64)
    gt[2:6, 2:6, 2:6] = 1
    pred = np.roll(gt, 1, axis=1)
    expected = case_metrics(pred, gt, 2, (1, 1, 1))
    got = case_metrics(torch.as_tensor(pred, dtype=torch.float32), torch.as_tensor(gt), 2, torch.tensor([1, 1, 1]))
    for key, value in expected.items():
        np.testing.assert_array_equal(got[key], value)


# ---------------------------------------------------------------- absent / present rules

NAN = math.nan


@pytest.mark.parametrize(
    ("in_gt", "in_pred", "dice", "hd95_mm", "dice_tu", "hd95_tu"),
    [
        (True, True, 1.0, 0.0, 1.0, 0.0),  # both present (identical here)
        (True, False, 0.0, NAN, 0.0, 0.0),  # missed: TransUNet code's `else` branch -> (0, 0)
        (False, True, 0.0, NAN, 1.0, 0.0),  # spurious: TransUNet code's `elif` branch -> (1, 0)
        (False, False, NAN, NAN, 1.0, 0.0),  # absent in both: our issue's (1, 0) (TransUNet's code: (0, 0))
    ],
    ids=["both", "missed", "spurious", "absent"],
)
def test_absent_present_rules(in_gt, in_pred, dice, hd95_mm, dice_tu, hd95_tu):
    gt = np.zeros((10, 10, 10), np.uint8)
    pred = np.zeros_like(gt)
    gt[1:3, 1:3, 1:3] = 1  # organ 1 present in both in every case, so the volumes are never empty
    pred[1:3, 1:3, 1:3] = 1
    if in_gt:
        gt[5:8, 5:8, 5:8] = 2
    if in_pred:
        pred[5:8, 5:8, 5:8] = 2
    m = case_metrics(pred, gt, num_classes=3, spacing=(1, 1, 1))
    got = (m["dice"][1], m["hd95_mm"][1], m["dice_transunet"][1], m["hd95_transunet_vox"][1])
    np.testing.assert_array_equal(got, (dice, hd95_mm, dice_tu, hd95_tu))  # NaN == NaN here
    assert (m["gt_voxels"][1] > 0, m["pred_voxels"][1] > 0) == (in_gt, in_pred)


def test_no_warnings_for_absent_organs(recwarn):
    gt = np.zeros((6, 6, 6), np.uint8)
    gt[1:4, 1:4, 1:4] = 1
    case_metrics(np.zeros_like(gt), gt, 4, (1, 1, 1))
    assert not [w for w in recwarn if "nan/inf" in str(w.message) or "always_return" in str(w.message)]


# ---------------------------------------------------------------- errors

GOOD = np.zeros((4, 4, 4), np.uint8)


@pytest.mark.parametrize(
    ("pred", "label", "num_classes", "spacing", "error", "match"),
    [
        (np.zeros((4, 4, 5), np.uint8), GOOD, 3, (1, 1, 1), ValueError, r"pred \(4, 4, 5\) vs label \(4, 4, 4\)"),
        (np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8), 3, (1, 1, 1), ValueError, r"must be 3D"),
        (np.full((4, 4, 4), 3, np.uint8), GOOD, 3, (1, 1, 1), ValueError, r"pred has label values outside \[0, 3\)"),
        (GOOD, np.full((4, 4, 4), -1, np.int16), 3, (1, 1, 1), ValueError, r"label has label values .*\[-1\]"),
        (np.full((4, 4, 4), 0.5), GOOD, 3, (1, 1, 1), ValueError, r"non-integer values \[0.5\]"),
        (GOOD, GOOD, 1, (1, 1, 1), ValueError, r"num_classes must be an integer >= 2"),
        (GOOD, GOOD, 3, (1, 1), ValueError, r"spacing must be 3 positive finite numbers .*\(1, 1\)"),
        (GOOD, GOOD, 3, (1, 0, 1), ValueError, r"spacing must be 3 positive"),
        (GOOD, GOOD, 3, (1, -2, 1), ValueError, r"spacing must be 3 positive"),
        (GOOD, GOOD, 3, (1, float("nan"), 1), ValueError, r"spacing must be 3 positive"),
        (GOOD, GOOD, 3, ("a", 1, 1), ValueError, r"spacing must be 3 positive numbers"),
        (GOOD.astype(str), GOOD, 3, (1, 1, 1), TypeError, r"integer class labels, got dtype"),
    ],
    ids=[
        "shape",
        "ndim",
        "pred-range",
        "label-negative",
        "non-integer",
        "num-classes",
        "spacing-len",
        "spacing-zero",
        "spacing-negative",
        "spacing-nan",
        "spacing-str",
        "dtype",
    ],
)
def test_case_metrics_errors(pred, label, num_classes, spacing, error, match):
    with pytest.raises(error, match=match):
        case_metrics(pred, label, num_classes, spacing)


def test_out_of_range_message_lists_the_values():
    pred = GOOD.copy()
    pred[0, 0, 0], pred[1, 1, 1] = 7, 9
    with pytest.raises(ValueError, match=r"\[7 9\]"):
        case_metrics(pred, GOOD, 3, (1, 1, 1))


def test_hd95_medpy_errors():
    with pytest.raises(ValueError, match="non-empty"):
        hd95_medpy(np.zeros((3, 3, 3)), np.ones((3, 3, 3)))
    with pytest.raises(ValueError, match=r"\(3, 3, 3\) vs \(3, 3, 4\)"):
        hd95_medpy(np.ones((3, 3, 3)), np.ones((3, 3, 4)))


# ---------------------------------------------------------------- summaries and CSVs


def _fake(dice, hd, dice_tu, hd_tu, gt, pred):
    f = np.asarray
    return {
        "dice": f(dice, float),
        "hd95_mm": f(hd, float),
        "dice_transunet": f(dice_tu, float),
        "hd95_transunet_vox": f(hd_tu, float),
        "gt_voxels": f(gt),
        "pred_voxels": f(pred),
    }


# organ a: both present in both cases; b: case 1 missed, case 2 both; c: case 1 spurious, case 2 absent in both.
CASES = [
    _fake([0.8, 0.0, 0.0], [2.0, NAN, NAN], [0.8, 0.0, 1.0], [1.0, 0.0, 0.0], [10, 5, 0], [12, 0, 3]),
    _fake([0.6, 0.5, NAN], [4.0, 6.0, NAN], [0.6, 0.5, 1.0], [3.0, 2.0, 0.0], [10, 5, 0], [8, 4, 0]),
]


def test_summarise_hand_computed():
    rows = summarise(CASES, ["a", "b", "c"])
    assert [r["organ"] for r in rows] == ["a", "b", "c", "mean"]
    a, b, c, mean = rows
    assert (a["n"], a["n_hd95"], a["missed"], a["spurious"]) == (2, 2, 0, 0)
    assert a["dice_mean"] == pytest.approx(0.7) and a["dice_std"] == pytest.approx(0.1)  # population std
    assert a["hd95_mm_mean"] == 3.0 and a["hd95_mm_std"] == 1.0
    assert (b["n"], b["n_hd95"], b["missed"], b["spurious"]) == (2, 1, 1, 0)
    assert b["dice_mean"] == 0.25 and b["hd95_mm_mean"] == 6.0 and b["hd95_mm_std"] == 0.0
    assert (c["n"], c["n_hd95"], c["missed"], c["spurious"]) == (1, 0, 0, 1)
    assert c["dice_mean"] == 0.0 and math.isnan(c["hd95_mm_mean"]) and math.isnan(c["hd95_mm_std"])
    assert c["dice_transunet_mean"] == 1.0 and c["hd95_transunet_vox_mean"] == 0.0
    assert b["dice_transunet_mean"] == 0.25 and b["hd95_transunet_vox_mean"] == 1.0
    # mean row: mean over organs of organ means, NaN organ means left out; totals of missed / spurious
    assert (mean["n"], mean["missed"], mean["spurious"]) == (2, 1, 1)
    assert mean["dice_mean"] == pytest.approx((0.7 + 0.25 + 0.0) / 3)
    assert mean["hd95_mm_mean"] == pytest.approx((3.0 + 6.0) / 2)
    assert mean["dice_transunet_mean"] == pytest.approx((0.7 + 0.25 + 1.0) / 3)
    assert mean["hd95_transunet_vox_mean"] == pytest.approx((2.0 + 1.0 + 0.0) / 3)
    assert math.isnan(mean["dice_std"])
    table = format_summary(rows)
    assert table.splitlines()[0].startswith("organ") and "0.7000 ± 0.1000" in table and "nan" in table


@pytest.mark.parametrize(
    "mean, std, kwargs, expected",
    [
        (0.6, math.sqrt(0.02), {"scale": 100}, "60.0 ± 14.1"),  # Dice in %, the default one decimal
        (12.345, math.nan, {}, "12.3"),  # one value: no spread
        (0.7, 0.1, {"digits": 4}, "0.7000 ± 0.1000"),
        (760.0, 183.3, {"digits": 0}, "760 ± 183"),
        (math.nan, 0.1, {}, "–"),  # no value at all
        (math.nan, math.nan, {"missing": "n/a"}, "n/a"),
        (-0.5, 0.25, {"scale": 2, "digits": 2}, "-1.00 ± 0.50"),
    ],
)
def test_format_mean_std(mean, std, kwargs, expected):
    assert format_mean_std(mean, std, **kwargs) == expected


@pytest.mark.parametrize(
    "values, expected",
    [
        ([0.5, 0.3], (0.4, math.sqrt(0.02))),  # sample std (n - 1)
        ([0.5, math.nan, 0.3], (0.4, math.sqrt(0.02))),  # an undefined value is left out
        ([0.7], (0.7, math.nan)),  # one value: no spread
        ([], (math.nan, math.nan)),
    ],
)
def test_mean_std(values, expected):
    mean, std = mean_std(values)
    assert mean == pytest.approx(expected[0], nan_ok=True) and std == pytest.approx(expected[1], nan_ok=True)


@pytest.mark.parametrize(
    "distilled, alone, teacher, expected",
    [
        (0.70, 0.60, 0.80, 0.5),
        (0.80, 0.60, 0.80, 1.0),
        (0.55, 0.60, 0.80, -0.25),  # worse than the student alone
        (0.70, 0.80, 0.80, math.nan),  # no gap to close
        (0.70, 0.85, 0.80, math.nan),  # the student alone beats the teacher
        (math.nan, 0.60, 0.80, math.nan),
    ],
)
def test_gap_closed(distilled, alone, teacher, expected):
    assert gap_closed(distilled, alone, teacher) == pytest.approx(expected, nan_ok=True)


@pytest.mark.parametrize(
    "header, rows, indent, expected",
    [
        (("a", "bb"), [("xyz", "1"), ("", "22")], "", ["a    bb", "xyz  1", "     22"]),
        (("organ", "n"), [("liver", "10")], "  ", ["  organ  n", "  liver  10"]),
        (("only", "header"), [], "", ["only  header"]),
    ],
)
def test_format_columns_pads_to_the_widest_cell(header, rows, indent, expected):
    assert format_columns(header, rows, indent).splitlines() == expected


def test_summarise_errors():
    with pytest.raises(ValueError, match="at least one case"):
        summarise([], ["a"])
    with pytest.raises(ValueError, match=r"3 values per case but 2 organ names"):
        summarise(CASES, ["a", "b"])
    with pytest.raises(ValueError, match="'mean'"):
        summarise(CASES, ["a", "mean", "c"])


def _read(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_write_case_and_summary_csv(tmp_path):
    out = tmp_path / "sub"
    path = write_case_csv(out / "m.csv", ["case1", "case2"], ["a", "b", "c"], CASES)
    rows = _read(path)
    assert tuple(rows[0]) == CASE_CSV_COLUMNS
    assert len(rows) == 1 + 2 * 3
    assert rows[1] == ["case1", "a", "0.8", "2.0", "0.8", "1.0", "10", "12"]
    assert rows[3] == ["case1", "c", "0.0", "nan", "1.0", "0.0", "0", "3"]
    assert rows[6] == ["case2", "c", "nan", "nan", "1.0", "0.0", "0", "0"]
    spath = write_summary_csv(out / "s.csv", summarise(CASES, ["a", "b", "c"]))
    srows = _read(spath)
    assert tuple(srows[0]) == SUMMARY_CSV_COLUMNS
    assert [r[0] for r in srows[1:]] == ["a", "b", "c", "mean"]
    assert srows[-1][:5] == ["mean", "2", "", "1", "1"]
    assert sorted(p.name for p in out.iterdir()) == ["m.csv", "s.csv"]  # no temporary files left


def test_write_is_atomic_on_failure(tmp_path):
    path = write_case_csv(tmp_path / "m.csv", ["case1", "case2"], ["a", "b", "c"], CASES)
    before = (tmp_path / "m.csv").read_text()
    broken = [dict(CASES[0]), dict(CASES[1])]
    del broken[1]["gt_voxels"]
    with pytest.raises(KeyError):
        write_case_csv(path, ["case1", "case2"], ["a", "b", "c"], broken)
    assert (tmp_path / "m.csv").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.csv"]


def test_write_keeps_the_old_file_when_writing_fails_midway(tmp_path, monkeypatch):
    path = write_case_csv(tmp_path / "m.csv", ["case1", "case2"], ["a", "b", "c"], CASES)
    before = (tmp_path / "m.csv").read_text()
    real_writer = csv.writer

    def failing_writer(f, *args, **kwargs):
        writer = real_writer(f, *args, **kwargs)

        class Failing:
            def writerow(self, row):
                writer.writerow(row)  # the header and the first row reach the temporary file, then the disk fills
                if row[0] == "case1":
                    f.flush()
                    raise OSError("disk full")

        return Failing()

    monkeypatch.setattr(csv, "writer", failing_writer)
    with pytest.raises(OSError, match="disk full"):
        write_case_csv(path, ["case1", "case2"], ["a", "b", "c"], CASES)
    assert (tmp_path / "m.csv").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.csv"]


def test_write_case_csv_errors(tmp_path):
    with pytest.raises(ValueError, match="1 case names for 2 cases"):
        write_case_csv(tmp_path / "m.csv", ["x"], ["a", "b", "c"], CASES)
    with pytest.raises(ValueError, match=r"case 'x': metric 'dice' has 3 values but 2 organ names"):
        write_case_csv(tmp_path / "m.csv", ["x", "y"], ["a", "b"], CASES)
