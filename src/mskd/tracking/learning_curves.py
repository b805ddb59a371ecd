"""Learning curves read back from the MLflow run: every loss term per iteration (and its epoch means), validation
Dice per epoch."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from monai.utils import optional_import

from mskd.plotting import default_colours, save_figure
from mskd.tracking.artefacts import RunArtefactHandler
from mskd.tracking.mlflow_handler import EPOCH_MEAN_PREFIX
from mskd.tracking.run import MlflowRun

Events, _ = optional_import("ignite.engine", name="Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
    from matplotlib.figure import Figure
else:
    Engine, _ = optional_import("ignite.engine", name="Engine")

__all__ = ["LearningCurvesHandler", "learning_curves_figure"]

History = Sequence[tuple[int, float]]  # (step, value) pairs


def learning_curves_figure(
    losses: Mapping[str, History],
    validation: Mapping[str, History],
    main_metric: str = "val_mean_dice",
    class_prefix: str = "val_dice_",
    class_names: Sequence[str] = (),
    title: str = "",
) -> Figure:
    """Two panels: the loss terms against the iteration, the validation metrics against the epoch.

    The total ``loss`` is drawn thick and grey-black under the terms (thin); the epoch means of a term
    (``epoch_mean_<term>``, at each epoch's last iteration) are dots joined by a dashed line in the term's colour, so a
    run too short for the logging interval still has curves. The scale is logarithmic when every value is positive
    and they span more than a factor 20, as terms can differ by orders of magnitude. On the right,
    ``main_metric`` is drawn thick and black with its best epoch marked, the per-organ metrics
    ``<class_prefix><organ>`` thin in the organ colours of :data:`~mskd.plotting.LABEL_COLOURS`.

    Args:
        losses: metric name -> ``(iteration, value)`` pairs: the terms and their ``epoch_mean_`` means.
        validation: metric name -> ``(epoch, value)`` pairs.
        main_metric: the validation metric drawn thick.
        class_prefix: prefix of the per-organ validation metrics.
        class_names: foreground organ names in label order (for the organ colours).
        title: the figure's title.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13.0, 4.6), layout="constrained")
    ax_loss, ax_val = fig.subplots(1, 2)
    from matplotlib.ticker import MaxNLocator

    values = [v for history in losses.values() for _, v in history]
    terms = sorted({n.removeprefix(EPOCH_MEAN_PREFIX) for n in losses}, key=lambda n: (n != "loss", n))
    for term in terms:  # the total first, thick, under the terms
        colour = "black" if term == "loss" else None
        if losses.get(term):
            steps, vals = zip(*losses[term], strict=True)
            width = 2.6 if term == "loss" else 1.0
            (line,) = ax_loss.plot(steps, vals, label=term, color=colour, linewidth=width, alpha=0.55 if colour else 1)
            colour = line.get_color()
        if losses.get(EPOCH_MEAN_PREFIX + term):
            steps, vals = zip(*losses[EPOCH_MEAN_PREFIX + term], strict=True)
            ax_loss.plot(steps, vals, "o--", color=colour, linewidth=0.9, markersize=3.5, label=f"{term} (epoch mean)")
    if values and min(values) > 0 and max(values) > 20 * min(values):
        ax_loss.set_yscale("log")
    ax_loss.set_xlabel("iteration")
    ax_loss.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("training loss terms", fontsize=10)
    if losses:
        ax_loss.legend(fontsize=8)
    else:
        ax_loss.text(0.5, 0.5, "no loss logged", ha="center", va="center", transform=ax_loss.transAxes)
    ax_loss.grid(alpha=0.3)

    palette = default_colours({k: n for k, n in enumerate(class_names, start=1)})
    colour_of = {n: palette[k] for k, n in enumerate(class_names, start=1)}
    for name in sorted(n for n in validation if n != main_metric):
        if validation[name]:
            organ = name[len(class_prefix) :] if name.startswith(class_prefix) else name
            steps, vals = zip(*validation[name], strict=True)
            ax_val.plot(steps, vals, linewidth=0.9, alpha=0.8, color=colour_of.get(organ), label=organ)
    main = validation.get(main_metric) or []
    if main:
        steps, vals = zip(*main, strict=True)
        ax_val.plot(steps, vals, color="black", linewidth=2.0, marker="o", markersize=3, label=main_metric)
        best = max(range(len(vals)), key=lambda i: (vals[i], -i))
        ax_val.plot([steps[best]], [vals[best]], marker="*", markersize=11, color="black", linestyle="none")
        ax_val.annotate(
            f"best {vals[best]:.3f} (epoch {steps[best]})",
            (steps[best], vals[best]),
            textcoords="offset points",
            xytext=(0, 9),
            ha="left" if best < len(vals) / 2 else "right",
            fontsize=8,
        )
    if validation:
        ax_val.set_ylim(0.0, 1.05)
        ax_val.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    else:
        ax_val.text(0.5, 0.5, "no validation metric logged", ha="center", va="center", transform=ax_val.transAxes)
    ax_val.set_xlabel("epoch")
    ax_val.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_val.set_ylabel("Dice")
    ax_val.set_title("validation", fontsize=10)
    ax_val.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


class LearningCurvesHandler(RunArtefactHandler):
    """At the trainer's ``COMPLETED``, plot the run's logged metric histories into ``learning_curves.png`` and log it.

    The curves are read back from the MLflow run (``MlflowClient.get_metric_history``), so they show what MLflow
    recorded, at the logging interval: every metric named ``loss`` or ``loss_<term>`` (and their epoch means,
    ``epoch_mean_loss...``, see :class:`mskd.tracking.MLFlowHandler`) against the iteration, and
    ``val_metric`` with the per-organ ``<val_class_prefix><organ>`` metrics against the epoch.

    Args:
        output_dir: folder of the PNG (created when needed).
        run: the workflow's MLflow run (the bundle's ``@mlflow_run``), whose logged curves are drawn; nothing is drawn
            with tracking off.
        class_names: foreground organ names in label order (organ colours of the per-organ curves).
        loss_prefix: the loss metrics are ``loss_prefix`` and ``<loss_prefix>_<term>``.
        val_metric: the main validation metric.
        val_class_prefix: prefix of the per-organ validation metrics (``""`` leaves them out).
        artifact_path: MLflow artifact folder of the PNG.
        filename: PNG file name.
        dpi: PNG resolution.
    """

    EVENTS = {"COMPLETED": "completed"}

    def __init__(
        self,
        output_dir: str | os.PathLike,
        run: MlflowRun,
        class_names: Sequence[str] = (),
        loss_prefix: str = "loss",
        val_metric: str = "val_mean_dice",
        val_class_prefix: str = "val_dice_",
        artifact_path: str = "curves",
        filename: str = "learning_curves.png",
        dpi: float = 100.0,
    ) -> None:
        super().__init__(run)
        self.output_dir = Path(output_dir)
        self.class_names = [str(n) for n in class_names]
        self.loss_pattern = re.compile(rf"^({re.escape(EPOCH_MEAN_PREFIX)})?{re.escape(loss_prefix)}(_\w+)?$")
        self.val_metric = val_metric
        self.val_class_prefix = val_class_prefix
        self.artifact_path = artifact_path
        self.filename = filename
        self.dpi = float(dpi)
        self.last_path: Path | None = None

    def histories(self) -> tuple[dict[str, list[tuple[int, float]]], dict[str, list[tuple[int, float]]]]:
        """The run's loss and validation metric histories, each sorted by step (then time); empty when the store
        refuses the reads."""
        return self.mlflow.read(self._read_histories, default=({}, {}))

    def _read_histories(self) -> tuple[dict[str, list[tuple[int, float]]], dict[str, list[tuple[int, float]]]]:
        client, run_id = self.mlflow.client, self.mlflow.run_id()
        names = client.get_run(run_id).data.metrics
        losses, validation = {}, {}
        for name in names:
            if self.loss_pattern.match(name):
                target = losses
            elif name == self.val_metric or (self.val_class_prefix and name.startswith(self.val_class_prefix)):
                target = validation
            else:
                continue
            history = sorted(client.get_metric_history(run_id, name), key=lambda m: (m.step, m.timestamp))
            target[name] = [(int(m.step), float(m.value)) for m in history]
        return losses, validation

    def completed(self, engine: Engine) -> None:
        """Plot the histories into ``<output_dir>/<filename>`` and log it under ``artifact_path``."""
        if not self.mlflow.enabled:
            return
        losses, validation = self.histories()
        fig = learning_curves_figure(
            losses,
            validation,
            main_metric=self.val_metric,
            class_prefix=self.val_class_prefix,
            class_names=self.class_names,
            title=f"{self.mlflow.display_name()}: learning curves".strip(": "),
        )
        self.output_dir.mkdir(parents=True, exist_ok=True)
        path = self.output_dir / self.filename
        save_figure(fig, path, self.dpi)
        self.last_path = path
        self.mlflow.log_artifact(path, self.artifact_path)
