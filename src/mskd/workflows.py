"""The bundle's workflows as Python calls: a stack of config files, run in-process, and a summary of what it did.

The bundle stays the single source of truth: :func:`run_bundle` does what ``python -m monai.bundle run`` does with
the same files and overrides (``monai.bundle.create_workflow``, ``run``, ``finalize``) and hands back the workflow,
from which :func:`train` and :func:`evaluate` read their summaries. ``mskd train-teacher`` / ``train-student`` /
``distill`` / ``evaluate`` and ``make demo`` all go through it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "EVALUATE",
    "STACKS",
    "EvaluationSummary",
    "TrainingSummary",
    "bundle_folder",
    "evaluate",
    "run_bundle",
    "train",
]

# method (the bundle's `method` value) -> the config files that train it, as a user stacks them
STACKS: dict[str, tuple[str, ...]] = {
    "teacher": ("train_teacher.json",),
    "baseline": ("train_teacher.json", "train_student.json"),
    "mskd": ("train_teacher.json", "distill.json"),
}
EVALUATE = "evaluate.json"  # stacked on a training stack, it evaluates that stack's model on the test cases


def bundle_folder(bundle: str | os.PathLike) -> Path:
    """``bundle`` as an absolute path, checked to be an mskd bundle.

    Raises:
        FileNotFoundError: when ``bundle`` has no ``configs/train_teacher.json``.
    """
    path = Path(bundle).resolve()
    if not (path / "configs" / "train_teacher.json").is_file():
        raise FileNotFoundError(f"{path} is not an mskd bundle (no configs/train_teacher.json); pass --bundle")
    return path


def run_bundle(bundle: str | os.PathLike, files: Sequence[str], **overrides: Any) -> Any:
    """Run the config stack ``files`` of ``bundle`` in this process, as ``python -m monai.bundle run`` would.

    Args:
        bundle: the bundle folder.
        files: config file names in ``bundle/configs``, base first.
        overrides: config ids -> values (``max_epochs=5``, ``**{"train#handlers#0#print_lr": True}``).

    Returns:
        the finished ``monai.bundle.ConfigWorkflow`` (its ``parser`` holds the objects the run used).
    """
    from monai.bundle import create_workflow

    bundle = bundle_folder(bundle)
    configs = bundle / "configs"
    workflow = create_workflow(
        config_file=[str(configs / f) for f in files],
        meta_file=str(configs / "metadata.json"),
        logging_file=str(configs / "logging.conf"),
        bundle_root=str(bundle),
        **overrides,
    )
    workflow.run()
    workflow.finalize()
    return workflow


def _table(rows: Sequence[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def _tracking(workflow: Any) -> str:
    """Where the run was logged: ``<run id> in experiment <name> (<uri>)``, or that tracking was off."""
    value = workflow.parser.get_parsed_content
    run_id = value("tracking_run_id")
    if run_id is None:
        return "off (--mlflow false)"
    return f"{run_id} in experiment {value('experiment_name')} ({value('tracking_uri')})"


def _method(method: str) -> tuple[str, ...]:
    if method not in STACKS:
        raise ValueError(f"unknown method {method!r}; choose one of {list(STACKS)}")
    return STACKS[method]


@dataclass
class TrainingSummary:
    """What a training run did.

    Attributes:
        run_name: the run's name, ``<model>-<method>-s<seed>``.
        best_metric: the best validation ``val_mean_dice`` (``None`` when no validation ran).
        best_epoch: its epoch.
        epochs: the epochs trained.
        loss: the last iteration's loss terms (``loss``, ``loss_seg``, ...).
        checkpoint: the best-validation checkpoint.
        tracking: the MLflow run (id, experiment, store), or that tracking was off.
    """

    run_name: str
    best_metric: float | None
    best_epoch: int
    epochs: int
    loss: dict[str, float]
    checkpoint: Path
    tracking: str

    def table(self) -> str:
        """The summary as a two-column text table."""
        best = "no validation ran" if self.best_metric is None else f"{self.best_metric:.4f} (epoch {self.best_epoch})"
        loss = ", ".join(f"{k} {v:.4g}" for k, v in self.loss.items()) or "no iteration ran"
        saved = self.checkpoint if self.checkpoint.is_file() else f"{self.checkpoint} (not written)"
        rows = [
            ("best val_mean_dice", best),
            (f"final loss (epoch {self.epochs})", loss),
            ("checkpoint", str(saved)),
            ("MLflow run", self.tracking),
        ]
        return f"{self.run_name}:\n{_table(rows)}"


def train(bundle: str | os.PathLike, method: str = "teacher", **overrides: Any) -> TrainingSummary:
    """Train with the bundle's stack for ``method`` (:data:`STACKS`) and summarise the run.

    Args:
        bundle: the bundle folder.
        method: ``teacher``, ``baseline`` (the student alone) or ``mskd`` (the student distilled from the teacher).
        overrides: config values, as for :func:`run_bundle`.

    Raises:
        ValueError: for an unknown ``method``.
        FileNotFoundError: when ``bundle`` is not a bundle.
        SystemExit: with status 2 when the bundle's up-front checks find a problem (printed one per line).
    """
    from mskd.engines import loss_terms

    workflow = run_bundle(bundle, _method(method), **overrides)
    value = workflow.parser.get_parsed_content
    trainer, evaluator = value("train#trainer"), value("validate#evaluator")
    validated = evaluator.state.best_metric_epoch > 0
    return TrainingSummary(
        run_name=value("run_name"),
        best_metric=float(evaluator.state.best_metric) if validated else None,
        best_epoch=int(evaluator.state.best_metric_epoch),
        epochs=int(trainer.state.epoch),
        loss=loss_terms(trainer.state.output) if trainer.state.output is not None else {},
        checkpoint=Path(value("ckpt_path")),
        tracking=_tracking(workflow),
    )


@dataclass
class EvaluationSummary:
    """What an evaluation run did.

    Attributes:
        run_name: the run's name, ``<model>-<method>-s<seed>-test``.
        cases: the cases scored.
        summary: per-organ rows and the ``mean`` row (:func:`mskd.metrics.summarise`).
        csv_path: the per-case CSV.
        summary_path: the summary CSV.
        tracking: the MLflow run (id, experiment, store), or that tracking was off.
    """

    run_name: str
    cases: int
    summary: list[dict[str, Any]]
    csv_path: str
    summary_path: str
    tracking: str

    def table(self) -> str:
        """Per-organ Dice (%) and HD95 (mm), mean ± std over the cases, and where the files and the run are."""

        def pm(row: Mapping[str, Any], key: str, scale: float) -> str:
            mean, std = float(row[f"{key}_mean"]), float(row[f"{key}_std"])
            if math.isnan(mean):
                return "n/a"
            return f"{scale * mean:.1f}" + ("" if math.isnan(std) else f" ± {scale * std:.1f}")

        header = ("organ", "Dice (%)", "HD95 (mm)")
        lines = [(str(r["organ"]), pm(r, "dice", 100.0), pm(r, "hd95_mm", 1.0)) for r in self.summary]
        widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
        text = [
            "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [header, *lines]
        ]
        files = [("per-case CSV", self.csv_path), ("summary CSV", self.summary_path), ("MLflow run", self.tracking)]
        return f"{self.run_name} on {self.cases} test case(s):\n" + "\n".join(text) + "\n" + _table(files)


def evaluate(bundle: str | os.PathLike, method: str = "mskd", **overrides: Any) -> EvaluationSummary:
    """Evaluate the model that ``method``'s stack trained (the stack plus ``evaluate.json``) on the test cases.

    Args:
        bundle: the bundle folder.
        method: ``teacher``, ``baseline`` or ``mskd``.
        overrides: config values, as for :func:`run_bundle`; pass the ones the training had.

    Raises:
        ValueError: for an unknown ``method``.
        FileNotFoundError: when ``bundle`` is not a bundle.
        SystemExit: with status 2 when the bundle's up-front checks find a problem (a missing checkpoint among them).
    """
    workflow = run_bundle(bundle, (*_method(method), EVALUATE), **overrides)
    value = workflow.parser.get_parsed_content
    metrics = value("validate#volume_metrics")
    return EvaluationSummary(
        run_name=value("run_name"),
        cases=len(metrics.cases),
        summary=list(metrics.summary),
        csv_path=metrics.csv_path,
        summary_path=metrics.summary_path,
        tracking=_tracking(workflow),
    )
