"""Networks: feature taps and checkpoint helpers (teachers and students come from MONAI in v1)."""

from .checkpoint import count_parameters, load_weights
from .taps import FeatureTaps, unwrap_network

__all__ = ["FeatureTaps", "count_parameters", "load_weights", "unwrap_network"]
