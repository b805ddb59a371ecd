import pytest
import torch
from ignite.engine import Engine, Events

from mskd.handlers import PerClassMetricHandler


def _engine_with_metric(value):
    engine = Engine(lambda e, b: None)

    @engine.on(Events.EPOCH_COMPLETED)
    def _set_metric(e):
        e.state.metrics["val_dice"] = value

    return engine


def test_split_into_named_scalars():
    engine = _engine_with_metric(torch.tensor([0.5, 0.25]))
    PerClassMetricHandler("val_dice", ["liver", "spleen"]).attach(engine)
    engine.run([0], max_epochs=1)
    assert engine.state.metrics == {"val_dice_liver": 0.5, "val_dice_spleen": 0.25}


def test_prefix():
    engine = _engine_with_metric(torch.tensor([1.0]))
    PerClassMetricHandler("val_dice", ["aorta"], prefix="test_dice").attach(engine)
    engine.run([0], max_epochs=1)
    assert engine.state.metrics == {"test_dice_aorta": 1.0}


def test_length_mismatch():
    engine = _engine_with_metric(torch.tensor([0.5, 0.25, 0.1]))
    PerClassMetricHandler("val_dice", ["liver", "spleen"]).attach(engine)
    with pytest.raises(ValueError, match="3 values but 2 class names"):
        engine.run([0], max_epochs=1)
