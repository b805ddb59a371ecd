"""Handlers beyond MONAI's own: per-class metric unpacking and whole-volume metrics."""

from .per_class_metrics import PerClassMetricHandler
from .volume_metrics import VolumeMetricsHandler

__all__ = ["PerClassMetricHandler", "VolumeMetricsHandler"]
