"""The progress of an engine's epochs: a bar on a terminal, plain periodic lines in a log."""

from __future__ import annotations

import logging

import pytest
import torch
from ignite.engine import Engine, Events

from mskd.engines import loss_terms
from mskd.handlers.progress import ProgressHandler, TimeEstimateHandler, format_duration


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


@pytest.mark.parametrize(
    "seconds, text", [(0.4, "0 s"), (45, "45 s"), (89, "89 s"), (90, "2 min"), (720, "12 min"), (13860, "3 h 51 min")]
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def _clocked(monkeypatch, step_s: float):
    """perf_counter advancing ``step_s`` per call (each iteration reads it once)."""
    clock = iter(step_s * k for k in range(10_000))
    monkeypatch.setattr("mskd.handlers.progress.time.perf_counter", lambda: next(clock))


def test_a_long_cpu_epoch_is_estimated_early_then_measured(monkeypatch, caplog):
    _clocked(monkeypatch, 10.0)  # 10 s per clock read: epoch start, then one read per iteration
    handler = TimeEstimateHandler("cpu", min_epoch_s=60, measure_s=20, min_iterations=2, note="See the README.")
    engine = Engine(lambda e, batch: None)
    handler.attach(engine)
    with caplog.at_level(logging.INFO):
        engine.run(list(range(10)), max_epochs=4)
    # iteration 1 at t=10 (not measured), 2 at 20, 3 at 30: 2 iterations in 20 s, 10 s each, 100 s per epoch
    assert handler.lines == [
        "about 100 s per epoch (measured over 2 iterations) on the CPU: the 4 epochs of this run take about 7 min, "
        "validation not included. See the README.",
        "epoch 1 took 100 s on the CPU: the 3 epochs left take about 5 min, validation not included. See the README.",
    ]
    assert [r.getMessage() for r in caplog.records if "per epoch" in r.getMessage() or "took" in r.getMessage()] == (
        handler.lines
    )


def test_short_epochs_and_gpus_get_no_estimate(monkeypatch):
    _clocked(monkeypatch, 1.0)
    short = TimeEstimateHandler("cpu", min_epoch_s=60, measure_s=2)
    engine = Engine(lambda e, batch: None)
    short.attach(engine)
    engine.run(list(range(10)), max_epochs=2)  # 10 s epochs
    assert short.lines == []
    gpu = TimeEstimateHandler("cuda:0", min_epoch_s=0, measure_s=0)
    engine = Engine(lambda e, batch: None)
    gpu.attach(engine)
    engine.run(list(range(10)), max_epochs=2)
    assert gpu.lines == []


def test_estimate_arguments_are_checked():
    with pytest.raises(ValueError, match="min_iterations >= 1"):
        TimeEstimateHandler("cpu", min_iterations=0)


def test_a_fresh_start_is_not_logged_as_a_resume(caplog):
    engine = Engine(lambda e, batch: None)
    engine.state.max_epochs = 2  # as MONAI's workflow sets it before the run: ignite then words the start a resume
    ProgressHandler("train", bar=False).attach(engine)
    with caplog.at_level(logging.INFO):
        engine.run([1, 2], max_epochs=2)
    messages = [r.getMessage() for r in caplog.records]
    assert "Engine run starting: 2 epochs" in messages and not any("resuming" in m for m in messages)
    engine.state.max_epochs = 3  # a real resume, from the end of epoch 2, keeps ignite's wording
    with caplog.at_level(logging.INFO):
        engine.run([1, 2], max_epochs=3)
    assert any(r.getMessage().startswith("Engine run resuming from iteration 4, epoch 2") for r in caplog.records)
