"""Per-case, per-organ Dice and HD95 of whole volumes in evaluation: CSVs, a logged table, MLflow-ready scalars."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from monai.utils import optional_import

from mskd.handlers.events import attach_once
from mskd.metrics import case_metrics, format_summary, summarise, write_case_csv, write_summary_csv

Events, _ = optional_import("ignite.engine", name="Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", name="Engine")

__all__ = ["VolumeMetricsHandler", "case_name"]

logger = logging.getLogger(__name__)

# File endings stripped from a case's file name (longest first).
_SUFFIXES = (".nii.gz", ".npy.h5", ".nii", ".h5", ".npz", ".nrrd", ".mha", ".mhd")
# Per-case file names that say nothing about the case (KiTS19: case_00000/segmentation.nii.gz): use the folder name.
_GENERIC_STEMS = frozenset({"segmentation", "imaging", "image", "label", "labels", "seg", "mask", "gt", "ground_truth"})


def case_name(filename: str | os.PathLike) -> str:
    """The case name of a file: its base name without ``.nii.gz``/``.nii``/``.npy.h5``/``.h5``/``.npz``/... .

    When that is a generic per-case name (``segmentation``, ``imaging``, ``label``, ...), the parent folder's name
    is used instead (KiTS19 ``case_00000/segmentation.nii.gz`` -> ``case_00000``).
    """
    path = Path(str(filename))
    name = path.name
    for suffix in _SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    if name.lower() in _GENERIC_STEMS and path.parent.name:
        return path.parent.name
    return name


class VolumeMetricsHandler:
    """Dice and HD95 of every case and organ of an evaluation epoch, in the two conventions of :mod:`mskd.metrics`.

    For a MONAI ``SupervisedEvaluator`` whose postprocessing leaves, in every decollated item of
    ``engine.state.output``, ``"pred"`` and ``"label"`` as integer label maps of shape ``(1, H, W, D)`` on the same
    grid (the label's original grid). Metrics are computed on CPU with NumPy/SciPy.

    - ``EPOCH_STARTED``: forget the previous epoch (a second ``run()`` does not add rows).
    - ``ITERATION_COMPLETED``: :func:`mskd.metrics.case_metrics` of every item. Spacing (mm) is the label's
      ``MetaTensor.pixdim`` (column norms of its affine); a label without metadata (not a ``MetaTensor``, or one
      with neither a file name nor a non-identity affine) gets ``(1, 1, 1)`` with a warning. The case name is the
      item's ``"case"`` entry when present, else :func:`case_name` of ``label.meta["filename_or_obj"]``, else
      ``case_<index>``.
    - ``EPOCH_COMPLETED``: write :attr:`csv_path` (one row per case and organ) and :attr:`summary_path` (mean ± std
      per organ and the ``mean`` row), both atomically; log the summary table; put floats (NaN where undefined;
      Dice as fractions) into ``engine.state.metrics``:
      ``{prefix}_dice_{organ}``, ``{prefix}_hd95_{organ}`` (mm), ``{prefix}_mean_dice``, ``{prefix}_mean_hd95``,
      ``{prefix}_transunet_dice_{organ}``, ``{prefix}_transunet_hd95_{organ}`` (voxels),
      ``{prefix}_transunet_mean_dice``, ``{prefix}_transunet_mean_hd95``, and ``{prefix}_missed`` /
      ``{prefix}_spurious`` (organ-case pairs present only in the ground truth / only in the prediction).

    Attach it before an ``MLFlowHandler`` (handlers run in the order they were attached) so that the scalars are
    logged, and pass :attr:`csv_path` and :attr:`summary_path` to the ``MLFlowHandler``'s ``artifacts``.
    In a distributed evaluation each process scores only its own cases (no gathering).

    Args:
        class_names: the foreground organ names, in label order (class ``k`` is ``class_names[k - 1]``).
        output_dir: folder of the CSV files (created when needed).
        prefix: prefix of the metric names and of the default file names.
        csv_name: per-case CSV file name; default ``f"{prefix}_metrics.csv"``. The summary goes next to it with
            ``_summary`` before the extension (``test_metrics_summary.csv``).
        pred_key: key of the predicted label map in each output item.
        label_key: key of the ground-truth label map in each output item.

    Raises:
        ValueError: for no class names, duplicated class names, a class named ``mean``, or an empty ``prefix``.
    """

    def __init__(
        self,
        class_names: Sequence[str],
        output_dir: str | os.PathLike,
        prefix: str = "test",
        csv_name: str | None = None,
        pred_key: str = "pred",
        label_key: str = "label",
    ) -> None:
        self.class_names = [str(n) for n in class_names]
        if not self.class_names:
            raise ValueError("class_names must name at least one foreground class")
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"class_names must be unique, got {self.class_names}")
        if "mean" in self.class_names:
            raise ValueError(f"'mean' names the summary row and cannot be a class name: {self.class_names}")
        if not prefix:
            raise ValueError(f"prefix must be a non-empty string, got {prefix!r}")
        self.num_classes = len(self.class_names) + 1
        self.prefix = prefix
        self.pred_key = pred_key
        self.label_key = label_key
        csv_name = csv_name or f"{prefix}_metrics.csv"
        self.csv_path = str(Path(output_dir) / csv_name)
        stem, ext = os.path.splitext(csv_name)
        self.summary_path = str(Path(output_dir) / f"{stem}_summary{ext or '.csv'}")
        self.cases: list[str] = []
        self.per_case: list[dict[str, np.ndarray]] = []
        self.summary: list[dict[str, Any]] = []
        self._warned_spacing = False

    def attach(self, engine: Engine) -> None:
        """Register the handler's three steps on ``engine`` (once)."""
        attach_once(
            engine,
            (Events.EPOCH_STARTED, self.reset),
            (Events.ITERATION_COMPLETED, self.iteration_completed),
            (Events.EPOCH_COMPLETED, self.epoch_completed),
        )

    def reset(self, engine: Engine | None = None) -> None:
        """Forget the cases of the previous epoch."""
        self.cases, self.per_case, self.summary = [], [], []
        self._warned_spacing = False

    def _spacing(self, label: Any) -> tuple[float, float, float]:
        meta = getattr(label, "meta", None)
        has_meta = isinstance(meta, Mapping) and hasattr(label, "pixdim")
        if has_meta:
            affine = torch.as_tensor(label.affine, dtype=torch.float64)
            default = torch.eye(affine.shape[-1], dtype=torch.float64)
            has_meta = "filename_or_obj" in meta or not torch.allclose(affine, default)
        if not has_meta:
            if not self._warned_spacing:
                logger.warning(
                    "%s: the label carries no metadata (spacing); HD95 in 'mm' uses spacing (1, 1, 1). Keep the "
                    "label a MetaTensor (track_meta=True) up to this handler for millimetres.",
                    type(self).__name__,
                )
                self._warned_spacing = True
            return (1.0, 1.0, 1.0)
        spacing = [float(s) for s in torch.as_tensor(label.pixdim).flatten().tolist()]
        if len(spacing) != 3:
            raise ValueError(f"expected 3 spacing values from the label's affine, got {spacing}")
        return spacing[0], spacing[1], spacing[2]

    def _case_name(self, item: Mapping[str, Any], label: Any) -> str:
        if "case" in item:
            return str(item["case"])
        for source in (label, item.get(self.pred_key)):
            meta = getattr(source, "meta", None)
            if isinstance(meta, Mapping) and meta.get("filename_or_obj"):
                filename = meta["filename_or_obj"]
                if isinstance(filename, (list, tuple)):  # not decollated
                    filename = filename[0]
                return case_name(filename)
        return f"case_{len(self.cases):04d}"

    @staticmethod
    def _label_map(x: Any, key: str) -> Any:
        if not hasattr(x, "shape"):
            raise TypeError(f"output item '{key}' must be an array or tensor, got {type(x).__name__}")
        if len(x.shape) == 4:
            if x.shape[0] != 1:
                raise ValueError(
                    f"output item '{key}' must be a label map of shape (1, H, W, D), got {tuple(x.shape)}; "
                    "add AsDiscreted(argmax=True) to the postprocessing"
                )
            return x[0]
        return x

    def iteration_completed(self, engine: Engine) -> None:
        """Score every item of ``engine.state.output``."""
        output = engine.state.output
        if output is None:
            return
        if isinstance(output, Mapping):
            from monai.data import decollate_batch

            output = decollate_batch(output)
        batch = getattr(engine.state, "batch", None)
        if isinstance(batch, Mapping):
            from monai.data import decollate_batch

            batch = decollate_batch(batch, detach=False)
        # the evaluator's output keeps only image/label/pred: a datalist's "case" entry is read from the batch
        batch = batch if isinstance(batch, list) and len(batch) == len(output) else [{}] * len(output)
        for item, source in zip(output, batch, strict=True):
            if "case" not in item and isinstance(source, Mapping) and "case" in source:
                item = {**item, "case": source["case"]}
            if self.pred_key not in item or self.label_key not in item:
                raise KeyError(
                    f"{type(self).__name__} needs '{self.pred_key}' and '{self.label_key}' in every output item, "
                    f"got keys {sorted(item)}"
                )
            label = item[self.label_key]
            pred = self._label_map(item[self.pred_key], self.pred_key)
            name = self._case_name(item, label)
            metrics = case_metrics(pred, self._label_map(label, self.label_key), self.num_classes, self._spacing(label))
            if name in self.cases:
                logger.warning("%s: case '%s' scored twice in one epoch", type(self).__name__, name)
            self.cases.append(name)
            self.per_case.append(metrics)

    def epoch_completed(self, engine: Engine) -> None:
        """Write both CSVs, log the summary and publish the scalars in ``engine.state.metrics``."""
        if not self.per_case:
            logger.warning("%s: no case was scored this epoch; nothing written", type(self).__name__)
            return
        self.summary = summarise(self.per_case, self.class_names)
        write_case_csv(self.csv_path, self.cases, self.class_names, self.per_case)
        write_summary_csv(self.summary_path, self.summary)
        logger.info(
            "%s over %d cases (Dice as fractions; HD95 in mm, TransUNet HD95 in voxels; per-case %s):\n%s",
            self.prefix,
            len(self.cases),
            self.csv_path,
            format_summary(self.summary),
        )
        p = self.prefix
        metrics = engine.state.metrics
        for row in self.summary:
            organ = row["organ"]
            if organ == "mean":
                metrics[f"{p}_mean_dice"] = float(row["dice_mean"])
                metrics[f"{p}_mean_hd95"] = float(row["hd95_mm_mean"])
                metrics[f"{p}_transunet_mean_dice"] = float(row["dice_transunet_mean"])
                metrics[f"{p}_transunet_mean_hd95"] = float(row["hd95_transunet_vox_mean"])
                metrics[f"{p}_missed"] = float(row["missed"])
                metrics[f"{p}_spurious"] = float(row["spurious"])
            else:
                metrics[f"{p}_dice_{organ}"] = float(row["dice_mean"])
                metrics[f"{p}_hd95_{organ}"] = float(row["hd95_mm_mean"])
                metrics[f"{p}_transunet_dice_{organ}"] = float(row["dice_transunet_mean"])
                metrics[f"{p}_transunet_hd95_{organ}"] = float(row["hd95_transunet_vox_mean"])
