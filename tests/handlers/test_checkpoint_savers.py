import math
import os

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedTrainer
from monai.handlers import LrScheduleHandler
from monai.losses import DiceCELoss
from monai.networks.nets import UNet
from monai.transforms import Compose, EnsureTyped, RandFlipd, RandGaussianNoised
from monai.utils import set_determinism

from mskd.handlers import CheckpointSaver, SafeDiskSaver, TrainingCheckpoint
from mskd.io import load_checkpoint

ITEMS, BATCH, EPOCHS = 8, 2, 3  # 4 iterations per epoch, 12 in all


class Killed(Exception):
    """Stands in for a killed process: the run stops at once, nothing more is saved."""


def _trainer(run_dir, resume_from=None, stop_at=None, every=3, **kwargs):
    """A small trainer whose batches depend on the shuffle and on two random transforms."""
    set_determinism(seed=0)
    rng = np.random.default_rng(0)
    data = [
        {
            "image": rng.random((1, 16, 16), dtype=np.float32),
            "label": rng.integers(0, 3, (1, 16, 16)).astype(np.float32),
        }
        for _ in range(ITEMS)
    ]
    transform = Compose(
        [
            RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=0),
            RandGaussianNoised(keys="image", prob=0.5, std=0.1),
            EnsureTyped(keys=["image", "label"], track_meta=False),
        ]
    )
    loader = DataLoader(Dataset(data, transform), batch_size=BATCH, shuffle=True, num_workers=0)
    network = UNet(2, 1, 3, channels=(4, 8), strides=(2,), num_res_units=0, dropout=0.2)
    optimizer = torch.optim.Adam(network.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    checkpoint = TrainingCheckpoint(
        run_dir, {"model": network, "optimizer": optimizer, "lr_scheduler": scheduler}, every=every,
        resume_from=resume_from, seed=7, **kwargs,
    )  # fmt: skip
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=EPOCHS,
        train_data_loader=loader,
        network=network,
        optimizer=optimizer,
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True),
        train_handlers=[LrScheduleHandler(scheduler, print_lr=False), checkpoint],
        decollate=False,
    )
    if stop_at is not None:

        @trainer.on(Events.ITERATION_COMPLETED(once=stop_at))
        def _kill(_):
            raise Killed(stop_at)

    return trainer, network


def _weights(network):
    return {k: v.detach().clone() for k, v in network.state_dict().items()}


@pytest.mark.parametrize("stop_at, resumed_at", [(7, 6), (5, 4), (4, 3), (10, 9)])
def test_a_run_stopped_anywhere_resumes_to_the_uninterrupted_weights(tmp_path, stop_at, resumed_at):
    trainer, network = _trainer(tmp_path / "a")
    trainer.run()
    expected = _weights(network)

    trainer, _ = _trainer(tmp_path / "b", stop_at=stop_at)
    with pytest.raises(Killed):
        trainer.run()
    latest = tmp_path / "b" / "latest.pt"
    assert load_checkpoint(latest)["trainer"]["iteration"] == resumed_at

    trainer, network = _trainer(tmp_path / "b", resume_from=latest)
    trainer.run()
    assert trainer.state.iteration == EPOCHS * ITEMS // BATCH and trainer.state.epoch == EPOCHS
    got = _weights(network)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert os.listdir(tmp_path / "b") == ["latest.pt"]


def test_checkpoint_holds_the_run_state_and_loads_weights_only(tmp_path):
    trainer, _ = _trainer(tmp_path, every=0, run_id="run-1")
    trainer.run()
    state = load_checkpoint(tmp_path / "latest.pt")
    assert set(state) == {"model", "optimizer", "lr_scheduler", "trainer", "rng", "run"}
    assert state["trainer"]["iteration"] == 12 and state["run"] == {"run_id": "run-1"}
    assert set(state["rng"]) == {"python", "numpy", "torch", "cuda"}
    assert state["lr_scheduler"]["last_epoch"] == EPOCHS


def test_iteration_checkpoints_skip_epoch_ends(tmp_path):
    trainer, _ = _trainer(tmp_path, every=2)
    saved = []

    @trainer.on(Events.ITERATION_COMPLETED)
    def _look(_):
        latest = tmp_path / "latest.pt"
        saved.append(load_checkpoint(latest)["trainer"]["iteration"] if latest.exists() else None)

    trainer.run()
    # the file after each iteration: iteration checkpoints at 2, 6, 10; none at 4, 8, 12, whose epoch-end checkpoints
    # come after the LR step (and validation), so they show from the next iteration on
    assert saved == [None, 2, 2, 2, 4, 6, 6, 6, 8, 10, 10, 10]


