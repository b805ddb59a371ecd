"""Parameters and FLOPs of the trained network, logged once per run as MLflow metrics and ``model_summary.txt``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from monai.utils import optional_import

from mskd.io import atomic_path
from mskd.tracking.artefacts import OncePerRunHandler
from mskd.tracking.run import MlflowRun

Events, _ = optional_import("ignite.engine", name="Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", name="Engine")

__all__ = ["ModelSummaryHandler", "model_summary"]

_FLOPS_NOTE = "torch.utils.flop_counter: one multiply-add = 2 FLOPs; convolutions, matrix products and attention only"


def _unwrap(network: torch.nn.Module) -> torch.nn.Module:
    """The module inside ``DistributedDataParallel`` / ``DataParallel``."""
    if isinstance(network, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
        return network.module
    return network


def model_summary(network: torch.nn.Module, input_shape: Sequence[int]) -> dict[str, Any]:
    """Parameters (total, trainable) and FLOPs of one forward pass of ``network`` on zeros of ``input_shape``.

    FLOPs are counted as ``benchmarks/networks.py`` (and the table of ``docs/networks.md``) counts them, with
    ``torch.utils.flop_counter.FlopCounterMode``: one multiply-add = 2 FLOPs; convolutions, matrix products and
    attention only. The pass runs in eval mode without gradients on the network's device, and every module's
    training flag is restored afterwards, so the count changes neither BatchNorm statistics nor the random state.

    Args:
        network: the network (``DistributedDataParallel`` / ``DataParallel`` are unwrapped).
        input_shape: ``(B, C, H, W)`` (or any shape the network takes), e.g. ``(1, 1, 224, 224)``.

    Returns:
        ``params_total``, ``params_trainable``, ``flops`` (ints), ``output_shape`` (tuple), ``per_module``
        (``(params, flops)`` of each top-level child, or of the children of the first module with more than one
        child when the top levels wrap a single module) and ``text`` (a readable summary with the module tree).

    Raises:
        ValueError: when ``input_shape`` has a size below 1.
    """
    from torch.utils.flop_counter import FlopCounterMode

    shape = tuple(int(s) for s in input_shape)
    if not shape or min(shape) < 1:
        raise ValueError(f"input_shape must be sizes >= 1, e.g. (1, 1, 224, 224), got {tuple(input_shape)!r}")
    net = _unwrap(network)
    parameter = next(net.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
    modes = {module: module.training for module in net.modules()}
    counter = FlopCounterMode(display=False)
    try:
        net.eval()
        with torch.no_grad(), counter:
            output = net(torch.zeros(shape, device=device, dtype=dtype))
    finally:
        for module, mode in modes.items():
            module.training = mode
    if isinstance(output, (tuple, list)):
        output = output[0]
    output_shape = tuple(output.shape) if isinstance(output, torch.Tensor) else ()
    counts = counter.get_flop_counts()
    root = type(net).__name__
    prefix, parent = "", net
    while len(children := list(parent.named_children())) == 1:  # look through single-child wrappers
        prefix, parent = f"{prefix}{children[0][0]}.", children[0][1]
    per_module = {
        f"{prefix}{name}": (
            sum(p.numel() for p in child.parameters()),
            int(sum(counts.get(f"{root}.{prefix}{name}", {}).values())),
        )
        for name, child in parent.named_children()
    }
    total = sum(p.numel() for p in net.parameters())
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    flops = int(counter.get_total_flops())
    width = max([len("module"), *(len(n) for n in per_module)])
    lines = [
        f"network: {root} ({type(net).__module__}.{root})",
        f"input: {shape} {str(dtype).replace('torch.', '')} on {device}",
        f"output: {output_shape}",
        f"parameters: {total:,} total, {trainable:,} trainable",
        f"FLOPs per forward pass: {flops:,} ({flops / 1e9:.4g} GFLOPs; {_FLOPS_NOTE})",
        "",
        f"{'module':<{width}}  {'params':>14}  {'GFLOPs':>10}",
        *(f"{n:<{width}}  {p:>14,}  {f / 1e9:>10.4g}" for n, (p, f) in per_module.items()),
        "",
        repr(net),
        "",
    ]
    return {
        "params_total": total,
        "params_trainable": trainable,
        "flops": flops,
        "output_shape": output_shape,
        "per_module": per_module,
        "text": "\n".join(lines),
    }


class ModelSummaryHandler(OncePerRunHandler):
    """Once per engine run, log the network's size and cost: metrics ``params_total``, ``params_trainable``,
    ``gflops`` and the artifact ``model_summary.txt`` (:func:`model_summary`).

    It runs at the first ``EPOCH_STARTED`` after ``STARTED``, when every ``STARTED`` handler (MONAI's
    ``MLFlowHandler`` creating the run among them) has run, so its place in the handler list does not matter. The
    metrics are logged once per MLflow run: a resumed training that logs to the same run does not repeat them.

    Args:
        network: the trained network.
        input_shape: the network's input at the run's image size, e.g. ``[1, 1, image_size, image_size]``.
        output_dir: folder of ``model_summary.txt`` (created when needed).
        run: the workflow's MLflow run (the bundle's ``@mlflow_run``); ``None`` writes the file without logging.
        filename: the text file's name (and artifact name).
    """

    def __init__(
        self,
        network: torch.nn.Module,
        input_shape: Sequence[int],
        output_dir: str | os.PathLike,
        run: MlflowRun | None = None,
        filename: str = "model_summary.txt",
    ) -> None:
        super().__init__(run)
        self.network = network
        self.input_shape = tuple(int(s) for s in input_shape)
        self.output_dir = Path(output_dir)
        self.filename = filename
        self.summary: dict[str, Any] | None = None

    def log_once(self) -> dict[str, Any]:
        """Measure the network, write the text file (under a temporary name, then renamed) and log both."""
        self.summary = model_summary(self.network, self.input_shape)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        path = self.output_dir / self.filename
        with atomic_path(path) as tmp:
            tmp.write_text(self.summary["text"], encoding="utf-8")
        metrics = {
            "params_total": self.summary["params_total"],
            "params_trainable": self.summary["params_trainable"],
            "gflops": self.summary["flops"] / 1e9,
        }
        if self.mlflow.enabled:
            logged = self.mlflow.read(lambda: self.mlflow.client.get_run(self.mlflow.run_id()).data.metrics, default={})
            if not set(metrics) & set(logged):  # once per run: a resumed training does not log them again
                self.mlflow.log_metrics(metrics)
        self.mlflow.log_artifact(path)
        return self.summary
