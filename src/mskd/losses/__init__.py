"""Distillation losses of ``mskd`` (teacher → student structured knowledge distillation)."""

from mskd.losses.base import DistillationTermLoss, SampleValues
from mskd.losses.cwd import ChannelWiseDistillationLoss
from mskd.losses.distillation import DistillationLoss
from mskd.losses.ffd import FeatureFilteringDistillationLoss
from mskd.losses.ifvd import IntraClassFeatureVariationLoss
from mskd.losses.imd import ImportanceMapDistillationLoss
from mskd.losses.logit_kd import LogitDistillationLoss
from mskd.losses.rad import RegionAffinityDistillationLoss
from mskd.losses.rgd import RegionGraphDistillationLoss
from mskd.losses.skd import PairwiseSimilarityDistillationLoss

__all__ = [
    "ChannelWiseDistillationLoss",
    "DistillationLoss",
    "DistillationTermLoss",
    "FeatureFilteringDistillationLoss",
    "ImportanceMapDistillationLoss",
    "IntraClassFeatureVariationLoss",
    "LogitDistillationLoss",
    "PairwiseSimilarityDistillationLoss",
    "RegionAffinityDistillationLoss",
    "RegionGraphDistillationLoss",
    "SampleValues",
]
