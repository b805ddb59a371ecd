"""The results of an experiment: speed of learning, mean ± std over seeds, the markdown report and the bar chart.

Outputs in the experiment's ``output`` (default ``docs/results/<name>``): ``results.csv`` (one row per run),
``results.md`` (mean ± std over seeds) and ``dice.png`` (bar chart). The report counts each network's parameters;
its CPU latency is measured by ``benchmarks/networks.py`` (``make bench``), not here, where the runs share the cores.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mskd.experiment.plan import Workdir, plan_runs
from mskd.io import atomic_open, atomic_path

__all__ = [
    "finished_rows",
    "format_results",
    "learning_speed",
    "parameter_counts",
    "summarise_results",
    "write_outputs",
]


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
    from mskd.metrics import mean_std  # it loads torch and SciPy: not when the package is imported

    curves = [json.loads(r["val_curve"]) if r.get("val_curve") else [] for r in rows]
    converged: dict[str, list[float]] = {}
    for r in rows:
        if r["method"] == reference and r.get("selected", True) not in (False, "False", "false", 0):
            converged.setdefault(r["student"], []).append(float(r.get("val_mean_dice_best", math.nan)))
    out = []
    for r, curve in zip(rows, curves, strict=True):
        steps = int(r["steps_per_epoch"]) if r.get("steps_per_epoch") not in (None, "") else None
        short = [dice for epoch, dice in curve if short_epochs is not None and epoch <= short_epochs]
        target = 0.9 * mean_std(converged.get(r["student"], []))[0]
        reached = [epoch for epoch, dice in curve if dice >= target]
        out.append(
            {
                **r,
                "val_dice_short": short[-1] if short else math.nan,
                "steps_to_target": reached[0] * steps if reached and steps and r["method"] != "teacher" else math.nan,
            }
        )
    return out


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
    from mskd.metrics import mean_std

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
            summary[c], summary[f"{c}_std"] = mean_std([float(m.get(c, math.nan)) for m in members])
        if "steps_to_target" in columns:
            summary["steps_to_target_reached"] = sum(not math.isnan(float(m["steps_to_target"])) for m in members)
        out.append(summary)
    return out


def _steps(summary: Mapping[str, Any]) -> str:
    """Steps to the target Dice, ``mean ± std``, with ``(k of n seeds)`` when not every seed reached it."""
    reached, seeds = summary.get("steps_to_target_reached", 0), summary["seeds"]
    if summary["method"] == "teacher":
        return ""
    if not reached:
        return "not reached"
    from mskd.metrics import format_mean_std

    text = format_mean_std(summary["steps_to_target"], summary["steps_to_target_std"], digits=0)
    return text if reached == seeds else f"{text} ({reached} of {seeds} seeds)"


def _gap_closed(summary: Sequence[Mapping[str, Any]], teacher: Mapping[str, Any] | None, reference: str | None):
    """:func:`mskd.metrics.gap_closed` of the mean Dice per (student, method); reference = the no-KD row."""
    from mskd.metrics import gap_closed

    if teacher is None or reference is None:
        return {}
    base = {s["student"]: s["dice_mean"] for s in summary if s["method"] == reference}
    out = {}
    for s in summary:
        closed = gap_closed(s["dice_mean"], base.get(s["student"], math.nan), teacher["dice_mean"])
        if s["method"] not in ("teacher", reference) and not math.isnan(closed):
            out[(s["student"], s["method"])] = closed
    return out


def format_results(
    cfg: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    organs: Sequence[str],
    params: Mapping[str, int],
    wall_s: float | None,
    planned: int | None = None,
) -> str:
    """The markdown report: overall table with the gap closed, per-organ Dice and HD95, the weight selection.

    Args:
        cfg: an experiment from :func:`~mskd.experiment.load_experiment`.
        rows: one result row per finished run (as in ``results.csv``).
        organs: organ names.
        params: parameters per network (:func:`parameter_counts`); a network not in it shows 0.
        wall_s: wall time of the invocation that wrote the report (``None``: rewritten from stored runs).
        planned: the number of runs the matrix will have; fewer ``rows`` mark the report as partial.

    Returns:
        the markdown text.
    """
    from mskd.metrics import format_mean_std  # it loads torch and SciPy: not when the package is imported

    reference = next((m for m, spec in cfg["methods"].items() if not spec["distill"]), None)
    short = cfg.get("short_epochs")
    summary = summarise_results(learning_speed(rows, reference, short), organs)
    teacher = next((s for s in summary if s["method"] == "teacher"), None)
    gap = _gap_closed(summary, teacher, reference)
    size, threads = cfg["overrides"].get("image_size", 224), cfg["threads"]
    networks = [cfg["teacher"]["network"], *cfg["students"]]
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
        f"student's converged (best {reference or 'no-KD'}) validation Dice, with the seeds that reached it. "
        "Params: of each network as the runs build it. Batch-1 CPU latency is not timed here (the runs share the "
        "cores): `benchmarks/networks.py` measures it (`make bench`: docs/networks.md, docs/benchmarks/networks.json), "
        f"for these networks and inputs with `--networks {' '.join(networks)} --size {size} --threads {threads} "
        f"--classes {len(organs) + 1}`.",
        "",
        "| student | method | seeds | params | Dice (%) | HD95 (mm) | gap closed | val Dice @ short budget (%) "
        "| steps to 90 % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        g = gap.get((s["student"], s["method"]))
        short_dice = format_mean_std(s.get("val_dice_short", math.nan), s.get("val_dice_short_std", math.nan), 100)
        lines.append(
            f"| {s['student']} | {s['method']} | {s['seeds']} | {params.get(s['student'], 0):,} | "
            f"{format_mean_std(s['dice_mean'], s['dice_mean_std'], 100)} | "
            f"{format_mean_std(s['hd95_mean'], s['hd95_mean_std'])} | {'' if g is None else f'{100 * g:+.0f} %'} | "
            f"{short_dice} | {_steps(s)} |"
        )
    for metric, scale, title in (("dice", 100, "Dice (%)"), ("hd95", 1, "HD95 (mm)")):
        lines += ["", f"## Per-organ {title}", "", "| student | method | " + " | ".join(organs) + " |"]
        lines.append("|---|---|" + "---|" * len(organs))
        for s in summary:
            cells = [format_mean_std(s[f"{metric}_{o}"], s[f"{metric}_{o}_std"], scale) for o in organs]
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
    wall = (
        "tables rewritten from the stored runs (`--report-only`)"
        if wall_s is None
        else f"wall time of the invocation that finished the matrix {wall_s / 60:.1f} min"
    )
    lines += [
        "",
        f"Runs: {len(rows)}; sum of run times {run_time / 60:.1f} min with {cfg['jobs']} at a time × {threads} "
        f"thread(s); {wall}.",
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
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def parameter_counts(cfg: Mapping[str, Any], num_classes: int) -> dict[str, int]:
    """Parameters of the teacher and every student, built as the runs build them (``*_kwargs``, ``num_classes``).

    Args:
        cfg: an experiment from :func:`~mskd.experiment.load_experiment`.
        num_classes: output channels (the organs and the background).

    Returns:
        network name -> number of parameters.
    """
    from mskd.networks import count_parameters, get_network

    kwargs = {cfg["teacher"]["network"]: cfg["overrides"].get("teacher_kwargs", {})}
    kwargs.update(
        {s: o.get("student_kwargs", cfg["overrides"].get("student_kwargs", {})) for s, o in cfg["students"].items()}
    )
    return {name: count_parameters(get_network(name, 1, num_classes, **kw)) for name, kw in kwargs.items()}


def finished_rows(cfg: Mapping[str, Any], workdir: Workdir, chosen: Mapping[tuple[str, str], int]) -> list[dict]:
    """The result rows of the planned runs that have finished, each marked ``selected`` (not an unchosen candidate).

    Args:
        cfg: an experiment from :func:`~mskd.experiment.load_experiment`.
        workdir: its workdir.
        chosen: the candidate chosen on validation per ``(student, method)``.

    Returns:
        the rows, in plan order.
    """
    rows = []
    for run in plan_runs(cfg, chosen):
        if workdir.finished(run.name):
            row = workdir.read_result(run.name)
            row["selected"] = run.candidate is None or chosen.get((run.student, run.label)) == run.candidate
            rows.append(row)
    return rows


def write_outputs(
    cfg: Mapping[str, Any],
    rows: list[dict[str, Any]],
    organs: Sequence[str],
    params: Mapping[str, int],
    wall_s: float | None,
    planned: int,
) -> Path:
    """Write ``results.csv``, ``results.md`` (:func:`format_results`) and ``dice.png`` into the experiment's output.

    Args:
        cfg: an experiment from :func:`~mskd.experiment.load_experiment`.
        rows: the finished runs' rows (:func:`finished_rows`).
        organs: organ names.
        params: parameters per network (:func:`parameter_counts`).
        wall_s: wall time of this invocation so far (``None``: rewritten from stored runs).
        planned: the number of runs the matrix will have.

    Returns:
        the output folder.
    """
    out: Path = cfg["output"]
    out.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with atomic_open(out / "results.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    with atomic_open(out / "results.md", "w", encoding="utf-8") as f:
        f.write(format_results(cfg, rows, organs, params, wall_s, planned))
    _bar_chart(out / "dice.png", summarise_results(rows, organs), f"{cfg['name']}: test Dice")
    return out
