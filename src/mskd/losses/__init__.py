"""Distillation losses of ``mskd`` (teacher → student structured knowledge distillation)."""

from mskd.losses.base import DistillationTermLoss
from mskd.losses.distillation import DistillationLoss
from mskd.losses.ffd import FeatureFilteringDistillationLoss
from mskd.losses.logit_kd import LogitDistillationLoss
from mskd.losses.rgd import RegionGraphDistillationLoss

__all__ = [
    "DistillationLoss",
    "DistillationTermLoss",
    "FeatureFilteringDistillationLoss",
    "LogitDistillationLoss",
    "RegionGraphDistillationLoss",
]
