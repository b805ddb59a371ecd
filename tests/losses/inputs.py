"""Random inputs shared by the loss tests."""

from __future__ import annotations

import torch


def random_inputs(
    batch: int = 2,
    classes: int = 3,
    c_s: int = 4,
    c_t: int = 6,
    size_s: int = 4,
    size_t: int = 8,
    size: int = 8,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(student, teacher, target, teacher_logits)``: features ``B, C_s, size_s^2`` and ``B, C_t, size_t^2``,
    labels ``B, 1, size^2`` in ``0..classes-1`` and teacher logits ``B, classes, size^2`` (call ``manual_seed``
    first)."""
    student = torch.randn(batch, c_s, size_s, size_s)
    teacher = torch.randn(batch, c_t, size_t, size_t)
    target = torch.randint(0, classes, (batch, 1, size, size))
    teacher_logits = torch.randn(batch, classes, size, size)
    return student, teacher, target, teacher_logits
