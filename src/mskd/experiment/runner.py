"""Running an experiment matrix: the data, the bundle runs as subprocesses, their scheduling and MLflow nesting.

Every run is the same ``monai.bundle run`` a user types — train stack, then the same stack plus ``evaluate.json`` —
launched as a subprocess with its overrides written to a JSON file that is stacked last (kept in
``<workdir>/configs``). All runs log to one MLflow store, nested under one parent run; a run whose result file exists
is skipped, so an interrupted matrix resumes where it stopped. Loss weights are chosen on the validation split (the
bundle's ``num_val_cases`` held out of the training split) from ``candidates``, never on the test cases.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mskd.bundle import Bundle
from mskd.experiment.plan import Workdir, chosen_runs, evaluation_run_name, plan_runs, teacher_run_name
from mskd.experiment.report import finished_rows, parameter_counts, summarise_results, write_outputs
from mskd.experiment.spec import ExperimentError, RunSpec, load_experiment
from mskd.io import atomic_open

__all__ = ["run_experiment"]


def _dataset(cfg: Mapping[str, Any], workdir: Workdir) -> tuple[Path, str, str]:
    """The data the runs train on: ``(dataset_dir, data_format, task)``, generating phantoms once if configured."""
    data = cfg["data"]
    if "dataset_dir" in data:
        return (
            Path(data["dataset_dir"]).resolve(),
            data.get("data_format", "msd"),
            cfg["overrides"].get("task", "synapse"),
        )
    from mskd.data.phantom import generate_phantom_dataset

    phantom = {"task": "synapse", **data["phantom"]}
    phantom["size"] = tuple(phantom.get("size", (96, 96, 48)))
    wanted = {**phantom, "size": list(phantom["size"])}
    stamp = workdir.data_stamp
    previous = json.loads(stamp.read_text()) if stamp.is_file() else None
    if previous is not None and previous != wanted and workdir.has_results():
        # resuming would mix runs (and resume checkpoints) made on other data with runs on the new data
        raise ExperimentError(
            f"{cfg['path']}: data.phantom is now {wanted} but the runs in {workdir.root} were made on {previous}; "
            "use another workdir, or delete that one to start the matrix anew"
        )
    if previous != wanted:
        generate_phantom_dataset(workdir.data, progress=True, **phantom)
        with atomic_open(stamp, "w") as f:
            json.dump(wanted, f)
    return workdir.data, "msd", phantom["task"]


def _base_overrides(cfg: Mapping[str, Any], workdir: Workdir, dataset: tuple[Path, str, str]) -> dict[str, Any]:
    """Overrides every run shares: data, where things go, the teacher, tracking on, per-run checkpoint names."""
    dataset_dir, data_format, task = dataset
    return {
        "task": task,
        **cfg["overrides"],
        "dataset_dir": str(dataset_dir),
        "data_format": data_format,
        "output_dir": str(workdir.output),
        "ckpt_dir": str(workdir.models),
        "experiment_name": f"mskd_{cfg['name']}",
        "teacher": cfg["teacher"]["network"],
        "mlflow": True,
        "register_model": False,  # a matrix compares methods: its students are not models to register and serve
        # every run keeps its own best-validation checkpoint (<run>.pt); distillation always uses the one teacher
        "teacher_ckpt": str(workdir.checkpoint(teacher_run_name(cfg))),
    }


def _bundle(
    cfg: Mapping[str, Any], run: RunSpec, stack: Sequence[str], overrides: Path, log: Path, threads: int
) -> None:
    """Run one bundle workflow in a subprocess (its own interpreter, threads and memory); raise with its log tail."""
    command = Bundle(cfg["bundle"]).command([*stack, str(overrides)])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `mskd` sets it: no spinning threads when the runs share cores
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"$ {' '.join(command)}\n")
        f.flush()
        code = subprocess.call(command, stdout=f, stderr=subprocess.STDOUT, env=env)
    if code != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-15:]
        raise RuntimeError(f"run {run.name} failed (exit {code}); full log {log}; last lines:\n" + "\n".join(tail))


def _read_summary(path: Path) -> dict[str, float]:
    """Mean Dice and HD95 (mm) per organ and overall from an evaluation's ``*_metrics_summary.csv``."""
    row: dict[str, float] = {}
    with open(path, encoding="utf-8", newline="") as f:
        for r in csv.DictReader(f):
            organ = r["organ"]
            row[f"dice_{organ}"] = float(r["dice_mean"]) if r["dice_mean"] else math.nan
            row[f"hd95_{organ}"] = float(r["hd95_mm_mean"]) if r["hd95_mm_mean"] else math.nan
    return row


def _validation_curve(client: Any, experiment_id: str, name: str) -> tuple[list[list[float]], int | None]:
    """The training run ``name``'s validation curve ``[[epoch, val_mean_dice], ...]`` and its steps per epoch."""
    runs = client.search_runs(
        [experiment_id], filter_string=f"attributes.run_name = '{name}'", order_by=["attributes.start_time DESC"]
    )
    if not runs:
        return [], None
    history = client.get_metric_history(runs[0].info.run_id, "val_mean_dice")
    steps = runs[0].data.params.get("steps_per_epoch")
    return sorted([m.step, m.value] for m in history), None if steps is None else int(steps)


