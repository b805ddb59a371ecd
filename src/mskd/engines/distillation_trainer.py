"""MONAI trainer that distils a frozen teacher into the student it trains."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys
from torch import nn

from mskd.networks.taps import FeatureTaps, unwrap_network

__all__ = ["DistillationTrainer", "LOSS_TERMS"]

LOSS_TERMS = "loss_terms"  # engine output key holding the named loss terms


class DistillationTrainer(SupervisedTrainer):
    """``SupervisedTrainer`` whose loss also sees a frozen teacher's logits and both networks' tapped features.

    One iteration: the teacher runs in eval mode under ``torch.no_grad()`` with its taps; the student runs with its
    taps; ``loss_function`` (a :class:`mskd.losses.DistillationLoss`) returns named terms; the total is
    back-propagated into the student only. The standard ``IterationEvents`` fire as in ``SupervisedTrainer``, and
    ``engine.state.output`` holds ``image``, ``label``, ``pred``, ``loss`` and ``loss_terms`` (detached tensors, one
    per term) so that handlers can log every term. Loss weights live in the loss, not here.

    Args:
        device: device to train on.
        max_epochs: number of epochs.
        train_data_loader: loader of 2D training batches (``image``: B, 1, H, W; ``label``: B, 1, H, W).
        network: the student.
        optimizer: optimiser of the student's parameters.
        loss_function: callable ``(student_logits, teacher_logits, target, student_features, teacher_features)``
            returning a dict with key ``"loss"`` (the total) and one entry per term.
        teacher: the teacher; it is frozen (``requires_grad_(False)``) and kept in eval mode.
        student_taps: tap name -> sub-module path of the student.
        teacher_taps: tap name -> sub-module path of the teacher; must have the same tap names.
        kwargs: every other ``SupervisedTrainer`` argument (``amp``, ``inferer``, ``train_handlers``, ...).

    Raises:
        ValueError: when tap names differ between the networks, a tap path does not exist, or the loss needs a
            stage that is not tapped.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Any,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_function: Callable,
        teacher: nn.Module,
        student_taps: Mapping[str, str] | None = None,
        teacher_taps: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=loss_function,
            **kwargs,
        )
        # Built once: the module paths are checked here, not at every iteration; each `with` re-hooks them.
        self.student_feature_taps = FeatureTaps(network, student_taps)
        self.teacher_feature_taps = FeatureTaps(teacher, teacher_taps)
        names = set(self.student_feature_taps.taps)
        if names != set(self.teacher_feature_taps.taps):
            raise ValueError(
                f"student and teacher taps must have the same names: student {sorted(names)}, "
                f"teacher {sorted(self.teacher_feature_taps.taps)}"
            )
        needed: Sequence[str] = getattr(loss_function, "required_stages", ())
        missing = sorted(set(needed) - names)
        if missing:
            raise ValueError(f"the loss needs stages {missing} but the taps define only {sorted(names)}")
        self.teacher = teacher.requires_grad_(False).eval()

    def _iteration(self, engine: DistillationTrainer, batchdata: dict[str, torch.Tensor]) -> dict:
        """Run one distillation step; see the class docstring for what goes into ``engine.state.output``."""
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        inputs, targets = batch[0], batch[1]
        args, kwargs = (batch[2], batch[3]) if len(batch) == 4 else ((), {})
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        autocast = torch.autocast(engine.state.device.type, **engine.amp_kwargs) if engine.amp else nullcontext()

        unwrap_network(engine.teacher).eval()
        with torch.no_grad(), autocast, engine.teacher_feature_taps as teacher_taps:
            teacher_logits = engine.inferer(inputs, engine.teacher, *args, **kwargs)

        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        with autocast:
            with engine.student_feature_taps as student_taps:
                engine.state.output[Keys.PRED] = engine.inferer(inputs, engine.network, *args, **kwargs)
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            terms = engine.loss_function(
                engine.state.output[Keys.PRED],
                teacher_logits,
                targets,
                student_taps.features,
                teacher_taps.features,
            )
        loss = terms["loss"]
        engine.state.output[Keys.LOSS] = loss
        engine.state.output[LOSS_TERMS] = {name: value.detach() for name, value in terms.items() if name != "loss"}
        engine.fire_event(IterationEvents.LOSS_COMPLETED)

        if engine.scaler is not None:
            engine.scaler.scale(loss).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            loss.backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
