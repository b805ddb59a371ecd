"""Random inputs shared by the loss tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_inputs(
    batch: int = 2,
    classes: int = 3,
    c_s: int = 4,
    c_t: int = 6,
    size_s: int = 4,
    size_t: int = 8,
    size: int = 8,
    depths: tuple[int, int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(student, teacher, target, teacher_logits)``: features ``B, C_s, size_s^2`` and ``B, C_t, size_t^2``,
    labels ``B, 1, size^2`` in ``0..classes-1`` and teacher logits ``B, classes, size^2`` (call ``manual_seed``
    first). With ``depths = (d_s, d_t, d)`` they are volumes: ``B, C_s, d_s, size_s, size_s`` and so on."""
    d_s, d_t, d = ((), (), ()) if depths is None else ((depths[0],), (depths[1],), (depths[2],))
    student = torch.randn(batch, c_s, *d_s, size_s, size_s)
    teacher = torch.randn(batch, c_t, *d_t, size_t, size_t)
    target = torch.randint(0, classes, (batch, 1, *d, size, size))
    teacher_logits = torch.randn(batch, classes, *d, size, size)
    return student, teacher, target, teacher_logits


def zero_cases() -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(case, student, teacher) pairs that a term invariant to scale, tiled channels and resizing scores 0."""
    torch.manual_seed(1)
    base = torch.randn(2, 3, 8, 8)
    small = torch.randn(2, 5, 4, 4)
    return [
        ("identical", base.clone(), base),
        ("scaled", 3.0 * base, base),
        ("tiled channels 3 vs 6", base, base.repeat(1, 2, 1, 1)),
        ("teacher = upsampled student", small, F.interpolate(small, size=(8, 8), mode="bilinear")),
    ]
