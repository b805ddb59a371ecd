"""Config switches: the ``true``/``false`` values of a bundle config or a command line, read as ``bool``.

A switch such as ``resume``, ``augment`` or ``mlflow`` arrives as a Python ``bool`` from a JSON config, but as a string
(``--resume false``) or an integer from a command line. :func:`as_flag` accepts exactly those spellings and refuses
anything else, so that a typo cannot pass as ``True``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["as_flag"]

_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def as_flag(value: Any, name: str) -> bool:
    """A config switch as a ``bool``: ``True``/``False``, or the strings ``true``/``false`` (also ``1``/``0``,
    ``yes``/``no``, ``on``/``off``, any case) that a command line such as ``--resume false`` passes.

    Raises:
        ValueError: for any other value (the message names ``name`` and the value).
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"{name} must be true or false, got {value!r}")
