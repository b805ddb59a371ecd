"""The comparison view: teacher, student alone and distilled students side by side, from an MLflow experiment."""

from __future__ import annotations

import math

import pytest
from mlflow import MlflowClient

from mskd.tracking import MlflowRun
from mskd.tracking.comparison import (
    ComparisonHandler,
    comparison_figure,
    comparison_rows,
    format_comparison,
    summary_metrics,
)

ORGANS = ("liver", "spleen")
EXPERIMENT = "cmp"
DATA = {"dataset_dir": "/data/a", "data_format": "msd", "image_size": "96"}


@pytest.fixture
def store(mlflow_uri):
    """An experiment with the test runs of a teacher, a student alone (2 seeds) and two methods (mskd 2 seeds, kd 1),
    plus runs that must not count: a failed one, one on another dataset, an older evaluation of a re-evaluated model,
    a training run (no test metrics) and another student's."""
    client = MlflowClient(tracking_uri=mlflow_uri)
    experiment_id = client.create_experiment(EXPERIMENT)
    clock = iter(range(1000, 100000, 1000))

    def test_run(trained, role, network, liver, spleen, status="FINISHED", data=DATA, hd95=(4.0, 6.0)):
        run = client.create_run(
            experiment_id,
            run_name=f"{trained}-test",
            start_time=next(clock),
            tags={"role": role, "network": network, "teacher": "unet"},
        )
        run_id = run.info.run_id
        for key, value in {**data, "trained_run": trained}.items():
            client.log_param(run_id, key, value)
        metrics = {
            "test_dice_liver": liver,
            "test_dice_spleen": spleen,
            "test_mean_dice": (liver + spleen) / 2,
            "test_hd95_liver": hd95[0],
            "test_hd95_spleen": hd95[1],
            "test_mean_hd95": sum(hd95) / 2,
        }
        for key, value in metrics.items():
            client.log_metric(run_id, key, value)
        client.set_terminated(run_id, status)
        return run_id

    ids = {
        "teacher": test_run("unet-teacher-s0", "teacher", "unet", 0.9, 0.7),
        "alone0": test_run("espnet-baseline-s0", "student", "espnet", 0.7, 0.5),
        "alone1": test_run("espnet-baseline-s1", "student", "espnet", 0.7, 0.3),
        "old": test_run("espnet_from_unet-mskd-s0", "student", "espnet_from_unet", 0.1, 0.1),
        "mskd0": test_run("espnet_from_unet-mskd-s0", "student", "espnet_from_unet", 0.8, 0.5),
        "mskd1": test_run("espnet_from_unet-mskd-s1", "student", "espnet_from_unet", 0.8, 0.5),
        "kd0": test_run("espnet_from_unet-kd-s0", "student", "espnet_from_unet", 0.7, 0.4),
        "failed": test_run("espnet_from_unet-cwd-s0", "student", "espnet_from_unet", 0.9, 0.9, status="FAILED"),
        "elsewhere": test_run(
            "espnet_from_unet-ifvd-s0", "student", "espnet_from_unet", 0.9, 0.9, data={**DATA, "dataset_dir": "/b"}
        ),
        "other_student": test_run("enet_from_unet-kd-s0", "student", "enet_from_unet", 0.2, 0.2),
    }
    training = client.create_run(experiment_id, run_name="espnet_from_unet-mskd-s0", tags={"network": "espnet"})
    client.set_terminated(training.info.run_id)
    return client, experiment_id, ids, mlflow_uri


def test_rows_group_the_seeds_of_each_model_on_the_same_test_set(store):
    client, experiment_id, ids, _ = store
    reference = client.get_run(ids["mskd1"])
    rows = comparison_rows(client, experiment_id, reference, "unet", "espnet", ORGANS)
    assert [(r.label, r.kind, r.runs) for r in rows] == [
        ("teacher unet", "teacher", ["unet-teacher-s0"]),
        ("espnet alone", "alone", ["espnet-baseline-s0", "espnet-baseline-s1"]),
        ("mskd", "distilled", ["espnet_from_unet-mskd-s0", "espnet_from_unet-mskd-s1"]),
        ("kd", "distilled", ["espnet_from_unet-kd-s0"]),
    ]  # failed, other dataset, older evaluation, training run and the other student left out
    alone = rows[1]
    assert alone.dice["spleen"] == [0.5, 0.3]
    assert alone.mean_std("dice", "spleen") == pytest.approx((0.4, math.sqrt(0.02)))
    assert alone.mean("hd95", "mean") == pytest.approx(5.0)
    assert math.isnan(rows[0].mean_std("dice", "liver")[1])  # one seed: no std


def test_the_reference_run_counts_even_when_it_has_not_finished(store):
    client, experiment_id, ids, _ = store
    client.update_run(ids["kd0"], status="RUNNING")
    rows = comparison_rows(client, experiment_id, client.get_run(ids["kd0"]), "unet", "espnet", ORGANS)
    assert "kd" in [r.label for r in rows]


