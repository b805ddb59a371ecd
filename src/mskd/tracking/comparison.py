"""Teacher, student alone and distilled students side by side: the comparison a distillation dashboard is opened for.

After an evaluation, :class:`ComparisonHandler` gathers from the MLflow experiment every test run of the same teacher
and student on the same test data — the teacher's, the student trained alone, and the student distilled by each
method — and puts them side by side per organ: Dice and HD95 (mean ± std over the seeds), and the share of the
teacher–student gap each method closes. The table is printed (so ``mskd evaluate`` and ``monai.bundle run`` show it),
written with its figure next to the run's other artefacts, and logged to a summary run of the experiment
(``compare-<student>-from-<teacher>``) that holds the latest comparison.

A trained model evaluated several times counts once (its newest evaluation); runs on another dataset, of another data
format or at another slice size are left out, so that a comparison never mixes test sets.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from monai.utils import optional_import

from mskd.metrics import format_mean_std, gap_closed, mean_std
from mskd.plotting import save_figure
from mskd.tracking.artefacts import RunArtefactHandler
from mskd.tracking.run import MlflowRun

Events, _ = optional_import("ignite.engine", name="Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
    from matplotlib.figure import Figure

__all__ = [
    "ComparisonHandler",
    "ComparisonRow",
    "comparison_figure",
    "comparison_rows",
    "format_comparison",
    "log_comparison",
    "summary_metrics",
    "summary_run_name",
]

SUMMARY_ROLE = "summary"
"""The ``role`` tag of the summary runs (so that a runs table can leave them out: ``tags.role != 'summary'``)."""

_SAME_TEST_SET = ("dataset_dir", "data_format", "image_size")
_SEED = re.compile(r"-s\d+$")
_DEAD = ("FAILED", "KILLED")


@dataclass
class ComparisonRow:
    """One model of the comparison, its test metrics over the seeds (one value per trained run).

    Attributes:
        label: what the row is (``"teacher unet"``, ``"espnet alone"``, the distillation method).
        kind: ``"teacher"``, ``"alone"`` or ``"distilled"``.
        runs: the trained runs' names, one per seed.
        dice: organ (and ``"mean"``) -> Dice per trained run.
        hd95: organ (and ``"mean"``) -> HD95 (mm) per trained run.
    """

    label: str
    kind: str
    runs: list[str] = field(default_factory=list)
    dice: dict[str, list[float]] = field(default_factory=dict)
    hd95: dict[str, list[float]] = field(default_factory=dict)

    def mean_std(self, metric: str, organ: str) -> tuple[float, float]:
        """Mean and sample std over the seeds of ``metric`` (``"dice"`` or ``"hd95"``) for ``organ`` (NaN where
        undefined; see :func:`mskd.metrics.mean_std`)."""
        return mean_std(getattr(self, metric).get(organ, []))

    def mean(self, metric: str, organ: str) -> float:
        """The mean over the seeds of ``metric`` for ``organ``."""
        return self.mean_std(metric, organ)[0]


def _metric(run: Any, name: str) -> float:
    value = run.data.metrics.get(name)
    return math.nan if value is None else float(value)


def comparison_rows(
    client: Any,
    experiment_id: str,
    reference: Any,
    teacher: str,
    student: str,
    organs: Sequence[str],
    prefix: str = "test",
) -> list[ComparisonRow]:
    """The teacher, the student alone and each distillation method, from the test runs of one MLflow experiment.

    A test run is one with a ``<prefix>_mean_dice`` metric that did not fail; its tags ``role`` and ``network``
    (the bundles' run tags) say what it evaluated: the teacher (``role`` teacher, ``network`` = ``teacher``), the
    student alone (``network`` = ``student``) or the student distilled from the teacher (``network`` =
    ``<student>_from_<teacher>``), whose method is its trained run's name without the network and the seed
    (``espnet_from_unet-mskd-s1`` -> ``mskd``). Only runs with the ``reference`` run's ``dataset_dir``,
    ``data_format`` and ``image_size`` params count, and of the evaluations of one trained run the newest.

    Args:
        client: an ``mlflow.MlflowClient``.
        experiment_id: the experiment to search.
        reference: the evaluation run being compared (an ``mlflow.entities.Run``), always included.
        teacher, student: the registered names of the pair compared.
        organs: the organ names of the per-organ metrics (``<prefix>_dice_<organ>``).
        prefix: the metrics' prefix.

    Returns:
        the teacher's row (when evaluated), the student alone's (when evaluated), then one row per method in the
        order of their first evaluation; empty rows are left out.
    """
    distilled = f"{student}_from_{teacher}"
    kinds = {teacher: "teacher", student: "alone", distilled: "distilled"}
    same = {key: reference.data.params.get(key) for key in _SAME_TEST_SET}
    runs = client.search_runs([experiment_id], filter_string=f"metrics.{prefix}_mean_dice >= 0", max_results=5000)
    if not any(r.info.run_id == reference.info.run_id for r in runs):
        runs = [*runs, reference]
    newest: dict[str, Any] = {}
    for run in sorted(runs, key=lambda r: r.info.start_time or 0):
        network = run.data.tags.get("network")
        if network not in kinds or (network == teacher and run.data.tags.get("role") != "teacher"):
            continue
        if run.info.run_id != reference.info.run_id and (
            run.info.status in _DEAD or any(run.data.params.get(k) != v for k, v in same.items())
        ):
            continue
        trained = run.data.params.get("trained_run") or re.sub(r"-test$", "", run.info.run_name or "")
        newest[trained] = run
    rows: dict[str, ComparisonRow] = {}
    for trained, run in sorted(newest.items(), key=lambda item: item[1].info.start_time or 0):
        network = run.data.tags["network"]
        kind = kinds[network]
        if kind == "teacher":
            label = f"teacher {teacher}"
        elif kind == "alone":
            label = f"{student} alone"
        else:
            label = _SEED.sub("", trained).removeprefix(f"{network}-")
        row = rows.setdefault(label, ComparisonRow(label, kind))
        row.runs.append(trained)
        for organ in [*organs, "mean"]:
            dice = f"{prefix}_mean_dice" if organ == "mean" else f"{prefix}_dice_{organ}"
            hd95 = f"{prefix}_mean_hd95" if organ == "mean" else f"{prefix}_hd95_{organ}"
            row.dice.setdefault(organ, []).append(_metric(run, dice))
            row.hd95.setdefault(organ, []).append(_metric(run, hd95))
    order = {"teacher": 0, "alone": 1, "distilled": 2}
    return sorted(rows.values(), key=lambda row: order[row.kind])


def _reference(rows: Sequence[ComparisonRow], kind: str) -> ComparisonRow | None:
    return next((row for row in rows if row.kind == kind), None)


def format_comparison(rows: Sequence[ComparisonRow], organs: Sequence[str], title: str) -> str:
    """The comparison as a Markdown table: one column per model (its number of seeds in brackets), Dice (%) per organ
    and the mean, mean HD95 (mm), and the share of the gap each method closes on the mean Dice and per organ.

    Args:
        rows: from :func:`comparison_rows`.
        organs: the organs, in table order.
        title: the line above the table.
    """
    teacher, alone = _reference(rows, "teacher"), _reference(rows, "alone")
    header = ["organ", *(f"{row.label} ({len(row.runs)})" for row in rows)]
    lines = [f"| {' | '.join(header)} |", f"|{'|'.join(['---'] + ['---:'] * len(rows))}|"]
    for organ in [*organs, "mean"]:
        cells = []
        for row in rows:
            cell = format_mean_std(*row.mean_std("dice", organ), scale=100.0, missing="n/a")
            if row.kind == "distilled" and teacher is not None and alone is not None:
                closed = gap_closed(row.mean("dice", organ), alone.mean("dice", organ), teacher.mean("dice", organ))
                cell += "" if math.isnan(closed) else f" ({closed:+.0%})"
            cells.append(cell)
        name = "**mean Dice**" if organ == "mean" else organ.replace("_", " ")
        lines.append(f"| {name} | {' | '.join(cells)} |")
    hd95 = [format_mean_std(*row.mean_std("hd95", "mean"), missing="n/a") for row in rows]
    lines.append(f"| mean HD95 (mm) | {' | '.join(hd95)} |")
    notes = [
        f"{title}: test Dice (%), mean ± std over the seeds (runs per model in brackets); "
        "in brackets after a distilled cell, the share of the teacher-student gap closed.",
    ]
    if teacher is None or alone is None:
        missing = " and ".join(
            what for what, row in (("the teacher", teacher), ("the student alone", alone)) if row is None
        )
        notes.append(f"No gap closed: {missing} has no evaluation on this test set in the experiment yet.")
    return "\n".join([*notes, "", *lines])


def comparison_figure(rows: Sequence[ComparisonRow], organs: Sequence[str], title: str = "") -> Figure:
    """Grouped bars per organ and the mean: Dice (top) and HD95 (bottom), one bar per model, mean ± std over seeds.

    The teacher is dark grey, the student alone light grey, the distilled students in colour.

    Raises:
        ValueError: when ``rows`` is empty.
    """
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    if not rows:
        raise ValueError("comparison_figure needs at least one model")
    names = [*organs, "mean"]
    methods = [row for row in rows if row.kind == "distilled"]
    tab = colormaps["tab10"]
    colours = {"teacher": "#404040", "alone": "#bdbdbd"}
    width = 0.8 / len(rows)
    fig = Figure(figsize=(12.0, 8.0), layout="constrained")
    axes = fig.subplots(2, 1)
    for ax, (metric, label) in zip(axes, (("dice", "Dice"), ("hd95", "HD95 (mm)")), strict=True):
        for i, row in enumerate(rows):
            colour = colours.get(row.kind) or tab(methods.index(row) % 10)
            means, stds = zip(*(row.mean_std(metric, organ) for organ in names), strict=True)
            positions = [k + (i - (len(rows) - 1) / 2) * width for k in range(len(names))]
            ax.bar(
                positions,
                [0.0 if math.isnan(m) else m for m in means],
                width,
                yerr=[0.0 if math.isnan(s) else s for s in stds],
                color=colour,
                edgecolor="black",
                linewidth=0.4,
                capsize=2,
                label=f"{row.label} ({len(row.runs)})",
            )
        ax.set_xticks(range(len(names)), [n.replace("_", " ") for n in names], rotation=40, ha="right", fontsize=8)
        ax.set_ylabel(label)
        if metric == "dice":
            ax.set_ylim(0.0, 1.05)
        ax.set_title(f"{label}: mean ± std over seeds", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


class ComparisonHandler(RunArtefactHandler):
    """At the evaluator's ``COMPLETED``, compare the evaluated model with the teacher, the student alone and every
    distillation method evaluated on the same test set in the same MLflow experiment (:func:`comparison_rows`).

    Prints the table (:func:`format_comparison`), writes ``<output_dir>/comparison-<student>.md`` and ``.png``
    (:func:`comparison_figure`), and logs both, with each model's mean Dice and each method's gap closed as metrics,
    to the experiment's summary run ``compare-<student>-from-<teacher>`` (created on first use, tagged ``role`` =
    ``summary``; each comparison is a new step of its metrics). Evaluating a teacher compares it with every student
    distilled from it in the experiment. Nothing is compared with tracking off (the runs live in the store).

    Args:
        run: the evaluation's MLflow run (the bundle's ``@mlflow_run``).
        teacher: the teacher's registered name.
        student: the evaluated student's registered name; ``None`` when the teacher was evaluated.
        class_names: the organs.
        output_dir: folder of the table and the figure (created when needed).
        prefix: the test metrics' prefix.
        dpi: the figure's resolution.
    """

    EVENTS = {"COMPLETED": "completed"}

    def __init__(
        self,
        run: MlflowRun | None,
        teacher: str,
        student: str | None,
        class_names: Sequence[str],
        output_dir: str | os.PathLike,
        prefix: str = "test",
        dpi: float = 100.0,
    ) -> None:
        super().__init__(run)
        if not class_names:
            raise ValueError("class_names must name at least one organ")
        self.teacher = teacher
        self.student = student
        self.organs = list(class_names)
        self.output_dir = Path(output_dir)
        self.prefix = prefix
        self.dpi = float(dpi)
        self.tables: dict[str, str] = {}

    def completed(self, engine: Engine | None = None) -> None:
        """Compare (nothing with tracking off, or when the store refuses the reads)."""
        if not self.mlflow.enabled:
            return
        self.tables = self.mlflow.read(self._compare, default={})
        for table in self.tables.values():
            text = f"\n{table}\n"
            encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
            print(text.encode(encoding, errors="replace").decode(encoding), flush=True)  # ± on an ASCII terminal

    def _compare(self) -> dict[str, str]:
        client = self.mlflow.client
        reference = client.get_run(self.mlflow.run_id())
        return log_comparison(
            client, reference, self.teacher, self.student, self.organs, self.output_dir, self.prefix, self.dpi
        )


def log_comparison(
    client: Any,
    reference: Any,
    teacher: str,
    student: str | None,
    organs: Sequence[str],
    output_dir: str | os.PathLike,
    prefix: str = "test",
    dpi: float = 100.0,
) -> dict[str, str]:
    """What :class:`ComparisonHandler` does at the end of an evaluation, for the evaluation run ``reference``.

    For ``student`` (every student distilled from ``teacher`` in the experiment when ``None``): the rows
    (:func:`comparison_rows`), the table (:func:`format_comparison`) and the figure (:func:`comparison_figure`)
    written to ``<output_dir>/comparison-<student>.md`` and ``.png`` and logged, with :func:`summary_metrics`, to the
    summary run ``compare-<student>-from-<teacher>`` (created on first use; each comparison a new step).

    Args:
        client: an ``mlflow.MlflowClient``.
        reference: the evaluation run (an ``mlflow.entities.Run``).
        teacher, student: the pair compared.
        organs: the organ names of the per-organ metrics.
        output_dir: folder of the table and the figure (created when needed).
        prefix: the test metrics' prefix.
        dpi: the figure's resolution.

    Returns:
        student -> table, for every student with at least one evaluated model.
    """
    experiment_id = reference.info.experiment_id
    if student is None:
        suffix = f"_from_{teacher}"
        runs = client.search_runs([experiment_id], filter_string=f"tags.teacher = '{teacher}'", max_results=5000)
        networks = {r.data.tags.get("network", "") for r in runs}
        students = sorted(n.removesuffix(suffix) for n in networks if n.endswith(suffix))
    else:
        students = [student]
    output_dir = Path(output_dir)
    tables = {}
    for name in students:
        rows = comparison_rows(client, experiment_id, reference, teacher, name, organs, prefix)
        if not rows:
            continue
        title = f"{name} distilled from {teacher}"
        tables[name] = format_comparison(rows, organs, title)
        output_dir.mkdir(parents=True, exist_ok=True)
        md, png = output_dir / f"comparison-{name}.md", output_dir / f"comparison-{name}.png"
        md.write_text(tables[name] + "\n", encoding="utf-8")
        save_figure(comparison_figure(rows, organs, title), png, dpi)
        run_name = summary_run_name(teacher, name)
        found = client.search_runs([experiment_id], filter_string=f"attributes.run_name = '{run_name}'", max_results=1)
        if found:
            summary = found[0].info.run_id
            step = int(found[0].data.metrics.get("comparisons", 0))
        else:
            tags = {"role": SUMMARY_ROLE, "teacher": teacher, "student": name}
            summary = client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
            step = 0
        metrics = {**summary_metrics(rows), "comparisons": step + 1}
        for key, value in metrics.items():
            client.log_metric(summary, key, value, step=step + 1)
        for path in (md, png):
            client.log_artifact(summary, os.fspath(path))
        client.set_terminated(summary, "FINISHED")
    return tables


def summary_run_name(teacher: str, student: str) -> str:
    """The summary run of a teacher-student pair: ``compare-<student>-from-<teacher>``."""
    return f"compare-{student}-from-{teacher}"


def summary_metrics(rows: Sequence[ComparisonRow]) -> dict[str, float]:
    """Each model's mean Dice (``dice_<label>``) and each method's gap closed (``gap_closed_<label>``)."""
    teacher, alone = _reference(rows, "teacher"), _reference(rows, "alone")

    def key(label: str) -> str:
        return re.sub(r"[^0-9A-Za-z_\-. /]", "_", label.replace(" ", "_"))

    metrics = {}
    for row in rows:
        value = row.mean("dice", "mean")
        if math.isfinite(value):
            metrics[f"dice_{key(row.kind if row.kind != 'distilled' else row.label)}"] = value
        if row.kind == "distilled" and teacher is not None and alone is not None:
            closed = gap_closed(value, alone.mean("dice", "mean"), teacher.mean("dice", "mean"))
            if math.isfinite(closed):
                metrics[f"gap_closed_{key(row.label)}"] = closed
    return metrics
