from unittest.mock import MagicMock

import pytest
from ignite.engine import Engine
from monai.engines import Evaluator

from mskd.handlers import ValidationHandler


def _train(handler: ValidationHandler, max_epochs: int) -> None:
    trainer = Engine(lambda engine, batch: None)
    handler.attach(trainer)
    trainer.run([0, 1], max_epochs=max_epochs)


@pytest.mark.parametrize(
    "interval, max_epochs, validated", [(5, 3, [3]), (2, 5, [2, 4, 5]), (2, 4, [2, 4]), (1, 2, [1, 2])]
)
def test_validation_runs_every_interval_and_at_the_last_epoch(interval, max_epochs, validated):
    validator = MagicMock(spec=Evaluator)
    _train(ValidationHandler(interval, validator), max_epochs)
    assert [call.args[0] for call in validator.run.call_args_list] == validated


def test_a_training_that_saved_no_model_is_an_error(tmp_path):
    model = tmp_path / "unet-teacher-s0.pt"
    with pytest.raises(RuntimeError, match=f"training ended at epoch 2 of 2 without saving a model to {model}"):
        _train(ValidationHandler(1, MagicMock(spec=Evaluator), model_path=model), 2)
    model.write_bytes(b"weights")
    _train(ValidationHandler(1, MagicMock(spec=Evaluator), model_path=model), 2)


@pytest.mark.parametrize("interval", [0, -1, 1.5, True])
def test_the_interval_must_be_a_positive_integer(interval):
    with pytest.raises(ValueError, match=f"val_interval must be an integer >= 1, got {interval!r}"):
        ValidationHandler(interval, MagicMock(spec=Evaluator))
