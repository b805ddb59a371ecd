import math

import pytest
import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from monai.losses import DiceCELoss
from monai.networks.nets import UNet

from mskd.engines import DistillationTrainer
from mskd.handlers import NONFINITE_SKIPS, NonFiniteLossHandler
from mskd.losses import DistillationLoss, LogitDistillationLoss

TAPS = {"low": "model.0", "high": "model.1.submodule"}
BAD_ITERATION = 2


def _net(seed):
    torch.manual_seed(seed)
    return UNet(2, 1, 3, channels=(4, 8, 16), strides=(2, 2), num_res_units=1)


def _loader(n=4):
    torch.manual_seed(0)
    return [{"image": torch.rand(2, 1, 16, 16), "label": torch.randint(0, 3, (2, 1, 16, 16)).float()} for _ in range(n)]


class NanOnCall:
    """Wraps a loss; its ``bad``-th call returns ``value`` times the loss (NaN or Inf, still in the graph)."""

    def __init__(self, loss, bad=BAD_ITERATION, value=math.nan):
        self.loss, self.bad, self.value, self.calls = loss, bad, value, 0

    def __call__(self, *args):
        self.calls += 1
        out = self.loss(*args)
        return out * self.value if self.calls == self.bad else out


def _supervised(mode, value=math.nan):
    network = _net(1)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=_loader(),
        network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=0.1, momentum=0.9),
        loss_function=NanOnCall(DiceCELoss(to_onehot_y=True, softmax=True), value=value),
        train_handlers=[NonFiniteLossHandler(mode)],
        decollate=False,
    )
    return trainer, network


def _distillation(mode):
    student = _net(1)
    loss = DistillationLoss(
        seg_loss=DiceCELoss(to_onehot_y=True, softmax=True),
        terms={"kd": {"loss": NanOnCall(LogitDistillationLoss(temperature=2.0)), "weight": 0.5}},
    )
    trainer = DistillationTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=_loader(),
        network=student,
        optimizer=torch.optim.Adam(student.parameters(), lr=0.01),
        loss_function=loss,
        teacher=_net(2),
        student_taps=TAPS,
        teacher_taps=TAPS,
        train_handlers=[NonFiniteLossHandler(mode)],
        decollate=False,
    )
    return trainer, student


@pytest.mark.parametrize(
    "build, value, named",
    [
        (_supervised, math.nan, "loss = nan"),
        (lambda mode: _supervised(mode, math.inf), math.inf, "loss = inf"),
        (_distillation, math.nan, "loss_kd = nan"),
    ],
)
def test_stop_names_the_iteration_and_the_bad_terms(build, value, named):
    trainer, network = build("stop")
    with pytest.raises(FloatingPointError) as info:
        trainer.run()
    message = str(info.value)
    assert message.startswith(f"non-finite loss at iteration {BAD_ITERATION} (epoch 1): {named}; training stopped")
    assert "set nonfinite_loss to 'skip'" in message
    assert "loss_seg" not in message  # the finite terms are not named
    assert trainer.state.iteration == BAD_ITERATION
    assert all(torch.isfinite(p).all() for p in network.parameters())


@pytest.mark.parametrize("build", [_supervised, _distillation])
def test_skip_leaves_the_weights_and_the_optimiser_untouched_for_that_batch(build):
    trainer, network = build("skip")
    snapshots = {}

    @trainer.on(Events.ITERATION_COMPLETED)
    def _snapshot(engine):
        weights = {k: v.clone() for k, v in network.state_dict().items()}
        optimizer = {k: {n: t.clone() for n, t in s.items()} for k, s in engine.optimizer.state_dict()["state"].items()}
        snapshots[engine.state.iteration] = weights, optimizer

    trainer.run()
    assert trainer.state.iteration == 4 and getattr(trainer.state, NONFINITE_SKIPS) == 1
    assert trainer.state.metrics[NONFINITE_SKIPS] == 1
    (w1, o1), (w2, o2), (w3, _) = snapshots[1], snapshots[2], snapshots[3]
    assert all(torch.equal(w1[k], w2[k]) for k in w1)  # the skipped step changed nothing
    assert all(torch.equal(o1[p][n], o2[p][n]) for p in o1 for n in o1[p])
    assert any(not torch.equal(w2[k], w3[k]) for k in w2)  # and training went on
    assert all(torch.isfinite(p).all() for p in network.parameters())
    assert NONFINITE_SKIPS in trainer.state_dict() and trainer.state_dict()[NONFINITE_SKIPS] == 1


def test_skip_under_amp_hands_the_overflow_to_the_grad_scaler():
    """With AMP the gradients are set to NaN, so that the grad scaler skips the step as on an overflow."""
    network = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    engine = type("E", (), {})()
    engine.optimizer, engine.scaler = optimizer, object()
    handler = NonFiniteLossHandler("skip")
    network(torch.ones(1, 2)).sum().backward()
    handler._skip_step = True
    handler.backward_completed(engine)
    assert all(torch.isnan(p.grad).all() for p in network.parameters())
    handler.backward_completed(engine)  # nothing marked: nothing done
    without_amp = torch.nn.Linear(2, 1)
    without_amp(torch.ones(1, 2)).sum().backward()
    engine.optimizer, engine.scaler = torch.optim.SGD(without_amp.parameters(), lr=0.1), None
    handler._skip_step = True
    handler.backward_completed(engine)
    assert all(p.grad is None for p in without_amp.parameters())


def test_finite_losses_pass_and_stop_mode_adds_no_metric():
    network = _net(1)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=_loader(2),
        network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=0.1),
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True),
        train_handlers=[NonFiniteLossHandler()],
        decollate=False,
    )
    trainer.run()
    assert trainer.state.iteration == 2 and NONFINITE_SKIPS not in trainer.state.metrics
    assert NONFINITE_SKIPS not in trainer.state_dict()


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="ignore"):
        NonFiniteLossHandler("ignore")
