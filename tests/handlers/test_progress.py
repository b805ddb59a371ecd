"""Progress: a bar on a terminal, plain periodic lines in a log."""

from __future__ import annotations

import io
import logging
import sys

import pytest
import torch
from ignite.engine import Engine, Events

from mskd.engines import loss_terms
from mskd.handlers.progress import ProgressHandler, interactive, with_progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    "stdout_tty, stderr_tty, rank, expected",
    [(True, True, None, True), (True, True, "0", True), (True, True, "1", False), (False, True, None, False)]
    + [(True, False, None, False)],
)
def test_interactive_needs_two_terminals_and_rank_0(stdout_tty, stderr_tty, rank, expected, monkeypatch):
    monkeypatch.setattr(sys, "stdout", _Terminal() if stdout_tty else io.StringIO())
    monkeypatch.setattr(sys, "stderr", _Terminal() if stderr_tty else io.StringIO())
    if rank is None:
        monkeypatch.delenv("RANK", raising=False)
    else:
        monkeypatch.setenv("RANK", rank)
    assert interactive() is expected


@pytest.mark.parametrize(
    "total, lines, printed",
    [(10, 5, [2, 4, 6, 8, 10]), (7, 3, [3, 6, 7]), (2, 10, [1, 2]), (3, 1, [3])],
)
def test_plain_lines_at_even_steps_and_at_the_end(total, lines, printed, capsys):
    assert list(with_progress(range(total), total, "phantom", unit="case", bar=False, lines=lines)) == list(
        range(total)
    )
    out = capsys.readouterr().out.splitlines()
    assert [int(line.split()[1].split("/")[0]) for line in out] == printed
    assert all(line.startswith("phantom: ") and f"/{total} cases (" in line for line in out)


def test_bar_on_a_terminal(capsys):
    assert list(with_progress(range(3), 3, "phantom", unit="case", bar=True)) == [0, 1, 2]
    captured = capsys.readouterr()
    assert captured.out == "" and "phantom: 100%" in captured.err and "3/3" in captured.err


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