def _adopt(client: Any, experiment_id: str, name: str, parent: str, tags: Mapping[str, str]) -> None:
    """Nest the training run ``name`` under the experiment's parent run, and its test runs (already nested under it
    by the bundle, see :class:`mskd.tracking.RunTagsHandler`) too where they are not; tag them all."""
    for run_name, nest in ((name, True), (evaluation_run_name(name), False)):
        for r in client.search_runs([experiment_id], filter_string=f"attributes.run_name = '{run_name}'"):
            if nest or "mlflow.parentRunId" not in r.data.tags:
                client.set_tag(r.info.run_id, "mlflow.parentRunId", parent)
            for key, value in tags.items():
                client.set_tag(r.info.run_id, key, value)


class _Matrix:
    """Executes the runs of one experiment (shared state: the workdir, the data, the store, the parent run)."""

    def __init__(self, cfg: dict[str, Any], workdir: Workdir) -> None:
        from mlflow.tracking import MlflowClient

        from mskd.tracking import open_run, tracking_uri

        self.cfg, self.workdir = cfg, workdir
        workdir.make()
        self.dataset = _dataset(cfg, workdir)
        self.base = _base_overrides(cfg, workdir, self.dataset)
        self.uri = tracking_uri(workdir.output)
        self.client = MlflowClient(tracking_uri=self.uri)
        parent_file = workdir.parent_run_file
        self.parent = parent_file.read_text().strip() if parent_file.is_file() else None
        if self.parent is not None:  # resuming: the same parent run gathers the new children
            self.client.update_run(self.parent, status="RUNNING")
        else:
            self.parent = open_run(self.uri, f"mskd_{cfg['name']}", cfg["name"])
            with atomic_open(parent_file, "w") as f:
                f.write(self.parent)
        self.experiment_id = self.client.get_run(self.parent).info.experiment_id
        self.client.set_tag(self.parent, "experiment", cfg["name"])

    def execute(self, run: RunSpec, threads: int) -> dict[str, Any]:
        """Train, then evaluate one run; write its result row (the marker that it is finished)."""
        overrides = {**self.base, **run.overrides, "seed": run.seed, "method": run.method}
        if run.label == "teacher":
            overrides.update(self.cfg["teacher"]["overrides"])
        config = self.workdir.config(run.name)
        with atomic_open(config, "w") as f:
            json.dump(overrides, f, indent=2)
        log = self.workdir.log(run.name)
        t0 = time.perf_counter()
        _bundle(self.cfg, run, run.stack, config, log, threads)
        t1 = time.perf_counter()
        _bundle(self.cfg, run, (*run.stack, "evaluate.json"), config, log, threads)
        t2 = time.perf_counter()
        tags = {"experiment": self.cfg["name"], "row": run.label}
        _adopt(self.client, self.experiment_id, run.name, self.parent, tags)
        curve, steps_per_epoch = _validation_curve(self.client, self.experiment_id, run.name)
        row = {
            "run": run.name,
            "student": run.student or self.cfg["teacher"]["network"],
            "method": run.label,
            "candidate": "" if run.candidate is None else run.candidate,
            "seed": run.seed,
            "val_mean_dice_best": max((dice for _, dice in curve), default=math.nan),
            "val_curve": json.dumps(curve),
            "steps_per_epoch": "" if steps_per_epoch is None else steps_per_epoch,
            **_read_summary(self.workdir.test_summary(run.name)),
            "train_s": round(t1 - t0, 1),
            "evaluate_s": round(t2 - t1, 1),
        }
        with atomic_open(self.workdir.result(run.name), "w") as f:
            json.dump(row, f, indent=2)
        return row

    def run_all(self, runs: Sequence[RunSpec], progress: Any) -> None:
        """Run the unfinished ``runs`` with ``jobs`` at a time; the first error stops the matrix."""
        todo = [r for r in runs if not self.workdir.finished(r.name)]
        progress.update(len(runs) - len(todo))
        if not todo:
            return

        # the cores are shared by the runs in flight: a lone run (the teacher) gets them all
        threads = max(self.cfg["threads"], (os.cpu_count() or 1) // min(self.cfg["jobs"], len(todo)))

        def one(run: RunSpec) -> None:
            row = self.execute(run, threads)
            progress.update(1)
            progress.write(
                f"{run.name}: test Dice {100 * row['dice_mean']:.1f}, HD95 {row['hd95_mean']:.1f} mm "
                f"({row['train_s'] + row['evaluate_s']:.0f} s)"
            )

        with ThreadPoolExecutor(max_workers=self.cfg["jobs"]) as pool:
            futures = [pool.submit(one, r) for r in todo]
            try:
                for future in futures:
                    future.result()
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)  # let running runs finish, start no new one
                raise


