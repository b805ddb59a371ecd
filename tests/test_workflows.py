"""The summaries of the workflow runs, and the refusals before anything runs (the runs: tests/bundles)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from mskd.bundle import STACKS
from mskd.workflows import EvaluationSummary, TrainingSummary, evaluate, train

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "mskd_synapse"


def test_stacks_are_the_bundle_files():
    assert all((BUNDLE / "configs" / f).is_file() for files in STACKS.values() for f in files)
    assert [files[0] for files in STACKS.values()] == ["train_teacher.json"] * 3


def test_training_summary_table(tmp_path):
    checkpoint = tmp_path / "unet-teacher-s0.pt"
    checkpoint.write_bytes(b"")
    summary = TrainingSummary(
        "unet-teacher-s0", 0.61234, 40, 40, {"loss": 0.5, "loss_seg": 0.25}, checkpoint, "abc in experiment e (u)"
    )
    assert summary.table().splitlines() == [
        "unet-teacher-s0:",
        "  best val_mean_dice     0.6123 (epoch 40)",
        "  final loss (epoch 40)  loss 0.5, loss_seg 0.25",
        f"  checkpoint             {checkpoint}",
        "  MLflow run             abc in experiment e (u)",
    ]


def test_training_summary_of_a_run_without_validation_or_checkpoint(tmp_path):
    summary = TrainingSummary("r", None, -1, 0, {}, tmp_path / "none.pt", "off (--mlflow false)")
    lines = summary.table().splitlines()
    assert lines[1].endswith("no validation ran") and lines[2].endswith("no iteration ran")
    assert lines[3].endswith(f"{tmp_path / 'none.pt'} (not written)")


def test_evaluation_summary_table():
    rows = [
        {"organ": "liver", "dice_mean": 0.9, "dice_std": 0.05, "hd95_mm_mean": 12.34, "hd95_mm_std": math.nan},
        {
            "organ": "gallbladder",
            "dice_mean": math.nan,
            "dice_std": math.nan,
            "hd95_mm_mean": math.nan,
            "hd95_mm_std": 1,
        },
        {"organ": "mean", "dice_mean": 0.9, "dice_std": math.nan, "hd95_mm_mean": 12.34, "hd95_mm_std": math.nan},
    ]
    summary = EvaluationSummary("r-test", 2, rows, "r-test_metrics.csv", "r-test_metrics_summary.csv", "off")
    assert summary.table().splitlines() == [
        "r-test on 2 test case(s):",
        "  organ        Dice (%)    HD95 (mm)",
        "  liver        90.0 ± 5.0  12.3",
        "  gallbladder  n/a         n/a",
        "  mean         90.0        12.3",
        "  per-case CSV  r-test_metrics.csv",
        "  summary CSV   r-test_metrics_summary.csv",
        "  MLflow run    off",
    ]


@pytest.mark.parametrize("run", [train, evaluate])
def test_an_unknown_method_is_refused(run):
    with pytest.raises(ValueError, match=r"unknown method 'kd'; choose one of \['teacher', 'baseline', 'mskd'\]"):
        run(BUNDLE, "kd")
