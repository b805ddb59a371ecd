"""Stop, or skip the step, when a training loss is NaN or infinite, naming the iteration and the terms at fault."""

from __future__ import annotations

import math
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys
from monai.utils import look_up_option

from mskd.engines.distillation_trainer import LOSS_TERMS

__all__ = ["NONFINITE_MODES", "NONFINITE_SKIPS", "NonFiniteLossHandler"]

NONFINITE_MODES = ("stop", "skip")
NONFINITE_SKIPS = "nonfinite_skips"  # engine.state attribute, metric name and checkpointed state key


def _describe(value: torch.Tensor) -> str:
    return f"{float(value.detach().float().mean()):g}" if value.numel() else "empty"


class NonFiniteLossHandler:
    """Check the loss of every training iteration (``IterationEvents.LOSS_COMPLETED``), for ``SupervisedTrainer`` and
    :class:`mskd.engines.DistillationTrainer` alike.

    A NaN or infinite loss either stops training (``mode="stop"``: ``FloatingPointError`` naming the iteration, the
    epoch and the non-finite terms, e.g. ``loss_kd = nan``, taken from ``engine.state.output["loss_terms"]`` when the
    trainer reports terms) or skips that batch's optimiser step (``mode="skip"``): the gradients are dropped after the
    backward pass, so ``optimizer.step()`` changes nothing; with AMP they are set to NaN, and the grad scaler skips
    the step as it does on an overflow (and lowers its scale). Skips are counted in ``engine.state.nonfinite_skips``,
    which is saved with the trainer's state (``state_dict_user_keys``), so a resumed run keeps counting, and reported
    as the metric ``nonfinite_skips`` that the epoch loggers (stats, MLflow) log.

    Args:
        mode: ``"stop"`` or ``"skip"``.

    Raises:
        ValueError: for another mode.
    """

    def __init__(self, mode: str = "stop") -> None:
        self.mode = look_up_option(mode, NONFINITE_MODES)
        self._skip_step = False

    def attach(self, engine: Engine) -> None:
        """Check at ``LOSS_COMPLETED``; in skip mode, also drop the gradients at ``BACKWARD_COMPLETED``."""
        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self.loss_completed)
        if self.mode == "skip":
            if not hasattr(engine.state, NONFINITE_SKIPS):
                setattr(engine.state, NONFINITE_SKIPS, 0)
            if NONFINITE_SKIPS not in engine.state_dict_user_keys:
                engine.state_dict_user_keys.append(NONFINITE_SKIPS)
            engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self.backward_completed)
            engine.add_event_handler(Events.EPOCH_STARTED, self._report)

    @staticmethod
    def _report(engine: Engine) -> None:
        engine.state.metrics[NONFINITE_SKIPS] = getattr(engine.state, NONFINITE_SKIPS)

    def loss_completed(self, engine: Engine) -> None:
        """Stop, or mark the step to be skipped, when the loss is not finite.

        Raises:
            FloatingPointError: in stop mode, for a NaN or infinite loss.
        """
        output: dict[str, Any] = engine.state.output
        loss = output[Keys.LOSS].detach()
        if bool(torch.isfinite(loss).all()):
            return
        terms = output.get(LOSS_TERMS) or {}
        bad = [f"loss_{name} = {_describe(v)}" for name, v in terms.items() if not bool(torch.isfinite(v).all())]
        what = ", ".join(bad) if bad else f"loss = {_describe(loss)}"
        where = f"non-finite loss at iteration {engine.state.iteration} (epoch {engine.state.epoch}): {what}"
        if self.mode == "stop":
            raise FloatingPointError(
                f"{where}; training stopped (the checkpoints saved so far are kept). Lower the learning rate, check "
                "the data, or set nonfinite_loss to 'skip' to skip such batches"
            )
        setattr(engine.state, NONFINITE_SKIPS, getattr(engine.state, NONFINITE_SKIPS) + 1)
        self._report(engine)
        self._skip_step = True
        engine.logger.warning(f"{where}; optimiser step skipped ({engine.state.nonfinite_skips} so far)")

    def backward_completed(self, engine: Engine) -> None:
        """Drop the gradients of a marked step (NaN them under AMP, so that the grad scaler skips the step)."""
        if not self._skip_step:
            return
        self._skip_step = False
        amp = getattr(engine, "scaler", None) is not None
        for group in engine.optimizer.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                if amp:
                    param.grad.fill_(math.nan)
                else:
                    param.grad = None
