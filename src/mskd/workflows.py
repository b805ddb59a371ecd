"""The bundle's training and evaluation as Python calls, and a summary of what each run did.

The bundle stays the single source of truth: :meth:`mskd.bundle.Bundle.run` does what ``python -m monai.bundle run``
does with the same files and overrides and hands back the workflow, from which :func:`train` and :func:`evaluate`
read their summaries. ``mskd train-teacher`` / ``train-student`` / ``distill`` / ``evaluate`` and ``make demo`` all
go through them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mskd.bundle import Bundle

__all__ = ["EvaluationSummary", "TrainingSummary", "evaluate", "train"]


def _table(rows: Sequence[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def _tracking(workflow: Any) -> str:
    """Where the run was logged: ``<run id> in experiment <name> (<uri>)``, or that tracking was off."""
    run = workflow.parser.get_parsed_content("mlflow_run")
    if not run.enabled:
        return "off (--mlflow false)"
    return f"{run.given_run_id} in experiment {run.experiment_name} ({run.tracking_uri})"


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
    """Train with the bundle's stack for ``method`` and summarise the run.

    Args:
        bundle: the bundle folder.
        method: ``teacher``, ``baseline`` (the student alone) or ``mskd`` (the student distilled from the teacher):
            :data:`mskd.bundle.STACKS`.
        overrides: config ids -> values (``max_epochs=5``, ``**{"train#handlers#lr_schedule#print_lr": True}``).

    Raises:
        ValueError: for an unknown ``method``.
        FileNotFoundError: when ``bundle`` is not a bundle.
        RuntimeError: MONAI's wrapper of a :class:`mskd.validation.ValidationError` (its cause;
            :func:`mskd.validation.validation_error` finds it) when the bundle's pre-flight finds a problem, or the
            MLflow store cannot be used; nothing is trained.
    """
    from mskd.engines import loss_terms

    workflow = Bundle(bundle).run(Bundle.stack(method), **overrides)
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
        from mskd.metrics import format_columns, format_mean_std

        def pm(row: Mapping[str, Any], key: str, scale: float) -> str:
            return format_mean_std(float(row[f"{key}_mean"]), float(row[f"{key}_std"]), scale, missing="n/a")

        header = ("organ", "Dice (%)", "HD95 (mm)")
        lines = [(str(r["organ"]), pm(r, "dice", 100.0), pm(r, "hd95_mm", 1.0)) for r in self.summary]
        files = [("per-case CSV", self.csv_path), ("summary CSV", self.summary_path), ("MLflow run", self.tracking)]
        table = format_columns(header, lines, indent="  ")
        return f"{self.run_name} on {self.cases} test case(s):\n{table}\n{_table(files)}"


def evaluate(bundle: str | os.PathLike, method: str = "mskd", **overrides: Any) -> EvaluationSummary:
    """Evaluate the model that ``method``'s stack trained (the stack plus ``evaluate.json``) on the test cases.

    Args:
        bundle: the bundle folder.
        method: ``teacher``, ``baseline`` or ``mskd``.
        overrides: config ids -> values, as for :func:`train`; pass the ones the training had.

    Raises:
        ValueError: for an unknown ``method``.
        FileNotFoundError: when ``bundle`` is not a bundle.
        RuntimeError: MONAI's wrapper of a :class:`mskd.validation.ValidationError` when the bundle's pre-flight
            finds a problem (a missing checkpoint among them); nothing is evaluated.
    """
    workflow = Bundle(bundle).run(Bundle.stack(method, evaluate=True), **overrides)
    value = workflow.parser.get_parsed_content
    metrics = value("validate#handlers#volume_metrics")
    return EvaluationSummary(
        run_name=value("run_name"),
        cases=len(metrics.cases),
        summary=list(metrics.summary),
        csv_path=metrics.csv_path,
        summary_path=metrics.summary_path,
        tracking=_tracking(workflow),
    )
