"""MLflow: the store and the run of a workflow (:class:`MlflowRun`, the one object a bundle's tracking handlers
take), MONAI's ``MLFlowHandler`` bound to that run, and the handlers that add the dashboard's artefacts to it: tags,
model summary, learning curves, overlays, per-organ metric bars, and the teacher / student alone / distilled
comparison."""

from .artefacts import OncePerRunHandler, RunArtefactHandler
from .comparison import ComparisonHandler
from .learning_curves import LearningCurvesHandler
from .metric_bars import MetricBarsHandler
from .mlflow_handler import MLFlowHandler
from .model_summary import ModelSummaryHandler
from .overlays import OverlayHandler
from .registered_model import RegisteredModelHandler
from .run import MlflowRun
from .run_tags import RunTagsHandler, runs_table_view
from .store import (
    CHECK_TIMEOUT_S,
    LOG_ATTEMPTS,
    LOG_BACKOFF_S,
    TrackingError,
    check_tracking_uri,
    close_stale_runs,
    log_or_skip,
    open_run,
    run_name,
    run_params,
    run_tracked,
    save_executed_config,
    tracking_uri,
)

__all__ = [
    "CHECK_TIMEOUT_S",
    "ComparisonHandler",
    "LOG_ATTEMPTS",
    "LOG_BACKOFF_S",
    "LearningCurvesHandler",
    "MLFlowHandler",
    "MetricBarsHandler",
    "MlflowRun",
    "ModelSummaryHandler",
    "OncePerRunHandler",
    "OverlayHandler",
    "RegisteredModelHandler",
    "RunArtefactHandler",
    "RunTagsHandler",
    "TrackingError",
    "check_tracking_uri",
    "close_stale_runs",
    "log_or_skip",
    "open_run",
    "run_name",
    "run_params",
    "run_tracked",
    "runs_table_view",
    "save_executed_config",
    "tracking_uri",
]
