"""The progress of an engine's epochs on the terminal: a bar per epoch, or log lines (the rules are
:mod:`mskd.progress`'s), and an early estimate of a long training's duration."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from monai.utils import optional_import

from mskd.flags import as_flag
from mskd.progress import interactive

Events, _ = optional_import("ignite.engine", name="Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", name="Engine")

__all__ = ["ProgressHandler", "TimeEstimateHandler", "format_duration"]

_FRESH_START = re.compile(r"Engine run resuming from iteration 0, epoch 0 until (\d+ (?:epochs|iterations))$")


class _FreshStartWording(logging.Filter):
    """ignite words the start of every MONAI training "Engine run resuming from iteration 0, epoch 0 until N epochs"
    (MONAI's workflow sets the state's ``max_epochs`` before the run, which ignite takes for a resume): a fresh start
    is logged as "Engine run starting: N epochs"; a real resume keeps its wording."""

    def filter(self, record: logging.LogRecord) -> bool:
        found = _FRESH_START.match(record.getMessage())
        if found:
            record.msg, record.args = f"Engine run starting: {found[1]}", ()
        return True


class ProgressHandler:
    """Progress of an engine's epochs: a tqdm bar per epoch on a terminal, else log lines (or none).

    With ``bar`` true (a config's ``progress`` value, :func:`~mskd.progress.interactive` by default) a bar counts
    each epoch's iterations, shows ``output_transform``'s values (e.g. the loss terms) after it, and is closed at the
    epoch's last iteration, so that what runs at ``EPOCH_COMPLETED`` (validation and its log lines) prints below a
    finished bar. Otherwise, with ``log_every > 0``, the engine's logger writes ``<desc>: <i>/<n> (<s> s)`` every
    ``log_every`` iterations and at the epoch's last one; with ``log_every = 0`` nothing is shown (for training, where
    ``StatsHandler`` already writes periodic lines).

    Args:
        desc: what the engine does, e.g. ``"train"``, ``"evaluate"``, ``"segment"``.
        bar: draw the bar (``True``/``False``, or the strings ``true``/``false`` of a command line); ``None`` asks
            :func:`~mskd.progress.interactive`.
        output_transform: ``engine.state.output`` -> ``{name: float}`` shown after the bar.
        log_every: the interval of the plain lines in iterations (``0``: none).

    Raises:
        ValueError: when ``log_every < 0`` or ``bar`` is not a switch.
    """

    def __init__(
        self,
        desc: str,
        bar: bool | str | None = None,
        output_transform: Callable[[Any], dict[str, float]] | None = None,
        log_every: int = 0,
    ) -> None:
        if log_every < 0:
            raise ValueError(f"log_every must be >= 0 (0: no plain lines), got {log_every}")
        self.desc = desc
        self.bar = interactive() if bar is None else as_flag(bar, "progress")
        self.output_transform = output_transform
        self.log_every = int(log_every)
        self.pbar: Any = None
        self._start = 0.0

    def attach(self, engine: Engine) -> None:
        """Register the bar's (or the lines') steps on ``engine``; a fresh start is no longer logged as a resume."""
        if not any(isinstance(f, _FreshStartWording) for f in engine.logger.filters):
            engine.logger.addFilter(_FreshStartWording())
        if not (self.bar or self.log_every):
            return
        engine.add_event_handler(Events.EPOCH_STARTED, self.epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        for event in (Events.COMPLETED, Events.EXCEPTION_RAISED, Events.TERMINATE):
            engine.add_event_handler(event, self.close)

    def epoch_started(self, engine: Engine) -> None:
        """Start the epoch's bar (or its clock)."""
        self._start = time.perf_counter()
        if self.bar:
            from tqdm import tqdm

            state = engine.state
            desc = self.desc if state.max_epochs == 1 else f"{self.desc} [{state.epoch}/{state.max_epochs}]"
            self.close()
            self.pbar = tqdm(total=state.epoch_length, desc=desc, unit="it", leave=True, dynamic_ncols=True)

    def iteration_completed(self, engine: Engine) -> None:
        """Advance the bar (closed at the epoch's last iteration), or write a line when one is due."""
        length = engine.state.epoch_length
        done = (engine.state.iteration - 1) % length + 1  # a resumed epoch starts past its first iteration
        if self.pbar is not None:
            if self.output_transform is not None:
                values = self.output_transform(engine.state.output)
                self.pbar.set_postfix({k: f"{v:.4g}" for k, v in values.items()}, refresh=False)
            self.pbar.update(done - self.pbar.n)
            if done == length:
                self.close()
        elif not self.bar and (done % self.log_every == 0 or done == length):
            engine.logger.info(f"{self.desc}: {done}/{length} ({time.perf_counter() - self._start:.1f} s)")

    def close(self, engine: Engine | None = None) -> None:
        """Close the open bar, if any."""
        if self.pbar is not None:
            self.pbar.close()
            self.pbar = None


