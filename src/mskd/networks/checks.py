"""Input checks shared by our networks (TorchScript-compatible, skipped while tracing)."""

from __future__ import annotations

import torch

__all__ = ["check_input"]


def check_input(x: torch.Tensor, name: str, in_channels: int, divisor: int, spatial_dims: int = 2) -> None:
    """Raise a readable error unless ``x`` is ``B, in_channels, H, W`` (``B, in_channels, D, H, W`` with
    ``spatial_dims=3``) with every spatial size divisible by ``divisor``.

    Skipped while ``torch.jit.trace`` records, where the checks would only add tracer warnings.

    Args:
        x: the network input.
        name: the network's name, for the message.
        in_channels: expected channel count.
        divisor: the network's total stride.
        spatial_dims: 2 for images, 3 for volumes.

    Raises:
        ValueError: on a wrong rank, channel count or spatial size (the message shows the shape).
    """
    if torch.jit.is_tracing():
        return
    axes = "D, H, W" if spatial_dims == 3 else "H, W"
    if x.dim() != spatial_dims + 2 or x.shape[1] != in_channels:
        raise ValueError(f"{name} expects a B, {in_channels}, {axes} input, got shape {list(x.shape)}")
    sizes = "D, H and W" if spatial_dims == 3 else "H and W"
    size = [int(s) for s in x.shape[2:]]
    for s in size:
        if s % divisor != 0:
            got = str(size)[1:-1]
            raise ValueError(
                f"{name} needs {sizes} divisible by {divisor}, got ({got}): {divisor} is its total stride; "
                f"pad or crop the input to a multiple of {divisor}"
            )
