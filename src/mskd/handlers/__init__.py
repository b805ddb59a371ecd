"""Handlers beyond MONAI's own: per-class metric unpacking, whole-volume metrics, MLflow dashboard artefacts and
run binding, resumable and safe checkpoints, the non-finite loss guard, validation at the last epoch, and terminal
progress."""

from .checkpoint_savers import CheckpointSaver, SafeDiskSaver, TrainingCheckpoint
from .learning_curves import LearningCurvesHandler
from .metric_bars import MetricBarsHandler
from .mlflow_handler import MLFlowHandler
from .mlflow_run import MlflowRunLogger
from .model_summary import ModelSummaryHandler
from .nonfinite import NONFINITE_MODES, NONFINITE_SKIPS, NonFiniteLossHandler
from .overlays import OverlayHandler
from .per_class_metrics import PerClassMetricHandler
from .progress import ProgressHandler, interactive, with_progress
from .run_tags import RunTagsHandler, runs_table_view
from .validation_schedule import ValidationHandler
from .volume_metrics import VolumeMetricsHandler

__all__ = [
    "NONFINITE_MODES",
    "NONFINITE_SKIPS",
    "CheckpointSaver",
    "LearningCurvesHandler",
    "MLFlowHandler",
    "MetricBarsHandler",
    "MlflowRunLogger",
    "ModelSummaryHandler",
    "NonFiniteLossHandler",
    "OverlayHandler",
    "PerClassMetricHandler",
    "ProgressHandler",
    "RunTagsHandler",
    "SafeDiskSaver",
    "TrainingCheckpoint",
    "ValidationHandler",
    "VolumeMetricsHandler",
    "interactive",
    "runs_table_view",
    "with_progress",
]
