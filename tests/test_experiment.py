"""The experiment package: file checks (spec), the run plan and workdir files (plan), the summary maths and report
(report), the runner's pieces, and a tiny matrix end to end (resumed)."""

import csv
import json
import math
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from mskd.experiment import (
    ExperimentError,
    chosen_runs,
    format_results,
    learning_speed,
    load_experiment,
    plan_runs,
    run_experiment,
    summarise_results,
)
from mskd.experiment.plan import Workdir, evaluation_run_name, run_name, teacher_run_name
from mskd.experiment.report import finished_rows, parameter_counts
from mskd.experiment.runner import _base_overrides, _read_summary
from mskd.networks import count_parameters, get_network

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "configs" / "experiments"
BUNDLE = ROOT / "bundles" / "mskd_synapse"
TINY_DATA = {"phantom": {"task": "synapse", "cases": 5, "test_cases": 1, "size": [32, 32, 16], "seed": 0}}
TINY = {
    "image_size": 32,
    "max_epochs": 1,
    "val_interval": 1,
    "batch_size": 2,
    "slices_per_volume": 2,
    "num_val_cases": 1,
    "val_slice_batch": 8,
}


def write(tmp_path: Path, cfg: dict, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def small_cfg(**changes) -> dict:
    cfg = {
        "name": "tiny",
        "bundle": str(BUNDLE),
        "data": TINY_DATA,
        "overrides": dict(TINY),
        "teacher": {"network": "unet"},
        "students": {"tiny_unet": {}},
        "seeds": [0, 1],
        "methods": {
            "no_kd": {"distill": False, "seeds": [0]},
            "mskd": {"overrides": {"kd_weight": 0.1}, "candidates": [{"ffd_weight": 0.9}, {"ffd_weight": 0.3}]},
        },
    }
    cfg.update(changes)
    return cfg


@pytest.mark.parametrize(
    "change, message",
    [
        ({"colour": "red"}, "unknown keys ['colour']"),
        ({"seeds": [0, 0]}, "seeds repeats a seed"),
        ({"seeds": []}, "seeds must be a non-empty list"),
        ({"data": {}}, "exactly one of 'phantom'"),
        ({"teacher": {"overrides": {}}}, "teacher needs a 'network'"),
        ({"students": {}}, "students must be a non-empty mapping"),
        ({"overrides": {"learning_rat": 0.2}}, "overrides: learning_rat: no such config key in "),
        ({"overrides": {"learning_rat": 0.2}}, "; did you mean learning_rate?"),
        ({"overrides": {"seed": "$1 + 1"}}, "overrides sets ['seed'] to values that run Python code"),
        ({"students": {"espnet": {"student_kwargs": {"_target_": "os.system"}}}}, "run it with --allow-code"),
        ({"methods": {"no_kd": {"distill": False, "candidates": [{}, {}]}}}, "a non-distilling method has none"),
        ({"methods": {"kd": {"candidates": [{"kd_weight": 0.1}]}}}, "at least two override mappings"),
        ({"methods": {"kd": {"overrides": {"ffd_radius": 2}}}}, "methods.kd.overrides: ffd_radius: "),
        ({"methods": {"teacher": {}}}, "not 'teacher'"),
        ({"name": "a b"}, "name must be letters"),
    ],
)
def test_bad_experiment_files_name_file_and_key(tmp_path, change, message):
    path = write(tmp_path, small_cfg(**change))
    with pytest.raises(ExperimentError) as err:
        load_experiment(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_missing_file_and_bundle(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_experiment(tmp_path / "nope.yaml")
    with pytest.raises(FileNotFoundError, match="no configs/train_teacher.json"):
        load_experiment(write(tmp_path, small_cfg(bundle=str(tmp_path))))
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    with pytest.raises(ExperimentError, match="not valid YAML"):
        load_experiment(tmp_path / "broken.yaml")


def test_plan_teacher_first_candidates_then_winner_seeds(tmp_path):
    cfg = load_experiment(write(tmp_path, small_cfg()))
    names = [r.name for r in plan_runs(cfg)]
    assert names == [
        "unet-teacher-s0",
        "tiny_unet-no_kd-s0",
        "tiny_unet_from_unet-mskd-c0-s0",
        "tiny_unet_from_unet-mskd-c1-s0",
    ]
    chosen = plan_runs(cfg, {("tiny_unet", "mskd"): 1})
    assert [r.name for r in chosen][4:] == ["tiny_unet_from_unet-mskd-c1-s1"]
    winner = chosen[-1]
    assert winner.overrides == {"kd_weight": 0.1, "ffd_weight": 0.3, "student": "tiny_unet"}
    assert winner.stack == ("train_teacher.json", "distill.json") and winner.label == "mskd"
    assert chosen[1].stack == ("train_teacher.json", "train_student.json")


def test_chosen_runs_are_the_winners_other_seeds_wherever_they_sit_in_the_plan(tmp_path):
    # methods after the one with candidates: the winner's other seeds are inside the plan, not at its end
    methods = {**small_cfg()["methods"], "kd": {"overrides": {"kd_weight": 0.1, "ffd_weight": 0.0}}}
    cfg = load_experiment(write(tmp_path, small_cfg(methods=methods, seeds=[0, 1, 2])))
    assert [r.name for r in plan_runs(cfg)][-3:] == [f"tiny_unet_from_unet-kd-s{s}" for s in range(3)]
    added = chosen_runs(cfg, {("tiny_unet", "mskd"): 1})
    assert [r.name for r in added] == ["tiny_unet_from_unet-mskd-c1-s1", "tiny_unet_from_unet-mskd-c1-s2"]
    assert all(r.overrides["ffd_weight"] == 0.3 for r in added)


def rows_for(values: dict[tuple[str, str], list[float]]) -> list[dict]:
    rows = []
    for (student, method), dices in values.items():
        for seed, d in enumerate(dices):
            rows.append(
                {"student": student, "method": method, "seed": seed, "dice_mean": d, "hd95_mean": 10 * d}
                | {"dice_liver": d, "hd95_liver": 1.0, "train_s": 60, "evaluate_s": 0}
            )
    return rows


def test_summary_mean_and_sample_std_and_gap_closed(tmp_path):
    rows = rows_for(
        {
            ("unet", "teacher"): [0.8],
            ("enet", "no_kd"): [0.5, 0.7],  # mean 0.6, sample std sqrt(0.02) = 0.1414
            ("enet", "kd"): [0.7, 0.7],  # closes (0.7 - 0.6) / (0.8 - 0.6) = 50 %
        }
    )
    rows.append(rows[-1] | {"dice_mean": 0.0, "selected": False})  # an unchosen candidate is left out
    summary = summarise_results(rows, ["liver"])
    no_kd = next(s for s in summary if s["method"] == "no_kd")
    assert no_kd["seeds"] == 2 and no_kd["dice_mean"] == pytest.approx(0.6)
    assert no_kd["dice_mean_std"] == pytest.approx(math.sqrt(0.02))
    assert math.isnan(next(s for s in summary if s["method"] == "teacher")["dice_mean_std"])
    cfg = load_experiment(write(tmp_path, small_cfg(methods={"no_kd": {"distill": False}, "kd": {}})))
    text = format_results(cfg, rows, ["liver"], {"enet": 1234}, wall_s=120)
    assert "| enet | no_kd | 2 | 1,234 | 60.0 ± 14.1 | 6.0 ± 1.4 |  |" in text
    assert "| enet | kd | 2 | 1,234 | 70.0 ± 0.0 | 7.0 ± 0.0 | +50 % |" in text
    assert "| unet | teacher | 1 | 0 | 80.0 | 8.0 |" in text  # a network without a count shows 0
    # latency is not timed in the report: the header names the benchmark and its flags for these networks and inputs
    assert "CPU ms" not in text
    assert "`--networks unet tiny_unet --size 32 --threads " in text and "--classes 2`" in text
    assert "`benchmarks/networks.py` measures it" in text
    assert "sum of run times 6.0 min" in text  # six runs of a minute: the unchosen candidate ran too
    assert "Partial" not in text
    partial = format_results(cfg, rows, ["liver"], {}, wall_s=120, planned=9)
    assert "**Partial: 6 of the 9 planned runs have finished**" in partial


@pytest.mark.e2e
def test_tiny_matrix_end_to_end_nested_and_resumable(tmp_path, capsys):
    out = tmp_path / "results"
    path = write(tmp_path, small_cfg(output=str(out), jobs=2))
    run_experiment(path, workdir=tmp_path / "work")
    with open(out / "results.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == [
        "unet-teacher-s0",
        "tiny_unet-no_kd-s0",
        "tiny_unet_from_unet-mskd-c0-s0",
        "tiny_unet_from_unet-mskd-c1-s0",
        f"tiny_unet_from_unet-mskd-c{rows[-1]['candidate']}-s1",
    ]
    val = {int(r["candidate"]): float(r["val_mean_dice_best"]) for r in rows[2:4]}
    assert int(rows[-1]["candidate"]) == max(val, key=val.get)  # chosen on validation, not on test
    assert all(0 <= float(r["dice_mean"]) <= 1 for r in rows)
    md = (out / "results.md").read_text(encoding="utf-8")
    assert "| tiny_unet | mskd | 2 |" in md and "## Loss weights chosen on the validation split" in md
    assert (out / "dice.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'work' / 'output' / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("mskd_tiny")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    parent = runs["tiny"]
    assert parent.info.status == "FINISHED"
    children = [r for r in runs.values() if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in children) == sorted(row["run"] for row in rows)  # the trainings
    for row in rows:  # each test evaluation nested under the training it evaluates
        assert runs[f"{row['run']}-test"].data.tags["mlflow.parentRunId"] == runs[row["run"]].info.run_id
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"results.csv", "results.md", "dice.png"}

    # re-running skips every finished run: nothing new in the store, the same parent
    capsys.readouterr()
    run_experiment(path, workdir=tmp_path / "work")
    again = client.search_runs([experiment.experiment_id])
    assert len(again) == len(runs)
    assert json.loads((tmp_path / "work" / "results" / "unet-teacher-s0.json").read_text())["run"] == "unet-teacher-s0"

    # --report-only rewrites the same tables from the stored runs, training nothing and opening no run
    (out / "results.csv").unlink()
    run_experiment(path, workdir=tmp_path / "work", report_only=True)
    with open(out / "results.csv", encoding="utf-8") as f:
        assert list(csv.DictReader(f)) == rows
    assert "tables rewritten from the stored runs" in (out / "results.md").read_text(encoding="utf-8")
    assert len(client.search_runs([experiment.experiment_id])) == len(runs)


def test_a_failing_run_names_itself_and_its_log(tmp_path):
    cfg = small_cfg(methods={"no_kd": {"distill": False, "seeds": [0]}})
    cfg["teacher"] = {"network": "unet", "overrides": {"max_epochs": -1}}
    with pytest.raises(RuntimeError, match=r"run unet-teacher-s0 failed \(exit \d+\); full log .*unet-teacher-s0.log"):
        run_experiment(write(tmp_path, cfg), workdir=tmp_path / "work")
    assert not (tmp_path / "work" / "results" / "unet-teacher-s0.json").exists()


# the paper recipes override the optimiser with SGD, a _target_: they run only with --allow-code
RUN_CODE = {"synapse_paper.yaml", "kits_paper.yaml"}


@pytest.mark.parametrize("name", sorted(p.name for p in EXPERIMENTS.glob("*.yaml")))
def test_shipped_experiment_files_are_valid(name):
    cfg = load_experiment(EXPERIMENTS / name, allow_code=name in RUN_CODE)
    assert len(plan_runs(cfg)) > 1
    if name in RUN_CODE:
        with pytest.raises(ExperimentError, match=r"overrides sets \['optimizer'\] to values that run Python code"):
            load_experiment(EXPERIMENTS / name)


@pytest.mark.e2e
@pytest.mark.parametrize("name", ["synapse_paper.yaml", "kits_paper.yaml"])
def test_paper_configs_two_iteration_smoke(tmp_path, name):
    """The GPU recipe (TransUNet teacher, SGD, every row) as shipped, shrunk to two iterations on tiny phantoms."""
    cfg = yaml.safe_load((EXPERIMENTS / name).read_text(encoding="utf-8"))
    full = load_experiment(EXPERIMENTS / name, allow_code=True)
    assert full["overrides"]["image_size"] == 224 and full["teacher"]["network"] == "transunet"
    assert len(full["students"]) >= 4 and {"no_kd", "kd", "mskd", "emkd", "cwd", "ifvd", "skd"} <= set(full["methods"])
    phantom = {**TINY_DATA["phantom"], "cases": 4, "task": cfg["overrides"]["task"]}
    cfg.update(data={"phantom": phantom}, students={"enet": {}}, seeds=[0], output=str(tmp_path / "out"))
    cfg["bundle"] = str(ROOT / cfg["bundle"])
    # 2 training volumes x 2 slices / batch 2 = two iterations; the optimiser, rows and options as shipped. The
    # teacher is TransUNet's scaled-down variant: the full one writes ~1 GB of checkpoints per run (asserted above)
    cfg["teacher"]["network"] = "transunet_small"
    cfg["overrides"].update(TINY, num_workers=0, teacher_kwargs={"img_size": 32})
    mskd = cfg["methods"]["mskd"]
    cfg["methods"] = {"mskd": {"overrides": {**mskd["overrides"], **mskd["candidates"][0]}}}
    run_experiment(write(tmp_path, cfg), workdir=tmp_path / "work", allow_code=True)
    rows = list(csv.DictReader(open(tmp_path / "out" / "results.csv", encoding="utf-8")))
    assert [r["run"] for r in rows] == ["transunet_small-teacher-s0", "enet_from_transunet_small-mskd-s0"]
    executed = json.loads((tmp_path / "work" / "configs" / "enet_from_transunet_small-mskd-s0.json").read_text())
    assert executed["optimizer"]["_target_"] == "torch.optim.SGD" and executed["optimizer"]["momentum"] == 0.9
    log = (tmp_path / "work" / "logs" / "enet_from_transunet_small-mskd-s0.log").read_text(encoding="utf-8")
    assert "Engine run resuming from iteration 0, epoch 0 until 1 epochs" in log


def test_learning_speed_from_validation_curves():
    # converged Dice of enet = mean best validation of its no-KD runs = (0.6 + 0.8) / 2 = 0.7; target 0.9 * 0.7 = 0.63
    curve = lambda *points: json.dumps([[5 * (i + 1), d] for i, d in enumerate(points)])  # noqa: E731
    rows = [
        {"student": "enet", "method": "no_kd", "val_mean_dice_best": 0.6, "val_curve": curve(0.3, 0.5, 0.6)},
        {"student": "enet", "method": "no_kd", "val_mean_dice_best": 0.8, "val_curve": curve(0.4, 0.7, 0.8)},
        {"student": "enet", "method": "kd", "val_mean_dice_best": 0.7, "val_curve": curve(0.65, 0.7, 0.7)},
        {"student": "enet", "method": "kd", "val_mean_dice_best": 0.7, "val_curve": curve(0.2, 0.5, 0.6)},
    ]
    rows = [r | {"steps_per_epoch": 3, "seed": i} for i, r in enumerate(rows)]
    speed = learning_speed(rows, "no_kd", short_epochs=12)
    # short budget: the last validation at or before epoch 12 is epoch 10 (the second point)
    assert [r["val_dice_short"] for r in speed] == [0.5, 0.7, 0.7, 0.5]
    # first validation >= 0.63: never, epoch 10 (30 steps), epoch 5 (15 steps), never
    steps = [r["steps_to_target"] for r in speed]
    assert math.isnan(steps[0]) and steps[1:3] == [30, 15] and math.isnan(steps[3])
    summary = {s["method"]: s for s in summarise_results(speed, [])}
    assert summary["kd"]["steps_to_target"] == 15 and summary["kd"]["steps_to_target_reached"] == 1
    assert summary["kd"]["val_dice_short"] == pytest.approx(0.6)
    # without a short budget there is no short-budget value; a run without a curve reaches nothing
    bare = learning_speed([{"student": "enet", "method": "kd", "val_mean_dice_best": 0.5}], "no_kd", None)[0]
    assert math.isnan(bare["val_dice_short"]) and math.isnan(bare["steps_to_target"])


def test_report_only_needs_finished_runs(tmp_path):
    with pytest.raises(ExperimentError, match="no finished run in .* to report"):
        run_experiment(write(tmp_path, small_cfg()), workdir=tmp_path / "empty", report_only=True)


def test_changed_data_is_refused_where_runs_were_made_on_other_data(tmp_path):
    work = tmp_path / "work"
    (work / "results").mkdir(parents=True)
    (work / "data.json").write_text(json.dumps({**TINY_DATA["phantom"], "seed": 7}))
    (work / "results" / "unet-teacher-s0.json").write_text("{}")
    with pytest.raises(ExperimentError, match=r"data.phantom is now .* but the runs in .*work were made on"):
        run_experiment(write(tmp_path, small_cfg()), workdir=work)
    assert not (work / "data" / "dataset.json").exists()  # nothing regenerated over the old runs' data


@pytest.mark.parametrize(
    "model, method, seed, expected",
    [
        ("unet", "teacher", 0, "unet-teacher-s0"),
        ("tiny_unet", "no_kd", 2, "tiny_unet-no_kd-s2"),
        ("tiny_unet_from_unet", "mskd-c1", 0, "tiny_unet_from_unet-mskd-c1-s0"),
    ],
)
def test_run_names(model, method, seed, expected):
    assert run_name(model, method, seed) == expected
    assert evaluation_run_name(expected) == f"{expected}-test"


def test_every_file_of_a_run_is_named_after_it(tmp_path):
    files = Workdir(tmp_path)
    name = "tiny_unet_from_unet-mskd-c1-s0"
    assert files.config(name) == tmp_path / "configs" / f"{name}.json"
    assert files.log(name) == tmp_path / "logs" / f"{name}.log"
    assert files.result(name) == tmp_path / "results" / f"{name}.json"
    assert files.checkpoint(name) == tmp_path / "models" / f"{name}.pt"
    assert files.test_summary(name) == tmp_path / "output" / f"{name}-test_metrics_summary.csv"
    assert (files.data, files.data_stamp, files.parent_run_file) == (
        tmp_path / "data",
        tmp_path / "data.json",
        tmp_path / "parent_run_id",
    )
    files.make()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["configs", "logs", "models", "output", "results"]
    assert not files.finished(name) and not files.has_results()
    files.result(name).write_text(json.dumps({"run": name}))
    assert files.finished(name) and files.has_results() and files.read_result(name) == {"run": name}


def test_every_run_distils_from_the_teacher_runs_checkpoint(tmp_path):
    cfg = load_experiment(write(tmp_path, small_cfg()))
    files = Workdir(tmp_path / "work")
    base = _base_overrides(cfg, files, (tmp_path / "data", "msd", "synapse"))
    assert teacher_run_name(cfg) == plan_runs(cfg)[0].name == "unet-teacher-s0"
    assert base["teacher_ckpt"] == str(tmp_path / "work" / "models" / "unet-teacher-s0.pt")
    assert (base["output_dir"], base["ckpt_dir"]) == (str(files.output), str(files.models))
    assert base["experiment_name"] == "mskd_tiny" and base["image_size"] == 32 and base["dataset_dir"].endswith("data")
    assert base["register_model"] is False  # a matrix registers no model


def test_read_summary_takes_dice_and_hd95_per_organ(tmp_path):
    path = tmp_path / "r-test_metrics_summary.csv"
    path.write_text("organ,n,dice_mean,hd95_mm_mean\nliver,2,0.9,12.5\ngallbladder,2,0.0,\nmean,2,0.45,12.5\n")
    row = _read_summary(path)
    assert row["dice_liver"] == 0.9 and row["hd95_liver"] == 12.5 and row["dice_mean"] == 0.45
    assert row["dice_gallbladder"] == 0.0 and math.isnan(row["hd95_gallbladder"])  # no HD95: an empty cell


def test_finished_rows_in_plan_order_with_unchosen_candidates_marked(tmp_path):
    cfg = load_experiment(write(tmp_path, small_cfg()))
    files = Workdir(tmp_path / "work")
    files.make()
    chosen = {("tiny_unet", "mskd"): 1}
    runs = plan_runs(cfg, chosen)
    for run in reversed(runs[:4]):  # written out of order; the teacher, no_kd, both candidates; not the last seed
        files.result(run.name).write_text(json.dumps({"run": run.name}))
    rows = finished_rows(cfg, files, chosen)
    assert [r["run"] for r in rows] == [r.name for r in runs[:4]]
    assert [r["selected"] for r in rows] == [True, True, False, True]  # candidate 0 was not chosen


def test_parameter_counts_build_the_networks_as_the_runs_do(tmp_path):
    overrides = {**TINY, "teacher_kwargs": {"num_res_units": 0}}
    students = {"tiny_unet": {"student_kwargs": {"num_res_units": 0}}, "enet": {}}
    cfg = load_experiment(write(tmp_path, small_cfg(overrides=overrides, students=students)))
    counts = parameter_counts(cfg, 3)
    assert counts == {
        "unet": count_parameters(get_network("unet", 1, 3, num_res_units=0)),
        "tiny_unet": count_parameters(get_network("tiny_unet", 1, 3, num_res_units=0)),
        "enet": count_parameters(get_network("enet", 1, 3)),
    }
    assert counts["tiny_unet"] < count_parameters(get_network("tiny_unet", 1, 3))
