"""Engines: the distillation trainer and output transforms for its handlers."""

from .distillation_trainer import LOSS_TERMS, DistillationTrainer
from .outputs import loss_terms

__all__ = ["LOSS_TERMS", "DistillationTrainer", "loss_terms"]