def _chosen(cfg: Mapping[str, Any], files: Workdir, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """The candidate each ``(student, method)`` chose on validation, among those whose first-seed runs finished."""
    chosen = {}
    for student, method in keys:
        runs = [r for r in plan_runs(cfg) if r.student == student and r.label == method]
        if runs and all(files.finished(r.name) for r in runs):
            scores = [files.read_result(r.name)["val_mean_dice_best"] for r in runs]
            chosen[(student, method)] = max(
                range(len(scores)), key=lambda i: -math.inf if math.isnan(scores[i]) else scores[i]
            )
    return chosen


def _report(cfg: dict[str, Any], files: Workdir, keys: Sequence[tuple[str, str]]) -> Path:
    """Write the tables and the figure of the finished runs, training nothing (``--report-only``)."""
    from mskd.data import organ_names

    if not files.has_results():
        raise ExperimentError(f"{cfg['path']}: no finished run in {files.root} to report")
    task = (
        cfg["overrides"].get("task", "synapse")
        if "dataset_dir" in cfg["data"]
        else cfg["data"]["phantom"].get("task", "synapse")
    )
    organs = organ_names(task)
    total = len(plan_runs(cfg, {key: 0 for key in keys}))
    rows = finished_rows(cfg, files, _chosen(cfg, files, keys))
    out = write_outputs(cfg, rows, organs, parameter_counts(cfg, len(organs) + 1), None, total)
    print((out / "results.md").read_text(encoding="utf-8"))
    return out


def run_experiment(
    config: str | os.PathLike,
    workdir: str | os.PathLike | None = None,
    dry_run: bool = False,
    allow_code: bool = False,
    report_only: bool = False,
) -> Path:
    """Run (or resume) an experiment matrix and write its results.

    Args:
        config: the experiment YAML file.
        workdir: where data, checkpoints, logs, per-run overrides and the MLflow store go (default: the file's
            ``workdir``, else ``experiments/<name>``).
        dry_run: only print the planned runs (nothing is trained or written).
        report_only: train nothing; rewrite the tables and the figure from the runs finished so far (those of
            another invocation still running included), so that results can be committed as they land.
        allow_code: accept overrides that run Python code (see :func:`~mskd.experiment.load_experiment`).

    Returns:
        the folder with ``results.csv``, ``results.md`` and ``dice.png``.

    Raises:
        FileNotFoundError: for a missing experiment file or bundle.
        ExperimentError: for a malformed experiment file.
        RuntimeError: when a run fails (the message names the run and its log).
    """
    from tqdm.auto import tqdm

    from mskd.data import organ_names

    cfg = load_experiment(config, allow_code)
    if workdir is not None:
        cfg["workdir"] = Path(workdir).resolve()
    with_candidates = [
        (s, m)
        for s in cfg["students"]
        for m, spec in cfg["methods"].items()
        if spec["candidates"] and s in spec["students"]
    ]
    if dry_run:
        full = {key: 0 for key in with_candidates}
        for run in plan_runs(cfg, full):
            print(f"{run.name}  [{' + '.join(run.stack)}]  {json.dumps(run.overrides, sort_keys=True)}")
        if with_candidates:
            print("(each method with candidates runs the chosen candidate's other seeds; candidate 0 shown)")
        return cfg["output"]

    files = Workdir(cfg["workdir"])
    if report_only:
        return _report(cfg, files, with_candidates)
    started = time.perf_counter()
    matrix = _Matrix(cfg, files)
    organs = organ_names(matrix.dataset[2])
    first = plan_runs(cfg)
    total = len(plan_runs(cfg, {key: 0 for key in with_candidates}))
    params = parameter_counts(cfg, len(organs) + 1)
    with tqdm(total=total, desc=f"experiment {cfg['name']}", unit="run", disable=None) as progress:
        matrix.run_all(first[:1], progress)  # the teacher, before anyone distils from it
        chosen: dict[tuple[str, str], int] = {}
        # method by method, in the file's order (its order of importance): a method's chosen candidate runs its
        # other seeds before the next method starts, so an interrupted matrix has its first rows complete
        for method in cfg["methods"]:
            matrix.run_all([r for r in first[1:] if r.label == method], progress)
            chosen.update(_chosen(cfg, files, [(s, m) for s, m in with_candidates if m == method]))
            matrix.run_all([r for r in chosen_runs(cfg, chosen) if r.label == method], progress)
            # the tables so far (after the last method: the final ones), so that the results of a long matrix can be
            # read and committed as they land
            rows = finished_rows(cfg, files, chosen)
            out = write_outputs(cfg, rows, organs, params, time.perf_counter() - started, total)

    for name in ("results.csv", "results.md", "dice.png"):
        matrix.client.log_artifact(matrix.parent, str(out / name))
    for s in summarise_results(rows, organs):
        key = f"{s['student']}.{s['method']}.test_mean_dice"
        matrix.client.log_metric(matrix.parent, key, s["dice_mean"])
    matrix.client.set_terminated(matrix.parent, "FINISHED")
    print((out / "results.md").read_text(encoding="utf-8"))
    return out
