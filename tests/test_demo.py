from pathlib import Path

import pytest

from mskd.demo import QUICK, format_table, run_demo

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "mskd_synapse"

ORGANS = ["spleen", "right_kidney", "left_kidney", "gallbladder", "liver", "stomach", "aorta", "pancreas"]


def test_format_table_rows_and_percentages():
    metrics = {"network_params": 53492.0, "test_mean_dice": 0.5, "test_mean_hd95": 12.345}
    metrics |= {f"test_dice_{o}": 0.25 for o in ORGANS}
    table = format_table({"run-a": metrics}, ORGANS).splitlines()
    assert table[0].startswith("| model | params | mean HD95 (mm) | mean Dice | spleen |")
    assert table[2] == "| run-a | 53,492 | 12.3 | 50.0 | " + " | ".join(["25.0"] * 8) + " |"


@pytest.mark.e2e
def test_quick_demo_runs_every_stage_and_reads_back_the_table(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    rows = run_demo(tmp_path / "demo", bundle=BUNDLE, quick=True)
    assert set(rows) == {"unet-teacher-s0-test", "tiny_unet-baseline-s0-test", "tiny_unet_from_unet-mskd-s0-test"}
    for metrics in rows.values():
        assert 0.0 <= metrics["test_mean_dice"] <= 1.0
        assert all(f"test_dice_{o}" in metrics and f"test_hd95_{o}" in metrics for o in ORGANS)
    assert rows["unet-teacher-s0-test"]["network_params"] > rows["tiny_unet-baseline-s0-test"]["network_params"]
    report = (tmp_path / "demo" / "results.md").read_text()
    assert "tiny_unet_from_unet-mskd-s0-test" in report and "total:" in report
    assert (tmp_path / "demo" / "models" / "model.pt").is_file()
    assert QUICK.test_cases == 1


@pytest.mark.e2e
def test_the_quick_demo_runs_on_the_kits_bundle_with_its_own_task(tmp_path, monkeypatch):
    """The demo takes its task, organs and experiment from the bundle: KiTS phantoms, kidney and tumour."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    rows = run_demo(tmp_path / "demo", bundle=BUNDLE.parent / "mskd_kits", quick=True)
    assert set(rows) == {"unet-teacher-s0-test", "tiny_unet-baseline-s0-test", "tiny_unet_from_unet-mskd-s0-test"}
    for metrics in rows.values():
        assert {"test_dice_kidney", "test_dice_tumour"} <= set(metrics) and "test_dice_liver" not in metrics
    assert "| kidney | tumour |" in (tmp_path / "demo" / "results.md").read_text()