def format_duration(seconds: float) -> str:
    """A duration as a person reads it: ``45 s``, ``12 min``, ``3 h 51 min``."""
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


class TimeEstimateHandler:
    """Say early how long a long training will take: a CPU run of a GPU-sized stack must not sit silent for minutes.

    In the first epoch of an engine run (a resumed run included), once ``measure_s`` seconds and ``min_iterations``
    iterations have passed after the first iteration (left out: it holds the one-off start-up costs), the seconds per
    epoch are extrapolated from the iterations so far; when an epoch will take at least ``min_epoch_s``, the engine's
    logger writes that estimate and the total for the epochs left, once. At the end of that first epoch the measured
    time of its training iterations replaces the estimate (one more line, under the same condition). Validation,
    which runs at some epochs' ends, comes on top; both lines say so.

    Args:
        device: the device trained on; the estimate is given only on a CPU (``"cpu"`` or a ``torch.device``), or on
            every device with ``None``.
        min_epoch_s: the shortest epoch worth a line.
        measure_s: how long to measure before the early estimate.
        min_iterations: the fewest iterations to measure before the early estimate.
        note: text appended to both lines (e.g. where to read which configurations are GPU-sized).

    Raises:
        ValueError: for negative durations or ``min_iterations < 1``.
    """

    def __init__(
        self,
        device: Any = None,
        min_epoch_s: float = 60.0,
        measure_s: float = 20.0,
        min_iterations: int = 3,
        note: str = "",
    ) -> None:
        if min_epoch_s < 0 or measure_s < 0 or min_iterations < 1:
            raise ValueError(
                "min_epoch_s and measure_s must be >= 0 and min_iterations >= 1, got "
                f"{min_epoch_s}, {measure_s}, {min_iterations}"
            )
        cpu = device is not None and str(getattr(device, "type", device)).split(":")[0] == "cpu"
        self.active = device is None or cpu
        self.where = " on the CPU" if cpu else ""
        self.min_epoch_s = float(min_epoch_s)
        self.measure_s = float(measure_s)
        self.min_iterations = int(min_iterations)
        self.note = note
        self.lines: list[str] = []
        self._first_epoch: int | None = None
        self._epoch_start = self._measure_start = 0.0
        self._measured = 0
        self._estimated = False
        self._last_iteration_time = 0.0

    def attach(self, engine: Engine) -> None:
        """Register the handler's steps on ``engine`` (nothing off the CPU)."""
        if not self.active:
            return
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.EPOCH_STARTED, self.epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def started(self, engine: Engine) -> None:
        self._first_epoch = None
        self._estimated = False

    def epoch_started(self, engine: Engine) -> None:
        if self._first_epoch is None:
            self._first_epoch = engine.state.epoch
            self._epoch_start = time.perf_counter()
            self._measured = -1  # the first iteration is not measured

    def iteration_completed(self, engine: Engine) -> None:
        if engine.state.epoch != self._first_epoch:
            return
        now = time.perf_counter()
        self._last_iteration_time = now
        self._measured += 1
        if self._measured == 0:
            self._measure_start = now
            return
        elapsed = now - self._measure_start
        if self._estimated or self._measured < self.min_iterations or elapsed < self.measure_s:
            return
        self._estimated = True
        epoch_s = elapsed / self._measured * engine.state.epoch_length
        self._say(engine, f"about {epoch_s:.0f} s per epoch (measured over {self._measured} iterations)", epoch_s)

    def epoch_completed(self, engine: Engine) -> None:
        if engine.state.epoch != self._first_epoch:
            return
        epoch_s = self._last_iteration_time - self._epoch_start
        self._say(engine, f"epoch {engine.state.epoch} took {epoch_s:.0f} s", epoch_s, left_after=engine.state.epoch)

    def _say(self, engine: Engine, measured: str, epoch_s: float, left_after: int | None = None) -> None:
        if epoch_s < self.min_epoch_s:
            return
        done = engine.state.epoch if left_after is not None else engine.state.epoch - 1
        left = max(0, int(engine.state.max_epochs or 0) - done)
        line = (
            f"{measured}{self.where}: the {left} epoch{'s' if left != 1 else ''} "
            f"{'left' if left_after is not None else 'of this run'} take about {format_duration(left * epoch_s)}, "
            "validation not included"
        )
        if self.note:
            line += f". {self.note}"
        self.lines.append(line)
        engine.logger.info(line)
