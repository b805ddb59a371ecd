"""Engines: the distillation trainer and output transforms for its handlers."""

from .distillation_trainer import LOSS_TERMS, DistillationTrainer
from .outputs import every, loss_terms

__all__ = ["LOSS_TERMS", "DistillationTrainer", "every", "loss_terms"]