def test_resume_refuses_changed_data_and_other_configurations(tmp_path):
    trainer, _ = _trainer(tmp_path / "a", stop_at=3)
    with pytest.raises(Killed):
        trainer.run()
    latest = tmp_path / "a" / "latest.pt"
    state = load_checkpoint(latest)
    state["trainer"]["epoch_length"] = 5
    torch.save(state, tmp_path / "other.pt")
    trainer, _ = _trainer(tmp_path / "a", resume_from=tmp_path / "other.pt")
    with pytest.raises(ValueError, match="has 5 iterations per epoch, the training data now give 4"):
        trainer.run()
    del state["optimizer"]
    torch.save(state, tmp_path / "other.pt")
    trainer, _ = _trainer(tmp_path / "a", resume_from=tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"lacks \['optimizer'\]: it was saved by another configuration"):
        trainer.run()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"every": -1}, "checkpoint_every must be an integer >= 0"),
        ({"every": 1.5}, "checkpoint_every must be an integer >= 0"),
        ({"save_dict": {"rng": torch.nn.Linear(1, 1)}}, r"must not use the names \['rng'\]"),
    ],
)
def test_training_checkpoint_checks_its_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainingCheckpoint(tmp_path, **{"save_dict": {}, **kwargs})


def test_disabled_entries_are_left_out(tmp_path):
    handler = TrainingCheckpoint(tmp_path, {"model": torch.nn.Linear(1, 1), "best_checkpoint": None})
    assert list(handler.save_dict) == ["model"]


def test_nan_weights_are_never_saved(tmp_path):
    trainer, network = _trainer(tmp_path, every=2)

    @trainer.on(Events.ITERATION_COMPLETED(once=3))
    def _diverge(_):
        with torch.no_grad():
            next(network.parameters())[0].fill_(math.nan)

    with pytest.raises(FloatingPointError, match=r"refusing to save checkpoint .*latest\.pt: 'model/.*' holds NaN"):
        trainer.run()
    assert load_checkpoint(tmp_path / "latest.pt")["trainer"]["iteration"] == 2  # the last good one, intact
    assert os.listdir(tmp_path) == ["latest.pt"]


def _validate(saver, score):
    """Fire the saver's key-metric save as a validation of ``score`` at epoch 1 would."""
    engine = type("E", (), {})()
    engine.state = type("S", (), {"metrics": {"dice": score}, "key_metric_name": "dice", "epoch": 1})()
    engine.last_event_name = Events.EPOCH_COMPLETED
    engine.has_registered_events = lambda _e: True
    engine.fire_event = lambda _e: None
    saver.metrics_completed(engine)


def test_checkpoint_saver_writes_the_best_model_atomically_and_refuses_nan(tmp_path, monkeypatch):
    network = torch.nn.Linear(2, 1)
    saver = CheckpointSaver(str(tmp_path), {"model": network}, save_key_metric=True, key_metric_filename="model.pt")
    assert isinstance(saver._key_metric_checkpoint.save_handler, SafeDiskSaver)
    _validate(saver, 0.5)
    first = load_checkpoint(tmp_path / "model.pt")
    assert set(first) == {"weight", "bias"} and saver.state_dict()["_saved"] == [(0.5, "model_key_metric=0.5000.pt")]
    with torch.no_grad():
        network.weight.fill_(2.0)
    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: open(f, "wb").write(b"partial") and 1 / 0)
    with pytest.raises(ZeroDivisionError):
        _validate(saver, 0.7)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(tmp_path / "model.pt")["weight"], first["weight"])
    assert os.listdir(tmp_path) == ["model.pt"]
    with torch.no_grad():
        network.weight.fill_(math.inf)
    with pytest.raises(FloatingPointError, match=r"model\.pt: 'weight' holds NaN or Inf"):
        _validate(saver, 0.9)
    assert torch.equal(load_checkpoint(tmp_path / "model.pt")["weight"], first["weight"])

    restored = CheckpointSaver(str(tmp_path), {"model": network}, save_key_metric=True, key_metric_filename="model.pt")
    restored.load_state_dict(saver.state_dict())
    assert restored.state_dict() == saver.state_dict()
    restored.load_state_dict({})  # a checkpoint saved without a best-model saver: nothing to restore


def test_checkpoint_saver_saves_metadata_with_the_weights_and_a_copy(tmp_path):
    from mskd.networks import checkpoint_metadata, read_checkpoint

    network = UNet(2, 1, 3, channels=(4, 8), strides=(2,), num_res_units=0)
    metadata = checkpoint_metadata("unet", 3, 16, run_name="unet-teacher-s1")
    saver = CheckpointSaver(
        str(tmp_path), {"model": network}, metadata=metadata, key_metric_copy="model.pt",
        save_key_metric=True, key_metric_filename="unet-teacher-s1.pt",
    )  # fmt: skip
    _validate(saver, 0.5)
    assert sorted(os.listdir(tmp_path)) == ["model.pt", "unet-teacher-s1.pt"]
    own, copy = (tmp_path / "unet-teacher-s1.pt").read_bytes(), (tmp_path / "model.pt").read_bytes()
    assert own == copy
    state, saved = read_checkpoint(tmp_path / "unet-teacher-s1.pt")
    assert saved == metadata and state.keys() == network.state_dict().keys()
    assert sorted(torch.load(tmp_path / "model.pt", weights_only=True)) == ["model", "mskd"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"save_dict": {"model": None, "opt": None}, "metadata": {}}, r"holds one network, .*got the keys \['model'"),
        ({"save_dict": {"model": None}, "key_metric_copy": "model.pt"}, "set save_key_metric=True"),
    ],
)
def test_checkpoint_saver_checks_its_new_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        CheckpointSaver(str(tmp_path), **kwargs)
