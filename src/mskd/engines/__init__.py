"""Engines: the distillation trainer, output transforms for its handlers, and what resumable training needs."""

from .checkpointing import (
    LATEST_CHECKPOINT,
    RandomStates,
    as_flag,
    checkpoint_run_id,
    epoch_seed,
    resume_checkpoint,
    seed_epoch,
)
from .distillation_trainer import LOSS_TERMS, DistillationTrainer
from .outputs import every, loss_terms

__all__ = [
    "LATEST_CHECKPOINT",
    "LOSS_TERMS",
    "DistillationTrainer",
    "RandomStates",
    "as_flag",
    "checkpoint_run_id",
    "epoch_seed",
    "every",
    "loss_terms",
    "resume_checkpoint",
    "seed_epoch",
]
