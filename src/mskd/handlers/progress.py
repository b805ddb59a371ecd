"""Progress on the terminal: a bar when a person watches (a TTY), plain periodic lines when the output is a log file.

A progress bar redraws one line with carriage returns; written to a file or a pipe (CI, ``nohup``, ``| tee``) it turns
into one long line of fragments. So every progress display of mskd asks :func:`interactive` first and, when the
answer is no, writes ordinary lines instead (or nothing, where periodic lines are written anyway, as MONAI's
``StatsHandler`` does during training).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from monai.utils import optional_import

Events, _ = optional_import("ignite.engine", name="Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", name="Engine")

__all__ = ["ProgressHandler", "interactive", "with_progress"]

T = TypeVar("T")


def interactive() -> bool:
    """Whether progress bars are drawn: stdout and stderr are terminals, and this is the first (or only) process.

    Bars go to stderr and log lines to stdout; both must be terminals, or a redirected one would collect the bar's
    redraws. Under ``torchrun`` (``RANK`` set) only rank 0 draws.
    """
    streams = (sys.stdout, sys.stderr)
    ttys = all(callable(getattr(s, "isatty", None)) and s.isatty() for s in streams)
    return ttys and os.environ.get("RANK", "0") == "0"


def with_progress(
    iterable: Iterable[T], total: int, desc: str, unit: str = "it", bar: bool | None = None, lines: int = 10
) -> Iterator[T]:
    """Iterate over ``iterable`` showing progress: a tqdm bar on a terminal, else about ``lines`` printed lines.

    Args:
        iterable: what to iterate over.
        total: its length.
        desc: what is being done, e.g. ``"synapse phantom"``.
        unit: what one item is, e.g. ``"case"``.
        bar: draw a bar (``True``), print lines (``False``), or ask :func:`interactive` (``None``).
        lines: the number of plain lines over the whole iteration (the last item always gets one).

    Yields:
        the items of ``iterable``.
    """
    if interactive() if bar is None else bar:
        from tqdm import tqdm

        yield from tqdm(iterable, total=total, desc=desc, unit=unit)
        return
    step = max(1, -(-total // max(1, lines)))
    start = time.perf_counter()
    done = 0
    for done, item in enumerate(iterable, start=1):
        yield item
        if done % step == 0 or done == total:
            print(f"{desc}: {done}/{total} {unit}s ({time.perf_counter() - start:.1f} s)", flush=True)


class ProgressHandler:
    """Progress of an engine's epochs: a tqdm bar per epoch on a terminal, else log lines (or none).

    With ``bar`` true (a config's ``progress`` value, :func:`interactive` by default) a bar counts each epoch's
    iterations, shows ``output_transform``'s values (e.g. the loss terms) after it, and is closed at the epoch's last
    iteration, so that what runs at ``EPOCH_COMPLETED`` (validation and its log lines) prints below a finished bar.
    Otherwise, with ``log_every > 0``, the engine's logger writes ``<desc>: <i>/<n> (<s> s)`` every ``log_every``
    iterations and at the epoch's last one; with ``log_every = 0`` nothing is shown (for training, where
    ``StatsHandler`` already writes periodic lines).

    Args:
        desc: what the engine does, e.g. ``"train"``, ``"evaluate"``, ``"segment"``.
        bar: draw the bar (``True``/``False``, or the strings ``true``/``false`` of a command line); ``None`` asks
            :func:`interactive`.
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
        from mskd.engines.checkpointing import as_flag

        if log_every < 0:
            raise ValueError(f"log_every must be >= 0 (0: no plain lines), got {log_every}")
        self.desc = desc
        self.bar = interactive() if bar is None else as_flag(bar, "progress")
        self.output_transform = output_transform
        self.log_every = int(log_every)
        self.pbar: Any = None
        self._start = 0.0

    def attach(self, engine: Engine) -> None:
        """Register the bar's (or the lines') steps on ``engine``."""
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
