"""Input checks shared by our networks (TorchScript-compatible, skipped while tracing)."""

from __future__ import annotations

import torch

__all__ = ["check_input"]


def check_input(x: torch.Tensor, name: str, in_channels: int, divisor: int) -> None:
    """Raise a readable error unless ``x`` is ``B, in_channels, H, W`` with H and W divisible by ``divisor``.

    Skipped while ``torch.jit.trace`` records, where the checks would only add tracer warnings.

    Args:
        x: the network input.
        name: the network's name, for the message.
        in_channels: expected channel count.
        divisor: the network's total stride.

    Raises:
        ValueError: on a wrong rank, channel count or spatial size (the message shows the shape).
    """
    if torch.jit.is_tracing():
        return
    if x.dim() != 4 or x.shape[1] != in_channels:
        raise ValueError(f"{name} expects a B, {in_channels}, H, W input, got shape {list(x.shape)}")
    h, w = x.shape[2], x.shape[3]
    if h % divisor != 0 or w % divisor != 0:
        raise ValueError(f"{name} needs H and W divisible by {divisor}, got ({h}, {w})")
