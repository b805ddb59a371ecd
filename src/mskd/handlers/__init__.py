"""Handlers beyond MONAI's own: per-class metric unpacking, whole-volume metrics, resumable and safe checkpoints, the
non-finite loss guard, validation at the last epoch, and terminal progress (the MLflow handlers are
:mod:`mskd.tracking`'s)."""

from .checkpoint_savers import CheckpointSaver, SafeDiskSaver, TrainingCheckpoint
from .nonfinite import NONFINITE_MODES, NONFINITE_SKIPS, NonFiniteLossHandler
from .per_class_metrics import PerClassMetricHandler
from .progress import ProgressHandler
from .validation_schedule import ValidationHandler
from .volume_metrics import VolumeMetricsHandler

__all__ = [
    "NONFINITE_MODES",
    "NONFINITE_SKIPS",
    "CheckpointSaver",
    "NonFiniteLossHandler",
    "PerClassMetricHandler",
    "ProgressHandler",
    "SafeDiskSaver",
    "TrainingCheckpoint",
    "ValidationHandler",
    "VolumeMetricsHandler",
]
