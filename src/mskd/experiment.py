"""`mskd experiment`: a matrix of teacher / student / distillation-method / seed runs through the bundle.

An experiment file (YAML) names a bundle, the data, a teacher, the students, the methods (each a set of
overrides of the bundle's ``distill.json``, or the plain student) and the seeds. Every run is the same
``monai.bundle run`` a user types — train stack, then the same stack plus ``evaluate.json`` — launched as a
subprocess with its overrides written to a JSON file that is stacked last (kept in ``<workdir>/configs``).
All runs log to one MLflow store, nested under one parent run; a run whose result file exists is skipped, so an
interrupted matrix resumes where it stopped. Loss weights are chosen on the validation split (the bundle's
``num_val_cases`` held out of the training split) from ``candidates``, never on the test cases.

Outputs in ``output`` (default ``docs/results/<name>``): ``results.csv`` (one row per run),
``results.md`` (mean ± std over seeds) and ``dice.png`` (bar chart).
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mskd.io import atomic_open

__all__ = [
    "RunSpec",
    "chosen_runs",
    "learning_speed",
    "load_experiment",
    "plan_runs",
    "run_experiment",
    "summarise_results",
    "format_results",
]

_TOP_KEYS = {
    "name",
    "description",
    "bundle",
    "output",
    "workdir",
    "jobs",
    "threads",
    "data",
    "overrides",
    "teacher",
    "students",
    "methods",
    "seeds",
    "short_epochs",
}
_METHOD_KEYS = {"distill", "overrides", "seeds", "candidates", "students"}
_PHANTOM_KEYS = {"task", "cases", "test_cases", "size", "seed", "difficulty", "fov_jitter"}


class ExperimentError(ValueError):
    """An experiment file that cannot be run (the message names the file and the key)."""


@dataclass(frozen=True)
class RunSpec:
    """One bundle run of the matrix.

    Attributes:
        name: the bundle's run name, ``<model>-<method>-s<seed>`` (MLflow run name and checkpoint stem).
        label: the row this run belongs to in the results table (the method name, ``teacher`` for the teacher).
        student: the student network (``None`` for the teacher run).
        method: the bundle's ``method`` value (the method name, with ``-c<i>`` for a weight candidate).
        seed: random seed.
        stack: config files of the bundle, in order.
        overrides: values stacked last (as a JSON file).
        candidate: index of the weight candidate, or ``None``.
    """

    name: str
    label: str
    student: str | None
    method: str
    seed: int
    stack: tuple[str, ...]
    overrides: dict[str, Any] = field(default_factory=dict)
    candidate: int | None = None


def _fail(path: Path, message: str) -> ExperimentError:
    return ExperimentError(f"{path}: {message}")


def _check_keys(path: Path, where: str, value: Any, allowed: set[str]) -> dict:
    if not isinstance(value, Mapping):
        raise _fail(path, f"{where} must be a mapping, got {type(value).__name__}")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise _fail(path, f"{where} has unknown keys {unknown}; allowed: {sorted(allowed)}")
    return dict(value)


def _check_seeds(path: Path, where: str, seeds: Any) -> list[int]:
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise _fail(path, f"{where} must be a non-empty list of integers >= 0, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise _fail(path, f"{where} repeats a seed: {seeds!r}")
    return seeds


def load_experiment(path: str | os.PathLike, allow_code: bool = False) -> dict[str, Any]:
    """Read and check an experiment file; returns it with defaults filled in.

    Args:
        path: the YAML file.
        allow_code: accept overrides whose values run Python code (``$`` expressions, ``_target_``, ``%`` file
            macros); without it such a file is refused.

    Returns:
        the experiment as a dict (``bundle``, ``output`` and ``workdir`` resolved against the current folder).

    Raises:
        FileNotFoundError: when the file or its bundle does not exist.
        ExperimentError: (a ``ValueError``) for a malformed file, naming the file and the key.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"experiment file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise _fail(path, f"not valid YAML ({str(e).splitlines()[0]})") from e
    cfg = _check_keys(path, "the experiment", raw, _TOP_KEYS)
    for key in ("name", "teacher", "students", "methods", "data"):
        if key not in cfg:
            raise _fail(path, f"missing required key {key!r}")
    if not isinstance(cfg["name"], str) or not cfg["name"].replace("_", "").isalnum():
        raise _fail(path, f"name must be letters, digits and '_', got {cfg['name']!r}")
    cfg["bundle"] = Path(cfg.get("bundle", "bundles/mskd_synapse")).resolve()
    if not (cfg["bundle"] / "configs" / "train_teacher.json").is_file():
        raise FileNotFoundError(f"{path}: bundle {cfg['bundle']} has no configs/train_teacher.json")
    cfg["output"] = Path(cfg.get("output", f"docs/results/{cfg['name']}")).resolve()
    cfg["workdir"] = Path(cfg.get("workdir", f"experiments/{cfg['name']}")).resolve()
    cfg["jobs"] = int(cfg.get("jobs", 1))
    cfg["threads"] = int(cfg.get("threads", max(1, (os.cpu_count() or 1) // cfg["jobs"])))
    if cfg["jobs"] < 1 or cfg["threads"] < 1:
        raise _fail(path, f"jobs and threads must be >= 1, got jobs={cfg['jobs']} threads={cfg['threads']}")
    cfg["overrides"] = dict(_check_keys(path, "overrides", cfg.get("overrides", {}), set(cfg.get("overrides", {}))))
    cfg["seeds"] = _check_seeds(path, "seeds", cfg.get("seeds", [0]))
    short = cfg.setdefault("short_epochs", None)
    if short is not None and (isinstance(short, bool) or not isinstance(short, int) or short < 1):
        raise _fail(path, f"short_epochs must be an integer >= 1 (epochs of the matched short budget), got {short!r}")

    data = _check_keys(path, "data", cfg["data"], {"phantom", "dataset_dir", "data_format"})
    if ("phantom" in data) == ("dataset_dir" in data):
        raise _fail(path, "data needs exactly one of 'phantom' (generated) or 'dataset_dir' (existing data)")
    if "phantom" in data:
        data["phantom"] = _check_keys(path, "data.phantom", data["phantom"], _PHANTOM_KEYS)
    cfg["data"] = data

    teacher = _check_keys(path, "teacher", cfg["teacher"], {"network", "overrides"})
    if "network" not in teacher:
        raise _fail(path, "teacher needs a 'network'")
    cfg["teacher"] = {"network": teacher["network"], "overrides": dict(teacher.get("overrides") or {})}

    students = cfg["students"]
    if not isinstance(students, Mapping) or not students:
        raise _fail(path, "students must be a non-empty mapping of network name to its overrides")
    cfg["students"] = {name: dict(v or {}) for name, v in students.items()}

    methods = cfg["methods"]
    if not isinstance(methods, Mapping) or not methods:
        raise _fail(path, "methods must be a non-empty mapping of method name to its settings")
    parsed = {}
    for name, spec in methods.items():
        if not isinstance(name, str) or not name.replace("_", "").isalnum() or name == "teacher":
            raise _fail(path, f"method names must be letters, digits and '_' (not 'teacher'), got {name!r}")
        spec = _check_keys(path, f"methods.{name}", spec or {}, _METHOD_KEYS)
        candidates = spec.get("candidates")
        if candidates is not None and (
            not isinstance(candidates, list)
            or len(candidates) < 2
            or not all(isinstance(c, Mapping) for c in candidates)
        ):
            raise _fail(path, f"methods.{name}.candidates must be a list of at least two override mappings")
        if candidates is not None and not spec.get("distill", True):
            raise _fail(path, f"methods.{name}: candidates are loss-weight choices; a non-distilling method has none")
        only = spec.get("students", list(cfg["students"]))
        if not isinstance(only, list) or not only or not set(only) <= set(cfg["students"]):
            raise _fail(path, f"methods.{name}.students must be a non-empty list of the students, got {only!r}")
        parsed[name] = {
            "distill": bool(spec.get("distill", True)),
            "students": only,
            "overrides": dict(spec.get("overrides") or {}),
            "seeds": _check_seeds(path, f"methods.{name}.seeds", spec.get("seeds", cfg["seeds"])),
            "candidates": [dict(c) for c in candidates] if candidates else None,
        }
    cfg["methods"] = parsed
    cfg["path"] = path.resolve()
    _check_overrides(path, cfg, allow_code)
    return cfg


def _check_overrides(path: Path, cfg: Mapping[str, Any], allow_code: bool) -> None:
    """Every override must name a key of the stack it is stacked on (a typo would otherwise change nothing), and
    none may run Python code (``$``, ``_target_``, a ``%`` file macro) unless ``allow_code``."""
    from mskd.overrides import code_in_overrides, unknown_keys

    configs = cfg["bundle"] / "configs"
    student = [configs / "train_teacher.json", configs / "train_student.json"]
    distill = [configs / "train_teacher.json", configs / "distill.json"]
    checks = [("overrides", cfg["overrides"], (student, distill))]
    checks.append(("teacher.overrides", cfg["teacher"]["overrides"], (student,)))
    checks += [(f"students.{s}", o, (student, distill)) for s, o in cfg["students"].items()]
    for name, spec in cfg["methods"].items():
        stack = distill if spec["distill"] else student
        checks.append((f"methods.{name}.overrides", spec["overrides"], (stack,)))
        checks += [(f"methods.{name}.candidates[{i}]", c, (stack,)) for i, c in enumerate(spec["candidates"] or [])]
    for where, overrides, stacks in checks:
        if not allow_code and (code := code_in_overrides(overrides)):
            raise _fail(
                path,
                f"{where} sets {code} to values that run Python code ($ expressions, _target_ or % file macros); "
                "if you trust this file, run it with --allow-code",
            )
        keys = [k.lstrip("+") for k in overrides]
        for stack in stacks:
            if unknown := unknown_keys(stack, keys):
                raise _fail(path, f"{where}: {unknown[0]}")


def _run_name(model: str, method: str, seed: int) -> str:
    from mskd.tracking import run_name

    return run_name(model, method, seed)


def _method_runs(
    cfg: Mapping[str, Any], student: str, method: str, candidate: int | None, seeds: Sequence[int]
) -> list[RunSpec]:
    """The runs of one (student, method) for ``seeds``, with the overrides of weight ``candidate`` if given."""
    spec = cfg["methods"][method]
    model = f"{student}_from_{cfg['teacher']['network']}" if spec["distill"] else student
    stack = ("train_teacher.json", "distill.json") if spec["distill"] else ("train_teacher.json", "train_student.json")
    tag = method if candidate is None else f"{method}-c{candidate}"
    overrides = {**cfg["students"][student], **spec["overrides"], "student": student}
    if candidate is not None:
        overrides.update(spec["candidates"][candidate])
    return [RunSpec(_run_name(model, tag, s), method, student, tag, s, stack, overrides, candidate) for s in seeds]


def plan_runs(cfg: Mapping[str, Any], chosen: Mapping[tuple[str, str], int] | None = None) -> list[RunSpec]:
    """The runs of the matrix in execution order: the teacher, then each method's students and seeds.

    A method with ``candidates`` first runs every candidate with its first seed (trained on the training split,
    scored on the validation split); once ``chosen[(student, method)]`` names the winner, the winner's other seeds
    are planned too (its first-seed run is the candidate run itself).

    Args:
        cfg: an experiment from :func:`load_experiment`.
        chosen: the candidate chosen on validation per ``(student, method)``.

    Returns:
        the runs, the teacher's first.
    """
    chosen = chosen or {}
    teacher = cfg["teacher"]["network"]
    runs = [RunSpec(_run_name(teacher, "teacher", 0), "teacher", None, "teacher", 0, ("train_teacher.json",))]
    # method-major: an interrupted matrix has every student's first rows (the key comparisons) done first
    for method, spec in cfg["methods"].items():
        for student in cfg["students"]:
            if student not in spec["students"]:
                continue
            if spec["candidates"] is None:
                runs += _method_runs(cfg, student, method, None, spec["seeds"])
                continue
            for i in range(len(spec["candidates"])):
                runs += _method_runs(cfg, student, method, i, spec["seeds"][:1])
            if (student, method) in chosen:
                runs += _method_runs(cfg, student, method, chosen[(student, method)], spec["seeds"][1:])
    return runs


def chosen_runs(cfg: Mapping[str, Any], chosen: Mapping[tuple[str, str], int]) -> list[RunSpec]:
    """The runs that choosing the candidates adds: each chosen candidate's other seeds, in plan order.

    They sit inside the plan (after their method's candidate runs), not at its end.

    Args:
        cfg: an experiment from :func:`load_experiment`.
        chosen: the candidate chosen on validation per ``(student, method)``.

    Returns:
        the runs of ``plan_runs(cfg, chosen)`` that ``plan_runs(cfg)`` does not hold.
    """
    first = {run.name for run in plan_runs(cfg)}
    return [run for run in plan_runs(cfg, chosen) if run.name not in first]


def _dataset(cfg: Mapping[str, Any], workdir: Path) -> tuple[Path, str, str]:
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
    out = workdir / "data"
    stamp = workdir / "data.json"
    wanted = {**phantom, "size": list(phantom["size"])}
    previous = json.loads(stamp.read_text()) if stamp.is_file() else None
    if previous is not None and previous != wanted and any((workdir / "results").glob("*.json")):
        # resuming would mix runs (and resume checkpoints) made on other data with runs on the new data
        raise ExperimentError(
            f"{cfg['path']}: data.phantom is now {wanted} but the runs in {workdir} were made on {previous}; "
            "use another workdir, or delete that one to start the matrix anew"
        )
    if previous != wanted:
        generate_phantom_dataset(out, progress=True, **phantom)
        with atomic_open(stamp, "w") as f:
            json.dump(wanted, f)
    return out, "msd", phantom["task"]


def _base_overrides(cfg: Mapping[str, Any], workdir: Path, dataset: tuple[Path, str, str]) -> dict[str, Any]:
    """Overrides every run shares: data, where things go, the teacher, tracking on, per-run checkpoint names."""
    dataset_dir, data_format, task = dataset
    teacher = cfg["teacher"]["network"]
    return {
        "task": task,
        **cfg["overrides"],
        "dataset_dir": str(dataset_dir),
        "data_format": data_format,
        "output_dir": str(workdir / "output"),
        "ckpt_dir": str(workdir / "models"),
        "experiment_name": f"mskd_{cfg['name']}",
        "teacher": teacher,
        "mlflow": True,
        # every run keeps its own best-validation checkpoint (<run>.pt); distillation always uses the one teacher
        "teacher_ckpt": str(workdir / "models" / f"{_run_name(teacher, 'teacher', 0)}.pt"),
    }


def _bundle(
    cfg: Mapping[str, Any], run: RunSpec, stack: Sequence[str], overrides: Path, log: Path, threads: int
) -> None:
    """Run one bundle workflow in a subprocess (its own interpreter, threads and memory); raise with its log tail."""
    bundle = cfg["bundle"]
    files = [str(bundle / "configs" / f) for f in stack] + [str(overrides)]
    command = [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", json.dumps(files),
        "--meta_file", str(bundle / "configs" / "metadata.json"),
        "--logging_file", str(bundle / "configs" / "logging.conf"),
        "--bundle_root", str(bundle),
    ]  # fmt: skip
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


def learning_speed(rows: Sequence[Mapping[str, Any]], reference: str | None, short_epochs: int | None) -> list[dict]:
    """Add each run's speed of learning, read from its validation curve, to copies of ``rows``.

    - ``val_dice_short``: validation Dice at the matched short budget, the last validation at or before
      ``short_epochs`` (``nan`` without ``short_epochs`` or a curve);
    - ``steps_to_target``: optimiser steps until the validation Dice first reaches 90 % of the student's converged
      Dice, the mean best validation Dice of its ``reference`` (no-KD) rows; ``nan`` when never reached.

    Args:
        rows: result rows with ``val_curve`` (JSON ``[[epoch, dice], ...]``) and ``steps_per_epoch``.
        reference: the method whose runs define each student's converged Dice (the non-distilling method).
        short_epochs: the short budget in epochs, or ``None``.

    Returns:
        the rows with ``val_dice_short`` and ``steps_to_target`` added.
    """
    curves = [json.loads(r["val_curve"]) if r.get("val_curve") else [] for r in rows]
    converged: dict[str, list[float]] = {}
    for r in rows:
        if r["method"] == reference and r.get("selected", True) not in (False, "False", "false", 0):
            converged.setdefault(r["student"], []).append(float(r.get("val_mean_dice_best", math.nan)))
    out = []
    for r, curve in zip(rows, curves, strict=True):
        steps = int(r["steps_per_epoch"]) if r.get("steps_per_epoch") not in (None, "") else None
        short = [dice for epoch, dice in curve if short_epochs is not None and epoch <= short_epochs]
        target = 0.9 * _mean_std(converged.get(r["student"], []))[0]
        reached = [epoch for epoch, dice in curve if dice >= target]
        out.append(
            {
                **r,
                "val_dice_short": short[-1] if short else math.nan,
                "steps_to_target": reached[0] * steps if reached and steps and r["method"] != "teacher" else math.nan,
            }
        )
    return out


def _adopt(client: Any, experiment_id: str, names: Sequence[str], parent: str, tags: Mapping[str, str]) -> None:
    """Nest the MLflow runs called ``names`` under the experiment's parent run and tag them."""
    for name in names:
        for r in client.search_runs([experiment_id], filter_string=f"attributes.run_name = '{name}'"):
            client.set_tag(r.info.run_id, "mlflow.parentRunId", parent)
            for key, value in tags.items():
                client.set_tag(r.info.run_id, key, value)


class _Matrix:
    """Executes the runs of one experiment (shared state: paths, store, parent run)."""

    def __init__(self, cfg: dict[str, Any], workdir: Path) -> None:
        from mlflow.tracking import MlflowClient

        from mskd.tracking import open_run, tracking_uri

        self.cfg, self.workdir = cfg, workdir
        for sub in ("configs", "logs", "results", "output", "models"):
            (workdir / sub).mkdir(parents=True, exist_ok=True)
        self.dataset = _dataset(cfg, workdir)
        self.base = _base_overrides(cfg, workdir, self.dataset)
        self.uri = tracking_uri(workdir / "output")
        self.client = MlflowClient(tracking_uri=self.uri)
        parent_file = workdir / "parent_run_id"
        self.parent = parent_file.read_text().strip() if parent_file.is_file() else None
        if self.parent is not None:  # resuming: the same parent run gathers the new children
            self.client.update_run(self.parent, status="RUNNING")
        else:
            self.parent = open_run(self.uri, f"mskd_{cfg['name']}", cfg["name"])
            with atomic_open(parent_file, "w") as f:
                f.write(self.parent)
        self.experiment_id = self.client.get_run(self.parent).info.experiment_id
        self.client.set_tag(self.parent, "experiment", cfg["name"])

    def result_path(self, run: RunSpec) -> Path:
        return self.workdir / "results" / f"{run.name}.json"

    def done(self, run: RunSpec) -> bool:
        return self.result_path(run).is_file()

    def execute(self, run: RunSpec, threads: int) -> dict[str, Any]:
        """Train, then evaluate one run; write its result row (the marker that it is finished)."""
        overrides = {**self.base, **run.overrides, "seed": run.seed, "method": run.method}
        if run.label == "teacher":
            overrides.update(self.cfg["teacher"]["overrides"])
        config = self.workdir / "configs" / f"{run.name}.json"
        with atomic_open(config, "w") as f:
            json.dump(overrides, f, indent=2)
        log = self.workdir / "logs" / f"{run.name}.log"
        t0 = time.perf_counter()
        _bundle(self.cfg, run, run.stack, config, log, threads)
        t1 = time.perf_counter()
        _bundle(self.cfg, run, (*run.stack, "evaluate.json"), config, log, threads)
        t2 = time.perf_counter()
        tags = {"experiment": self.cfg["name"], "row": run.label}
        _adopt(self.client, self.experiment_id, [run.name, f"{run.name}-test"], self.parent, tags)
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
            **_read_summary(Path(self.base["output_dir"]) / f"{run.name}-test_metrics_summary.csv"),
            "train_s": round(t1 - t0, 1),
            "evaluate_s": round(t2 - t1, 1),
        }
        with atomic_open(self.result_path(run), "w") as f:
            json.dump(row, f, indent=2)
        return row

    def run_all(self, runs: Sequence[RunSpec], progress: Any) -> None:
        """Run the unfinished ``runs`` with ``jobs`` at a time; the first error stops the matrix."""
        todo = [r for r in runs if not self.done(r)]
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


def _latency_ms(network: Any, size: int, threads: int, repeats: int = 20) -> float:
    """Median batch-1 CPU forward time at ``size``² (``threads`` intra-op threads, after warm-up)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        network = network.eval()
        x = torch.randn(1, 1, size, size)
        times = []
        with torch.inference_mode():
            for i in range(repeats + 3):
                t0 = time.perf_counter()
                network(x)
                if i >= 3:
                    times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(previous)
    times.sort()
    return 1000 * times[len(times) // 2]


def _network_costs(cfg: Mapping[str, Any], num_classes: int) -> dict[str, dict[str, float]]:
    """Parameters and CPU latency of the teacher and every student, at the experiment's image size."""
    from mskd.networks import count_parameters, get_network

    size = int(cfg["overrides"].get("image_size", 224))
    kwargs = {cfg["teacher"]["network"]: cfg["overrides"].get("teacher_kwargs", {})}
    kwargs.update(
        {s: o.get("student_kwargs", cfg["overrides"].get("student_kwargs", {})) for s, o in cfg["students"].items()}
    )
    costs = {}
    for name, kw in kwargs.items():
        net = get_network(name, 1, num_classes, **kw)
        costs[name] = {"params": count_parameters(net), "latency_ms": _latency_ms(net, size, cfg["threads"])}
    return costs


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def summarise_results(rows: Sequence[Mapping[str, Any]], organs: Sequence[str]) -> list[dict[str, Any]]:
    """Mean and sample standard deviation over seeds of every (student, method) row that counts.

    Runs of weight candidates that were not chosen are left out (their ``selected`` is false).

    Args:
        rows: one result row per run (as in ``results.csv``).
        organs: organ names (the ``dice_<organ>``/``hd95_<organ>`` columns).

    Returns:
        one dict per (student, method), in first-seen order: ``student``, ``method``, ``seeds`` and, for every
        metric column ``m`` (``dice_mean``, ``hd95_mean``, ``dice_<organ>``, ``hd95_<organ>``, and
        ``val_dice_short``, ``steps_to_target`` where the rows have them, see :func:`learning_speed`), ``m`` and
        ``m_std`` (over the seeds with a value); ``steps_to_target_reached`` counts the seeds that reached the target.
    """
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        if r.get("selected", True) in (False, "False", "false", 0):
            continue
        groups.setdefault((r["student"], r["method"]), []).append(r)
    columns = ["dice_mean", "hd95_mean"] + [f"{k}_{o}" for k in ("dice", "hd95") for o in organs]
    columns += [c for c in ("val_dice_short", "steps_to_target") if any(c in r for r in rows)]
    out = []
    for (student, method), members in groups.items():
        summary: dict[str, Any] = {"student": student, "method": method, "seeds": len(members)}
        for c in columns:
            summary[c], summary[f"{c}_std"] = _mean_std([float(m.get(c, math.nan)) for m in members])
        if "steps_to_target" in columns:
            summary["steps_to_target_reached"] = sum(not math.isnan(float(m["steps_to_target"])) for m in members)
        out.append(summary)
    return out


def _pm(mean: float, std: float, scale: float = 1.0, digits: int = 1) -> str:
    if math.isnan(mean):
        return "–"
    return f"{scale * mean:.{digits}f}" + ("" if math.isnan(std) else f" ± {scale * std:.{digits}f}")


def _steps(summary: Mapping[str, Any]) -> str:
    """Steps to the target Dice, ``mean ± std``, with ``(k of n seeds)`` when not every seed reached it."""
    reached, seeds = summary.get("steps_to_target_reached", 0), summary["seeds"]
    if summary["method"] == "teacher":
        return ""
    if not reached:
        return "not reached"
    text = _pm(summary["steps_to_target"], summary["steps_to_target_std"], digits=0)
    return text if reached == seeds else f"{text} ({reached} of {seeds} seeds)"


def _gap_closed(summary: Sequence[Mapping[str, Any]], teacher: Mapping[str, Any] | None, reference: str | None):
    """(method − reference) ÷ (teacher − reference) of mean Dice, per (student, method); reference = no-KD row."""
    if teacher is None or reference is None:
        return {}
    base = {s["student"]: s["dice_mean"] for s in summary if s["method"] == reference}
    out = {}
    for s in summary:
        gap = teacher["dice_mean"] - base.get(s["student"], math.nan)
        if s["method"] not in ("teacher", reference) and gap > 0:
            out[(s["student"], s["method"])] = (s["dice_mean"] - base[s["student"]]) / gap
    return out


def format_results(
    cfg: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    organs: Sequence[str],
    costs: Mapping[str, Mapping[str, float]],
    wall_s: float,
    planned: int | None = None,
) -> str:
    """The markdown report: overall table with the gap closed, per-organ Dice and HD95, the weight selection."""
    reference = next((m for m, spec in cfg["methods"].items() if not spec["distill"]), None)
    short = cfg.get("short_epochs")
    summary = summarise_results(learning_speed(rows, reference, short), organs)
    teacher = next((s for s in summary if s["method"] == "teacher"), None)
    gap = _gap_closed(summary, teacher, reference)
    size, threads = cfg["overrides"].get("image_size", 224), cfg["threads"]
    lines = [f"# Experiment `{cfg['name']}`", ""]
    if cfg.get("description"):
        lines += [str(cfg["description"]).strip(), ""]
    if planned is not None and len(rows) < planned:
        lines += [
            f"**Partial: {len(rows)} of the {planned} planned runs have finished** (runs in the file's order of "
            "methods); rerunning the command resumes the matrix.",
            "",
        ]
    lines += [
        f"Produced by `mskd experiment {os.path.relpath(cfg['path'])}`. Test split; mean ± sample std over seeds;",
        "every checkpoint is the best on the validation split. Gap closed = (method − "
        f"{reference or 'no-KD'}) ÷ (teacher − {reference or 'no-KD'}) of mean Dice. Speed of learning, from each "
        "run's validation curve: validation Dice after the matched short budget of "
        f"{short if short else '–'} epochs, and optimiser steps until the validation Dice first reaches 90 % of the "
        f"student's converged (best {reference or 'no-KD'}) validation Dice, with the seeds that reached it.",
        "",
        f"| student | method | seeds | params | CPU ms (b1, {size}², {threads} thr) | Dice (%) | HD95 (mm) "
        "| gap closed | val Dice @ short budget (%) | steps to 90 % |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        c = costs.get(s["student"], {})
        g = gap.get((s["student"], s["method"]))
        lines.append(
            f"| {s['student']} | {s['method']} | {s['seeds']} | {int(c.get('params', 0)):,} | "
            f"{c.get('latency_ms', math.nan):.1f} | {_pm(s['dice_mean'], s['dice_mean_std'], 100)} | "
            f"{_pm(s['hd95_mean'], s['hd95_mean_std'])} | {'' if g is None else f'{100 * g:+.0f} %'} | "
            f"{_pm(s.get('val_dice_short', math.nan), s.get('val_dice_short_std', math.nan), 100)} | "
            f"{_steps(s)} |"
        )
    for metric, scale, title in (("dice", 100, "Dice (%)"), ("hd95", 1, "HD95 (mm)")):
        lines += ["", f"## Per-organ {title}", "", "| student | method | " + " | ".join(organs) + " |"]
        lines.append("|---|---|" + "---|" * len(organs))
        for s in summary:
            cells = [_pm(s[f"{metric}_{o}"], s[f"{metric}_{o}_std"], scale) for o in organs]
            lines.append(f"| {s['student']} | {s['method']} | " + " | ".join(cells) + " |")
    candidates = [r for r in rows if r.get("candidate", "") != ""]
    if candidates:
        lines += ["", "## Loss weights chosen on the validation split (first seed)", ""]
        lines += [
            "| student | method | candidate | overrides | best val Dice (%) | chosen |",
            "|---|---|---|---|---|---|",
        ]
        for r in candidates:
            if r["seed"] != cfg["methods"][r["method"]]["seeds"][0]:
                continue
            weights = cfg["methods"][r["method"]]["candidates"][int(r["candidate"])]
            lines.append(
                f"| {r['student']} | {r['method']} | {r['candidate']} | `{json.dumps(weights)}` | "
                f"{100 * float(r['val_mean_dice_best']):.1f} | {'yes' if r.get('selected', True) else ''} |"
            )
    run_time = sum(float(r["train_s"]) + float(r["evaluate_s"]) for r in rows)
    lines += [
        "",
        f"Runs: {len(rows)}; sum of run times {run_time / 60:.1f} min with {cfg['jobs']} at a time × {threads} "
        f"thread(s); wall time of the invocation that finished the matrix {wall_s / 60:.1f} min.",
        "",
    ]
    return "\n".join(lines)


def _bar_chart(path: Path, summary: Sequence[Mapping[str, Any]], title: str) -> None:
    """Grouped bars of mean test Dice per student and method (error bars: std over seeds; line: the teacher)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    teacher = next((s for s in summary if s["method"] == "teacher"), None)
    students = list(dict.fromkeys(s["student"] for s in summary if s["method"] != "teacher"))
    methods = list(dict.fromkeys(s["method"] for s in summary if s["method"] != "teacher"))
    lookup = {(s["student"], s["method"]): s for s in summary}
    width = 0.8 / max(1, len(methods))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 + 0.45 * len(students) * len(methods)), 4.0), dpi=120)
    cmap = plt.get_cmap("tab20")
    for j, method in enumerate(methods):
        xs, ys, es = [], [], []
        for i, student in enumerate(students):
            s = lookup.get((student, method))
            if s is not None:
                xs.append(i + (j - (len(methods) - 1) / 2) * width)
                ys.append(100 * s["dice_mean"])
                es.append(0.0 if math.isnan(s["dice_mean_std"]) else 100 * s["dice_mean_std"])
        ax.bar(xs, ys, width, yerr=es, capsize=2, label=method, color=cmap(j % 20))
    if teacher is not None:
        ax.axhline(100 * teacher["dice_mean"], color="k", ls="--", lw=1, label=f"teacher ({teacher['student']})")
    ax.set_xticks(range(len(students)), students)
    ax.set_ylabel("mean test Dice (%)")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    from mskd.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _finished_rows(cfg: Mapping[str, Any], matrix: _Matrix, chosen: Mapping[tuple[str, str], int]) -> list[dict]:
    """The result rows of the planned runs that have finished, each marked ``selected`` (not an unchosen candidate)."""
    rows = []
    for run in plan_runs(cfg, chosen):
        if matrix.done(run):
            row = json.loads(matrix.result_path(run).read_text())
            row["selected"] = run.candidate is None or chosen.get((run.student, run.label)) == run.candidate
            rows.append(row)
    return rows


def _write_outputs(
    cfg: Mapping[str, Any],
    rows: list[dict[str, Any]],
    organs: Sequence[str],
    costs: Mapping[str, Mapping[str, float]],
    wall_s: float,
    planned: int,
) -> Path:
    out: Path = cfg["output"]
    out.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with atomic_open(out / "results.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    with atomic_open(out / "results.md", "w", encoding="utf-8") as f:
        f.write(format_results(cfg, rows, organs, costs, wall_s, planned))
    _bar_chart(out / "dice.png", summarise_results(rows, organs), f"{cfg['name']}: test Dice")
    return out


def run_experiment(
    config: str | os.PathLike,
    workdir: str | os.PathLike | None = None,
    dry_run: bool = False,
    allow_code: bool = False,
) -> Path:
    """Run (or resume) an experiment matrix and write its results.

    Args:
        config: the experiment YAML file.
        workdir: where data, checkpoints, logs, per-run overrides and the MLflow store go (default: the file's
            ``workdir``, else ``experiments/<name>``).
        dry_run: only print the planned runs (nothing is trained or written).
        allow_code: accept overrides that run Python code (see :func:`load_experiment`).

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
    workdir = cfg["workdir"]
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

    started = time.perf_counter()
    matrix = _Matrix(cfg, workdir)
    organs = organ_names(matrix.dataset[2])
    first = plan_runs(cfg)
    total = len(plan_runs(cfg, {key: 0 for key in with_candidates}))
    costs = _network_costs(cfg, len(organs) + 1)  # once, before the runs load the cores
    with tqdm(total=total, desc=f"experiment {cfg['name']}", unit="run", disable=None) as progress:
        matrix.run_all(first[:1], progress)  # the teacher, before anyone distils from it
        chosen: dict[tuple[str, str], int] = {}
        # method by method, in the file's order (its order of importance): a method's chosen candidate runs its
        # other seeds before the next method starts, so an interrupted matrix has its first rows complete
        for method in cfg["methods"]:
            matrix.run_all([r for r in first[1:] if r.label == method], progress)
            for student in (s for s, m in with_candidates if m == method):
                scores = [
                    json.loads(matrix.result_path(r).read_text())["val_mean_dice_best"]
                    for r in first
                    if r.student == student and r.label == method
                ]
                chosen[(student, method)] = max(
                    range(len(scores)), key=lambda i: -math.inf if math.isnan(scores[i]) else scores[i]
                )
            matrix.run_all([r for r in chosen_runs(cfg, chosen) if r.label == method], progress)
            # the tables so far (after the last method: the final ones), so that the results of a long matrix can be
            # read and committed as they land
            rows = _finished_rows(cfg, matrix, chosen)
            out = _write_outputs(cfg, rows, organs, costs, time.perf_counter() - started, total)

    for name in ("results.csv", "results.md", "dice.png"):
        matrix.client.log_artifact(matrix.parent, str(out / name))
    for s in summarise_results(rows, organs):
        key = f"{s['student']}.{s['method']}.test_mean_dice"
        matrix.client.log_metric(matrix.parent, key, s["dice_mean"])
    matrix.client.set_terminated(matrix.parent, "FINISHED")
    print((out / "results.md").read_text(encoding="utf-8"))
    return out
