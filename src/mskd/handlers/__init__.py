"""Handlers beyond MONAI's own: per-class metric unpacking, whole-volume metrics, resumable and safe checkpoints, the
non-finite loss guard, validation at the last epoch, terminal progress and
the duration estimate of a long training (the MLflow handlers are
:mod:`mskd.tracking`'s)."""

from .checkpoint_savers import CheckpointSaver, SafeDiskSaver, TrainingCheckpoint
from .nonfinite import NONFINITE_MODES, NONFINITE_SKIPS, NonFiniteLossHandler
from .per_class_metrics import PerClassMetricHandler
from .progress import ProgressHandler, TimeEstimateHandler
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
    "TimeEstimateHandler",
    "TrainingCheckpoint",
    "ValidationHandler",
    "VolumeMetricsHandler",
]
