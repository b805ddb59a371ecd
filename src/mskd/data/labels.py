"""Label sets of the two tasks, the BTCV-13 to Synapse-8 remap and the CT windows of each protocol (DESIGN §3)."""

from __future__ import annotations

__all__ = [
    "BTCV_LABELS",
    "BTCV_TO_SYNAPSE",
    "HU_WINDOWS",
    "KITS_LABELS",
    "SYNAPSE_LABELS",
    "TASK_LABELS",
    "organ_names",
]

SYNAPSE_LABELS: dict[int, str] = {
    0: "background",
    1: "spleen",
    2: "right_kidney",
    3: "left_kidney",
    4: "gallbladder",
    5: "liver",
    6: "stomach",
    7: "aorta",
    8: "pancreas",
}
KITS_LABELS: dict[int, str] = {0: "background", 1: "kidney", 2: "tumour"}
TASK_LABELS: dict[str, dict[int, str]] = {"synapse": SYNAPSE_LABELS, "kits": KITS_LABELS}

# Raw BTCV ("Multi-Atlas Labeling Beyond the Cranial Vault") label ids.
BTCV_LABELS: dict[int, str] = {
    0: "background",
    1: "spleen",
    2: "right_kidney",
    3: "left_kidney",
    4: "gallbladder",
    5: "esophagus",
    6: "liver",
    7: "stomach",
    8: "aorta",
    9: "inferior_vena_cava",
    10: "portal_and_splenic_vein",
    11: "pancreas",
    12: "right_adrenal_gland",
    13: "left_adrenal_gland",
}
# Every BTCV id -> Synapse id (the 8 Synapse organs keep their place; the other five become background).
BTCV_TO_SYNAPSE: dict[int, int] = {
    btcv: next((k for k, v in SYNAPSE_LABELS.items() if v == name and k > 0), 0) for btcv, name in BTCV_LABELS.items()
}

# CT window (HU) mapped to [0, 1] by each task's protocol.
HU_WINDOWS: dict[str, tuple[float, float]] = {"synapse": (-125.0, 275.0), "kits": (-200.0, 300.0)}


def organ_names(task: str) -> list[str]:
    """The foreground class names of ``task`` in label order (what per-organ metrics are named after).

    Raises:
        ValueError: for an unknown ``task``.
    """
    if task not in TASK_LABELS:
        raise ValueError(f"unknown task {task!r}; choose one of {list(TASK_LABELS)}")
    labels = TASK_LABELS[task]
    return [labels[k] for k in sorted(labels) if k > 0]
