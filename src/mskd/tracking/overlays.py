"""Validation overlays: the same CT slices at every validation, ground truth and prediction outlined per organ."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from monai.utils import optional_import

from mskd.data.labels import HU_WINDOWS
from mskd.handlers.events import attach_once
from mskd.plotting import add_legend, default_colours, draw_overlay, ras_slice, save_figure
from mskd.tracking.run import MlflowRun

Events, _ = optional_import("ignite.engine", name="Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
    from matplotlib.figure import Figure
else:
    Engine, _ = optional_import("ignite.engine", name="Engine")

__all__ = ["OverlayHandler", "OverlaySlice", "overlay_figure", "select_slice", "slice_dice"]

logger = logging.getLogger(__name__)


def select_slice(label: np.ndarray | torch.Tensor) -> int:
    """The axial slice (last axis) of a label map ``(H, W, D)`` showing the most organs.

    Ties go to the slice with more foreground voxels, then to the lowest index; a label map without foreground
    gives the middle slice. Deterministic: the same label map always gives the same slice.

    Raises:
        ValueError: when ``label`` is not 3D.
    """
    label = _numpy(label)
    if label.ndim != 3:
        raise ValueError(f"label must be a 3D label map (H, W, D), got shape {label.shape}")
    depth = label.shape[-1]
    ids = [k for k in np.unique(label) if k > 0]
    if not ids:
        return depth // 2
    organs = sum(np.any(label == k, axis=(0, 1)).astype(np.int64) for k in ids)
    voxels = np.count_nonzero(label > 0, axis=(0, 1))
    return int(np.lexsort((-np.arange(depth), voxels, organs))[-1])  # max organs, then voxels, then lowest index


def slice_dice(pred: np.ndarray, label: np.ndarray, ids: Sequence[int]) -> float:
    """Mean Dice over the organs ``ids`` present in ``pred`` or ``label`` (NaN when none is)."""
    scores = []
    for k in ids:
        p, g = pred == k, label == k
        total = np.count_nonzero(p) + np.count_nonzero(g)
        if total:
            scores.append(2.0 * np.count_nonzero(p & g) / total)
    return float(np.mean(scores)) if scores else float("nan")


@dataclass
class OverlaySlice:
    """One row of an overlay figure: an axial slice of a case in RAS+ voxel order ``(x, y)``.

    ``image`` in HU; ``label``, ``pred`` and the optional ``teacher`` are integer label maps of the same shape;
    ``spacing`` is the pixel size ``(x, y)`` in mm.
    """

    case: str
    index: int
    image: np.ndarray
    label: np.ndarray
    pred: np.ndarray
    teacher: np.ndarray | None = None
    spacing: tuple[float, float] = field(default=(1.0, 1.0))


def overlay_figure(
    rows: Sequence[OverlaySlice],
    class_names: Mapping[int, str],
    window: Sequence[float] = HU_WINDOWS["synapse"],
    title: str = "",
    pred_title: str = "prediction",
    teacher_title: str = "teacher",
) -> Figure:
    """A grid of axial slices, one row per case: ground truth, prediction and (when every row has one) teacher.

    Each panel shows the slice in the radiological convention (:func:`~mskd.plotting.ras_slice`) through
    ``window`` with each organ outlined in its :data:`~mskd.plotting.LABEL_COLOURS` colour; the prediction panels
    give the slice's mean Dice over the organs in the ground truth or the prediction. One legend names the organs.

    Args:
        rows: the slices to draw.
        class_names: label id -> organ name.
        window: ``(lo, hi)`` HU shown from black to white.
        title: the figure's title.
        pred_title: title of the prediction column.
        teacher_title: title of the teacher column.

    Raises:
        ValueError: when ``rows`` is empty.
    """
    from matplotlib.figure import Figure

    if not rows:
        raise ValueError("overlay_figure needs at least one slice")
    with_teacher = all(r.teacher is not None for r in rows)
    columns = ["ground truth", pred_title] + ([teacher_title] if with_teacher else [])
    ids = [k for k in sorted(class_names) if k > 0]
    fig = Figure(figsize=(3.0 * len(columns), 3.0 * len(rows) + 0.9), layout="constrained")
    axes = fig.subplots(len(rows), len(columns), squeeze=False)
    for r, row in enumerate(rows):
        maps = [row.label, row.pred] + ([row.teacher] if with_teacher else [])
        image2d, pix = ras_slice(row.image[..., None], "axial", 0, (*row.spacing, 1.0))
        for c, (name, label_map) in enumerate(zip(columns, maps, strict=True)):
            ax = axes[r, c]
            label2d, _ = ras_slice(np.asarray(label_map)[..., None], "axial", 0, (*row.spacing, 1.0))
            draw_overlay(ax, image2d, label2d, window=window, class_names=class_names, spacing=pix)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_facecolor("black")
            text = name if c == 0 else f"{name}: slice Dice {slice_dice(label_map, row.label, ids):.2f}"
            ax.set_title(text, fontsize=9)
        axes[r, 0].set_ylabel(f"{row.case}\naxial slice {row.index}", fontsize=9)
    add_legend(fig, class_names, loc="outside lower center", ncol=min(len(ids), 4), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return (x.as_tensor() if hasattr(x, "as_tensor") else x).numpy()
    return np.asarray(x)


def _label_map(x: Any, key: str) -> np.ndarray:
    """``(C, H, W, D)`` one-hot or probabilities -> argmax; ``(1, H, W, D)`` or ``(H, W, D)`` label map as is."""
    arr = _numpy(x)
    if arr.ndim == 4:
        arr = arr.argmax(axis=0) if arr.shape[0] > 1 else arr[0]
    if arr.ndim != 3:
        raise ValueError(f"output item '{key}' must be a 3D volume (C, H, W, D) or (H, W, D), got shape {arr.shape}")
    return np.rint(arr).astype(np.int64)


def _spacing(x: Any) -> tuple[float, float]:
    """In-plane pixel size (mm) from a ``MetaTensor`` with a real affine, else ``(1, 1)``."""
    affine = getattr(x, "affine", None)
    if affine is None or not isinstance(getattr(x, "meta", None), Mapping):
        return (1.0, 1.0)
    affine = torch.as_tensor(affine, dtype=torch.float64)
    if torch.allclose(affine, torch.eye(affine.shape[-1], dtype=torch.float64)):
        return (1.0, 1.0)
    sizes = torch.linalg.norm(affine[:3, :3], dim=0).tolist()
    return float(sizes[0]), float(sizes[1])


class OverlayHandler:
    """At every validation, draw the same slices of the first validation cases and log the PNG to MLflow.

    For a MONAI ``SupervisedEvaluator`` whose output items hold ``image`` (the network input, ``(1, H, W, D)``,
    slice axis last, RAS+ order as :class:`~mskd.data.LoadCased` gives it), ``label`` and ``pred`` (one-hot or
    probabilities ``(C, H, W, D)``, or label maps ``(1, H, W, D)``; pred and label on one grid, the image
    resampled to it for display when its grid differs).

    - ``ITERATION_COMPLETED``: for each of the first ``num_cases`` cases of the epoch (loader order, so keep the
      validation loader unshuffled), keep one axial slice of image, label and prediction. The slice of a case is
      chosen the first time the case is seen, by :func:`select_slice` on its ground truth (most organs), and is
      reused at every later validation, so the figures of successive epochs show the same anatomy.
    - ``EPOCH_COMPLETED``: draw :func:`overlay_figure` into ``<output_dir>/<filename>`` (default ``epoch_<NNN>.png``;
      written under a temporary name, then renamed) and log it to MLflow under ``artifact_path``. ``NNN`` is the
      evaluator's ``state.epoch``: the trainer's epoch when the evaluator is run by MONAI's ``ValidationHandler``.

    With a ``teacher`` network (distillation), a third column shows the teacher's prediction on the same slices:
    the teacher is run on the 2D slice of ``image`` (eval mode, no gradients, on its own device).

    Args:
        class_names: foreground organ names in label order (class ``k`` is ``class_names[k - 1]``).
        output_dir: folder of the PNG files (created when needed).
        run: the workflow's MLflow run (the bundle's ``@mlflow_run``); ``None`` writes the PNGs without logging them.
        num_cases: how many validation cases (rows) to show.
        window: ``(lo, hi)`` display window in HU.
        scaled_range: ``(b_min, b_max)`` that ``ScaleIntensityRanged`` mapped ``window`` to; the image is mapped
            back to HU. ``None`` when the image is in HU.
        teacher: optional teacher network ``(B, 1, H, W) -> (B, C, H, W)`` logits.
        artifact_path: MLflow artifact folder of the PNGs.
        filename: PNG file name, formatted with ``epoch`` (e.g. ``"test_cases.png"`` for a single evaluation).
        title: figure title, formatted with ``run_name`` and ``epoch`` (e.g. ``"{run_name}: test cases"``).
        image_key: key of the image in the output items.
        label_key: key of the ground truth.
        pred_key: key of the prediction.
        dpi: PNG resolution.

    Raises:
        ValueError: for no class names, ``num_cases < 1``, a window with ``lo >= hi`` or a ``scaled_range`` with
            ``b_min >= b_max``.
    """

    def __init__(
        self,
        class_names: Sequence[str],
        output_dir: str | os.PathLike,
        run: MlflowRun | None = None,
        num_cases: int = 3,
        window: Sequence[float] = HU_WINDOWS["synapse"],
        scaled_range: Sequence[float] | None = (0.0, 1.0),
        teacher: torch.nn.Module | None = None,
        artifact_path: str = "overlays",
        filename: str = "epoch_{epoch:03d}.png",
        title: str = "{run_name}: epoch {epoch}",
        image_key: str = "image",
        label_key: str = "label",
        pred_key: str = "pred",
        dpi: float = 100.0,
    ) -> None:
        self.class_names = {k: str(name) for k, name in enumerate(class_names, start=1)}
        if not self.class_names:
            raise ValueError("class_names must name at least one foreground class")
        if num_cases < 1:
            raise ValueError(f"num_cases must be >= 1, got {num_cases}")
        self.window = tuple(float(v) for v in window)
        if len(self.window) != 2 or not self.window[0] < self.window[1]:
            raise ValueError(f"window must be (lo, hi) with lo < hi, got {tuple(window)!r}")
        self.scaled_range = None if scaled_range is None else tuple(float(v) for v in scaled_range)
        bad_range = self.scaled_range is not None and len(self.scaled_range) != 2
        if self.scaled_range is not None and (bad_range or not self.scaled_range[0] < self.scaled_range[1]):
            raise ValueError(f"scaled_range must be (b_min, b_max) with b_min < b_max, got {scaled_range!r}")
        self.output_dir = Path(output_dir)
        self.mlflow = MlflowRun(None) if run is None else run
        self.num_cases = int(num_cases)
        self.teacher = teacher
        self.artifact_path = artifact_path
        self.filename = filename
        self.title = title
        self.image_key, self.label_key, self.pred_key = image_key, label_key, pred_key
        self.dpi = float(dpi)
        self.slices: dict[int, int] = {}  # case position in the loader -> chosen axial slice (fixed once chosen)
        self.rows: list[OverlaySlice] = []
        self.last_path: Path | None = None
        self._seen = 0

    def attach(self, engine: Engine) -> None:
        """Register the handler's three steps on ``engine`` (once)."""
        attach_once(
            engine,
            (Events.EPOCH_STARTED, self.reset),
            (Events.ITERATION_COMPLETED, self.iteration_completed),
            (Events.EPOCH_COMPLETED, self.epoch_completed),
        )

    def reset(self, engine: Engine | None = None) -> None:
        """Forget the slices of the previous validation (the slice choice is kept) and look the run up again."""
        self.rows, self._seen = [], 0
        self.mlflow.forget()

    def _to_hu(self, image: np.ndarray) -> np.ndarray:
        if self.scaled_range is None:
            return image.astype(np.float32)
        (lo, hi), (b0, b1) = self.window, self.scaled_range
        return (lo + (image.astype(np.float32) - b0) * (hi - lo) / (b1 - b0)).astype(np.float32)

    @torch.no_grad()
    def _teacher_slice(self, image2d: torch.Tensor) -> np.ndarray:
        teacher = self.teacher
        device = next(teacher.parameters()).device
        was_training = teacher.training
        teacher.eval()
        try:
            logits = teacher(image2d[None, None].to(device=device, dtype=torch.float32))
        finally:
            teacher.train(was_training)
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        return logits[0].argmax(dim=0).cpu().numpy().astype(np.int64)

    def _row(self, item: Mapping[str, Any], position: int) -> OverlaySlice:
        for key in (self.image_key, self.label_key, self.pred_key):
            if key not in item:
                raise KeyError(f"{type(self).__name__} needs '{key}' in every output item, got keys {sorted(item)}")
        label = _label_map(item[self.label_key], self.label_key)
        pred = _label_map(item[self.pred_key], self.pred_key)
        if pred.shape != label.shape:
            raise ValueError(
                f"'{self.pred_key}' shape {pred.shape} differs from '{self.label_key}' shape {label.shape}"
            )
        if position not in self.slices:
            self.slices[position] = select_slice(label)
        z = self.slices[position]
        image = item[self.image_key]
        image = torch.as_tensor(image.as_tensor() if hasattr(image, "as_tensor") else image).detach().float().cpu()
        if image.ndim == 4:
            image = image[0]
        if image.ndim != 3:
            raise ValueError(
                f"output item '{self.image_key}' must be (1, H, W, D) or (H, W, D), got {tuple(image.shape)}"
            )
        z_image = min(image.shape[-1] - 1, int(z * image.shape[-1] / label.shape[-1]))
        image2d = image[..., z_image]
        teacher = self._teacher_slice(image2d) if self.teacher is not None else None
        if tuple(image2d.shape) != label.shape[:2]:  # evaluation: prediction inverted to the label's grid
            image2d = torch.nn.functional.interpolate(image2d[None, None], size=label.shape[:2], mode="bilinear")[0, 0]
            if teacher is not None:
                t = torch.as_tensor(teacher, dtype=torch.float32)[None, None]
                teacher = torch.nn.functional.interpolate(t, size=label.shape[:2], mode="nearest")[0, 0].long().numpy()
        return OverlaySlice(
            case=self._case(item, position),
            index=z,
            image=self._to_hu(image2d.numpy()),
            label=label[..., z],
            pred=pred[..., z],
            teacher=teacher,
            spacing=_spacing(item[self.label_key]),
        )

    @staticmethod
    def _case(item: Mapping[str, Any], position: int) -> str:
        from mskd.handlers.volume_metrics import case_name

        if "case" in item:
            return str(item["case"])
        for value in item.values():
            meta = getattr(value, "meta", None)
            if isinstance(meta, Mapping) and meta.get("filename_or_obj"):
                return case_name(meta["filename_or_obj"])
        return f"validation case {position + 1}"

    def iteration_completed(self, engine: Engine) -> None:
        """Keep the chosen slice of each of the first ``num_cases`` cases."""
        output = engine.state.output
        if output is None or self._seen >= self.num_cases:
            return
        if isinstance(output, Mapping):
            from monai.data import decollate_batch

            output = decollate_batch(output)
        for item in output:
            if self._seen >= self.num_cases:
                break
            self.rows.append(self._row(item, self._seen))
            self._seen += 1

    def epoch_completed(self, engine: Engine) -> None:
        """Draw the kept slices into ``epoch_<NNN>.png`` and log it."""
        if not self.rows:
            logger.warning("%s: no validation case was seen this epoch; no overlay drawn", type(self).__name__)
            return
        epoch = int(engine.state.epoch)
        title = self.title.format(run_name=self.mlflow.display_name(), epoch=epoch).strip(": ")
        fig = overlay_figure(
            self.rows,
            self.class_names,
            window=self.window,
            title=title,
            pred_title="student" if self.teacher is not None else "prediction",
        )
        self.output_dir.mkdir(parents=True, exist_ok=True)
        path = self.output_dir / self.filename.format(epoch=epoch)
        colours = default_colours(self.class_names)
        save_figure(fig, path, self.dpi, colours=["white", *colours.values()])
        self.last_path = path
        self.mlflow.log_artifact(path, self.artifact_path)
