"""Per-organ Dice and HD95 bar chart (mean ± std over the test cases) of an evaluation, logged to MLflow."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from monai.utils import optional_import

from mskd.plotting import default_colours, save_figure
from mskd.tracking.artefacts import RunArtefactHandler
from mskd.tracking.run import MlflowRun

Events, _ = optional_import("ignite.engine", name="Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
    from matplotlib.figure import Figure

    from mskd.handlers.volume_metrics import VolumeMetricsHandler
else:
    Engine, _ = optional_import("ignite.engine", name="Engine")

__all__ = ["MetricBarsHandler", "metric_bars_figure"]

_MEAN_COLOUR = "#555555"


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def metric_bars_figure(summary: Sequence[Mapping[str, Any]], title: str = "") -> Figure:
    """Two bar charts side by side, one bar per organ and a grey ``mean`` bar: Dice and HD95 (mm), mean ± std.

    Args:
        summary: rows of :func:`mskd.metrics.summarise` (or of its summary CSV): ``organ``, ``n``, ``n_hd95``,
            ``dice_mean``, ``dice_std``, ``hd95_mm_mean``, ``hd95_mm_std``, one per organ then the ``mean`` row.
            Undefined values (NaN) leave the bar out and print "n/a"; a NaN std draws no error bar.
        title: the figure's title.

    Raises:
        ValueError: when ``summary`` is empty or a row has no ``organ``.
    """
    from matplotlib.figure import Figure

    if not summary:
        raise ValueError("metric_bars_figure needs at least one summary row")
    if any("organ" not in row for row in summary):
        raise ValueError(f"every summary row needs an 'organ' entry, got keys {sorted(summary[0])}")
    organs = [str(row["organ"]) for row in summary]
    palette = default_colours({k: n for k, n in enumerate((o for o in organs if o != "mean"), start=1)})
    colours = []
    k = 0
    for organ in organs:
        if organ == "mean":
            colours.append(_MEAN_COLOUR)
        else:
            k += 1
            colours.append(palette[k])
    fig = Figure(figsize=(max(8.0, 1.1 * len(organs) + 3.0), 4.4), layout="constrained")
    axes = fig.subplots(1, 2)
    panels = (("dice", "Dice", "n"), ("hd95_mm", "HD95 (mm)", "n_hd95"))
    positions = list(range(len(organs)))
    for ax, (key, label, count) in zip(axes, panels, strict=True):
        means = [_number(row.get(f"{key}_mean")) for row in summary]
        stds = [_number(row.get(f"{key}_std")) for row in summary]
        heights = [0.0 if math.isnan(m) else m for m in means]
        errors = [0.0 if math.isnan(s) or math.isnan(m) else s for m, s in zip(means, stds, strict=True)]
        ax.bar(positions, heights, yerr=errors, color=colours, edgecolor="black", linewidth=0.5, capsize=3)
        top = max((m + e for m, e in zip(heights, errors, strict=True)), default=1.0) or 1.0
        for x, mean, row in zip(positions, means, summary, strict=True):
            text = "n/a" if math.isnan(mean) else f"{mean:.2f}" if key == "dice" else f"{mean:.1f}"
            n = row.get(count)
            if n not in (None, "") and not math.isnan(_number(n)):
                text += f"\nn={int(_number(n))}"
            ax.text(x, (0 if math.isnan(mean) else mean) + 0.02 * top, text, ha="center", va="bottom", fontsize=7)
        ax.set_xticks(positions, [o.replace("_", " ") for o in organs], rotation=40, ha="right", fontsize=8)
        ax.set_ylabel(label)
        ax.set_ylim(0.0, 1.12 if key == "dice" else 1.2 * top)
        ax.set_title(f"{label}: mean ± std over cases", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


class MetricBarsHandler(RunArtefactHandler):
    """At the evaluator's ``COMPLETED``, draw the per-organ Dice and HD95 bars of a ``VolumeMetricsHandler``'s summary.

    Reads :attr:`~mskd.handlers.VolumeMetricsHandler.summary` (filled at ``EPOCH_COMPLETED``), draws
    :func:`metric_bars_figure` into ``<output_dir>/<filename>`` (written under a temporary name, then renamed) and
    logs it to MLflow under ``artifact_path``. Attach it anywhere in the evaluator's handlers: ``COMPLETED`` comes
    after every ``EPOCH_COMPLETED``, and the run is found even when the ``MLFlowHandler`` has closed it.

    Args:
        volume_metrics: the evaluator's :class:`~mskd.handlers.VolumeMetricsHandler`.
        output_dir: folder of the PNG (created when needed).
        run: the workflow's MLflow run (the bundle's ``@mlflow_run``); ``None`` writes the PNG without logging it.
        artifact_path: MLflow artifact folder of the PNG.
        filename: PNG file name; default ``<prefix>_metrics.png`` with the handler's prefix.
        dpi: PNG resolution.
    """

    EVENTS = {"COMPLETED": "completed"}

    def __init__(
        self,
        volume_metrics: VolumeMetricsHandler,
        output_dir: str | os.PathLike,
        run: MlflowRun | None = None,
        artifact_path: str = "evaluation",
        filename: str | None = None,
        dpi: float = 100.0,
    ) -> None:
        super().__init__(run)
        if not hasattr(volume_metrics, "summary"):
            raise TypeError(f"volume_metrics must be a VolumeMetricsHandler, got {type(volume_metrics).__name__}")
        self.volume_metrics = volume_metrics
        self.output_dir = Path(output_dir)
        self.artifact_path = artifact_path
        self.filename = filename or f"{getattr(volume_metrics, 'prefix', 'test')}_metrics.png"
        self.dpi = float(dpi)
        self.last_path: Path | None = None

    def completed(self, engine: Engine) -> None:
        """Draw the summary (nothing when no case was scored) and log the PNG."""
        summary = self.volume_metrics.summary
        if not summary:
            return
        cases = len(getattr(self.volume_metrics, "cases", []))
        name = self.mlflow.display_name() or getattr(self.volume_metrics, "prefix", "evaluation")
        fig = metric_bars_figure(summary, title=f"{name}: {cases} case{'s' if cases != 1 else ''}")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        path = self.output_dir / self.filename
        save_figure(fig, path, self.dpi)
        self.last_path = path
        self.mlflow.log_artifact(path, self.artifact_path)
