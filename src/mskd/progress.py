"""Progress on the terminal: a bar when a person watches (a TTY), plain periodic lines when the output is a log file.

A progress bar redraws one line with carriage returns; written to a file or a pipe (CI, ``nohup``, ``| tee``) it turns
into one long line of fragments. So every progress display of mskd asks :func:`interactive` first and, when the
answer is no, writes ordinary lines instead (or nothing, where periodic lines are written anyway, as MONAI's
``StatsHandler`` does during training). The engines' display is :class:`mskd.handlers.ProgressHandler`.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

__all__ = ["interactive", "with_progress"]

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
