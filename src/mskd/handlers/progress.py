"""The progress of an engine's epochs on the terminal: a bar per epoch, or log lines (the rules are
:mod:`mskd.progress`'s)."""

from __future__ import annotations

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

__all__ = ["ProgressHandler"]


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
