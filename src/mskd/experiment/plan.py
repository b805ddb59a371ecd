"""The runs of an experiment: their names, their order, and where each run's files live in the workdir.

Every name and path that is built from a run's name is built here: the run name itself (``<model>-<method>-s<seed>``,
as the bundle names it), its test evaluation's name, and the files of :class:`Workdir`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mskd.experiment.spec import RunSpec

__all__ = ["Workdir", "chosen_runs", "evaluation_run_name", "plan_runs", "run_name", "teacher_run_name"]


def run_name(model: str, method: str, seed: int) -> str:
    """The bundle's name of a run, ``<model>-<method>-s<seed>`` (:func:`mskd.tracking.run_name`).

    ``mskd.tracking`` loads MONAI, so it is imported here, when a name is asked for, not when the experiment is.
    """
    from mskd.tracking import run_name as bundle_run_name

    return bundle_run_name(model, method, seed)


def teacher_run_name(cfg: Mapping[str, Any]) -> str:
    """The name of the experiment's one teacher run (its checkpoint is the one every distillation run loads)."""
    return run_name(cfg["teacher"]["network"], "teacher", 0)


def evaluation_run_name(name: str) -> str:
    """The name the bundle's ``evaluate.json`` gives the test evaluation of the run ``name``."""
    return f"{name}-test"


@dataclass(frozen=True)
class Workdir:
    """The files of an experiment's workdir: data, per-run overrides, logs, results, models, the MLflow store.

    Attributes:
        root: the workdir.
    """

    root: Path

    @property
    def data(self) -> Path:
        """The generated phantom dataset."""
        return self.root / "data"

    @property
    def data_stamp(self) -> Path:
        """The phantom settings :attr:`data` was generated with (JSON)."""
        return self.root / "data.json"

    @property
    def output(self) -> Path:
        """The bundle's ``output_dir``: the MLflow store and the evaluations' CSV files."""
        return self.root / "output"

    @property
    def models(self) -> Path:
        """The bundle's ``ckpt_dir``: one best-validation checkpoint per run."""
        return self.root / "models"

    @property
    def parent_run_file(self) -> Path:
        """The MLflow id of the experiment's parent run (kept so that a resumed matrix nests under the same one)."""
        return self.root / "parent_run_id"

    def make(self) -> None:
        """Create the folders of the workdir."""
        for sub in ("configs", "logs", "results", "output", "models"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def config(self, name: str) -> Path:
        """The overrides the run ``name`` was launched with (stacked last)."""
        return self.root / "configs" / f"{name}.json"

    def log(self, name: str) -> Path:
        """The full log of the run ``name`` (training and evaluation)."""
        return self.root / "logs" / f"{name}.log"

    def result(self, name: str) -> Path:
        """The result row of the run ``name``; it exists once the run has finished."""
        return self.root / "results" / f"{name}.json"

    def finished(self, name: str) -> bool:
        """Whether the run ``name`` has finished (its result row exists)."""
        return self.result(name).is_file()

    def has_results(self) -> bool:
        """Whether any run has finished."""
        return any((self.root / "results").glob("*.json"))

    def read_result(self, name: str) -> dict[str, Any]:
        """The result row of the finished run ``name``."""
        return json.loads(self.result(name).read_text())

    def checkpoint(self, name: str) -> Path:
        """The best-validation checkpoint of the run ``name`` (the bundle's ``<ckpt_dir>/<run name>.pt``)."""
        return self.models / f"{name}.pt"

    def test_summary(self, name: str) -> Path:
        """The per-organ summary CSV of the test evaluation of the run ``name`` (written by the bundle)."""
        return self.output / f"{evaluation_run_name(name)}_metrics_summary.csv"


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
    return [RunSpec(run_name(model, tag, s), method, student, tag, s, stack, overrides, candidate) for s in seeds]


def plan_runs(cfg: Mapping[str, Any], chosen: Mapping[tuple[str, str], int] | None = None) -> list[RunSpec]:
    """The runs of the matrix in execution order: the teacher, then each method's students and seeds.

    A method with ``candidates`` first runs every candidate with its first seed (trained on the training split,
    scored on the validation split); once ``chosen[(student, method)]`` names the winner, the winner's other seeds
    are planned too (its first-seed run is the candidate run itself).

    Args:
        cfg: an experiment from :func:`~mskd.experiment.load_experiment`.
        chosen: the candidate chosen on validation per ``(student, method)``.

    Returns:
        the runs, the teacher's first.
    """
    chosen = chosen or {}
    runs = [RunSpec(teacher_run_name(cfg), "teacher", None, "teacher", 0, ("train_teacher.json",))]
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
        cfg: an experiment from :func:`~mskd.experiment.load_experiment`.
        chosen: the candidate chosen on validation per ``(student, method)``.

    Returns:
        the runs of ``plan_runs(cfg, chosen)`` that ``plan_runs(cfg)`` does not hold.
    """
    first = {run.name for run in plan_runs(cfg)}
    return [run for run in plan_runs(cfg, chosen) if run.name not in first]