def test_table_gives_dice_percent_std_and_gap_closed(store):
    client, experiment_id, ids, _ = store
    rows = comparison_rows(client, experiment_id, client.get_run(ids["kd0"]), "unet", "espnet", ORGANS)
    table = format_comparison(rows, ORGANS, "espnet distilled from unet")
    lines = table.splitlines()
    assert lines[0].startswith("espnet distilled from unet: test Dice (%)")
    assert lines[2] == "| organ | teacher unet (1) | espnet alone (2) | mskd (2) | kd (1) |"
    # liver: teacher 90, alone 70, mskd 80 closes half the gap, kd 70 none
    assert lines[4] == "| liver | 90.0 | 70.0 ± 0.0 | 80.0 ± 0.0 (+50%) | 70.0 (+0%) |"
    # spleen: teacher 70, alone 40, mskd 50 closes a third, kd 40 none
    assert lines[5] == "| spleen | 70.0 | 40.0 ± 14.1 | 50.0 ± 0.0 (+33%) | 40.0 (+0%) |"
    # mean: teacher 80, alone 55, mskd 65 (+40 %), kd 55
    assert lines[6] == "| **mean Dice** | 80.0 | 55.0 ± 7.1 | 65.0 ± 0.0 (+40%) | 55.0 (+0%) |"
    assert lines[7] == "| mean HD95 (mm) | 5.0 | 5.0 ± 0.0 | 5.0 ± 0.0 | 5.0 |"
    assert summary_metrics(rows) == pytest.approx(
        {"dice_teacher": 0.8, "dice_alone": 0.55, "dice_mskd": 0.65, "dice_kd": 0.55, "gap_closed_mskd": 0.4,
         "gap_closed_kd": 0.0}
    )  # fmt: skip


def test_table_says_why_there_is_no_gap_without_the_teacher(store):
    client, experiment_id, ids, _ = store
    client.delete_run(ids["teacher"])
    rows = comparison_rows(client, experiment_id, client.get_run(ids["kd0"]), "unet", "espnet", ORGANS)
    table = format_comparison(rows, ORGANS, "t")
    assert "No gap closed: the teacher has no evaluation on this test set in the experiment yet." in table
    assert "(+" not in table


def test_figure_has_a_bar_per_model_and_organ(store):
    client, experiment_id, ids, _ = store
    rows = comparison_rows(client, experiment_id, client.get_run(ids["kd0"]), "unet", "espnet", ORGANS)
    fig = comparison_figure(rows, ORGANS, "t")
    dice, hd95 = fig.axes
    assert len(dice.patches) == len(rows) * (len(ORGANS) + 1) == len(hd95.patches)
    assert [t.get_text() for t in dice.get_legend().get_texts()] == [
        "teacher unet (1)",
        "espnet alone (2)",
        "mskd (2)",
        "kd (1)",
    ]
    with pytest.raises(ValueError, match="at least one model"):
        comparison_figure([], ORGANS)


def test_handler_prints_writes_and_logs_a_summary_run(store, tmp_path, capsys):
    client, experiment_id, ids, uri = store
    run = MlflowRun(uri, EXPERIMENT, "espnet_from_unet-kd-s0-test", run_id=ids["kd0"])
    handler = ComparisonHandler(run, "unet", "espnet", ORGANS, tmp_path / "out")
    handler.completed()
    printed = capsys.readouterr().out
    assert "| **mean Dice** | 80.0 | 55.0 ± 7.1 | 65.0 ± 0.0 (+40%) | 55.0 (+0%) |" in printed
    assert (tmp_path / "out" / "comparison-espnet.md").read_text(encoding="utf-8").strip() == handler.tables["espnet"]
    assert (tmp_path / "out" / "comparison-espnet.png").stat().st_size > 0
    (summary,) = client.search_runs([experiment_id], filter_string="tags.role = 'summary'")
    assert summary.info.run_name == "compare-espnet-from-unet" and summary.info.status == "FINISHED"
    assert summary.data.metrics["gap_closed_mskd"] == pytest.approx(0.4)
    assert sorted(a.path for a in client.list_artifacts(summary.info.run_id)) == [
        "comparison-espnet.md",
        "comparison-espnet.png",
    ]
    handler.completed()  # a second comparison: the same summary run, a new step
    (again,) = client.search_runs([experiment_id], filter_string="tags.role = 'summary'")
    assert again.info.run_id == summary.info.run_id and again.data.metrics["comparisons"] == 2


def test_teacher_evaluation_compares_every_student_distilled_from_it(store, tmp_path):
    client, experiment_id, ids, uri = store
    run = MlflowRun(uri, EXPERIMENT, "unet-teacher-s0-test", run_id=ids["teacher"])
    handler = ComparisonHandler(run, "unet", None, ORGANS, tmp_path)
    handler.completed()
    assert sorted(handler.tables) == ["enet", "espnet"]
    assert "| kd (1) |" in handler.tables["enet"]


def test_handler_does_nothing_with_tracking_off(tmp_path, capsys):
    handler = ComparisonHandler(MlflowRun(None), "unet", "espnet", ORGANS, tmp_path / "out")
    handler.completed()
    assert handler.tables == {} and capsys.readouterr().out == "" and not (tmp_path / "out").exists()


def test_handler_needs_organs(tmp_path):
    with pytest.raises(ValueError, match="at least one organ"):
        ComparisonHandler(None, "unet", "espnet", [], tmp_path)
