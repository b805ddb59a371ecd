"""Registering a handler's steps on an ignite engine once, however often ``attach`` is called."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["attach_once"]


def attach_once(engine: Any, *steps: tuple[Any, Callable]) -> None:
    """Add each ``(event, function)`` of ``steps`` to ``engine`` unless it is already there (a handler attached twice,
    or a workflow built again around the same engine, must not run its steps twice)."""
    for event, fn in steps:
        if not engine.has_event_handler(fn, event):
            engine.add_event_handler(event, fn)
