"""The progress of an engine's epochs: a bar on a terminal, plain periodic lines in a log."""

from __future__ import annotations

import logging

import pytest
import torch
from ignite.engine import Engine, Events

from mskd.engines import loss_terms
from mskd.handlers.progress import ProgressHandler


def _engine(handler: ProgressHandler, epoch_completed=None) -> Engine:
    engine = Engine(lambda e, batch: {"loss": torch.tensor(0.25 * batch)})
    handler.attach(engine)
    if epoch_completed is not None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, epoch_completed)
    return engine


def test_engine_bar_shows_the_loss_terms_and_closes_before_epoch_completed(capsys):
    handler = ProgressHandler("train", bar=True, output_transform=loss_terms)
    open_at_epoch_end = []
    engine = _engine(handler, lambda e: open_at_epoch_end.append(handler.pbar is not None))
    engine.run([1, 2, 3], max_epochs=2)
    err = capsys.readouterr().err
    assert "train [1/2]: 100%" in err and "train [2/2]: 100%" in err and "loss=0.75" in err
    assert open_at_epoch_end == [False, False]  # validation's lines print below a finished bar
    assert handler.pbar is None


def test_engine_lines_when_not_a_terminal(caplog):
    handler = ProgressHandler("evaluate", bar="false", log_every=2)  # as `--progress false` passes it
    engine = _engine(handler)
    with caplog.at_level(logging.INFO):
        engine.run(list(range(5)), max_epochs=1)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("evaluate: ")]
    assert [line.split(" (")[0] for line in lines] == ["evaluate: 2/5", "evaluate: 4/5", "evaluate: 5/5"]


def test_nothing_without_a_terminal_and_without_lines(capsys, caplog):
    engine = _engine(ProgressHandler("train", bar=False))
    with caplog.at_level(logging.INFO):
        engine.run([1, 2], max_epochs=1)
    assert "train" not in capsys.readouterr().err and not any("train: " in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"log_every": -1}, "log_every must be >= 0"), ({"bar": "sometimes"}, "progress must be true or false")],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ProgressHandler("train", **kwargs)
