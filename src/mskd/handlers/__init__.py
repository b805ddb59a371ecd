"""Handlers beyond MONAI's own."""

from .per_class_metrics import PerClassMetricHandler

__all__ = ["PerClassMetricHandler"]
