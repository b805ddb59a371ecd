"""Engines: the distillation trainer and its teacher cache, output transforms for its handlers, and what resumable
training needs."""

from .checkpointing import (
    LATEST_CHECKPOINT,
    RandomStates,
    checkpoint_run_id,
    epoch_seed,
    resume_checkpoint,
    seed_epoch,
)
from .distillation_trainer import LOSS_TERMS, DistillationTrainer
from .outputs import every, loss_terms
from .teacher_cache import (
    TEACHER_CACHE_HIT_RATE,
    TEACHER_OUTPUTS,
    TeacherCache,
    resolve_teacher_outputs,
    teacher_outputs_line,
)

__all__ = [
    "LATEST_CHECKPOINT",
    "LOSS_TERMS",
    "TEACHER_CACHE_HIT_RATE",
    "TEACHER_OUTPUTS",
    "DistillationTrainer",
    "RandomStates",
    "TeacherCache",
    "checkpoint_run_id",
    "epoch_seed",
    "every",
    "loss_terms",
    "resolve_teacher_outputs",
    "resume_checkpoint",
    "seed_epoch",
    "teacher_outputs_line",
]
