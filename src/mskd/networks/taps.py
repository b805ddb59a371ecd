"""Capture intermediate features of any network with forward hooks on named sub-modules."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from types import TracebackType

import torch
from torch import nn

__all__ = ["FeatureTaps", "unwrap_network"]


def unwrap_network(network: nn.Module) -> nn.Module:
    """Return the plain network inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper (or itself)."""
    return network.module if isinstance(network, nn.parallel.DistributedDataParallel | nn.DataParallel) else network


class FeatureTaps:
    """Context manager that records the outputs of named sub-modules during a forward pass.

    The network's ``forward`` is untouched, so any network can be a teacher or a student and the exported
    student is exactly the plain network. Hooks are registered on ``__enter__`` and removed on ``__exit__``.

    Example::

        with FeatureTaps(net, {"low": "model.0", "high": "model.1.submodule"}) as taps:
            logits = net(images)
        low = taps.features["low"]  # B, C, H, W

    Args:
        network: the network to tap (a DDP/DataParallel wrapper is unwrapped).
        taps: tap name -> sub-module path as in ``network.named_modules()``. ``None`` or empty taps nothing.

    Raises:
        ValueError: when a path names no sub-module of ``network`` (the message suggests close names).
    """

    def __init__(self, network: nn.Module, taps: Mapping[str, str] | None = None) -> None:
        self.network = unwrap_network(network)
        self.taps = dict(taps or {})
        self.features: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        module_names = [name for name, _ in self.network.named_modules() if name]
        for tap, path in self.taps.items():
            if path not in module_names:
                close = difflib.get_close_matches(str(path), module_names, n=3)
                hint = f"; did you mean {close}?" if close else ""
                raise ValueError(f"tap '{tap}': '{path}' is not a sub-module of {type(self.network).__name__}{hint}")

    def _record(self, tap: str):
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor | tuple) -> None:
            # Some blocks return (features, extras); the feature map is the first tensor.
            self.features[tap] = output[0] if isinstance(output, tuple | list) else output

        return hook

    def __enter__(self) -> FeatureTaps:
        self.features = {}
        for tap, path in self.taps.items():
            module = self.network.get_submodule(path)
            self._handles.append(module.register_forward_hook(self._record(tap)))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
