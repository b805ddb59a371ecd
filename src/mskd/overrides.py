"""Checks of bundle overrides (``mskd`` workflow flags and ``--set``, an experiment's ``overrides``) before a run.

An override is a config id (``learning_rate``, ``seg_loss#lambda_ce``) and a value that MONAI's ``ConfigParser``
sets over the bundle's config stack. Two kinds are refused before anything runs:

- an id that the stack does not have: MONAI adds it as a new entry that nothing reads, so a typo
  (``learning_rat``) trains with the default silently;
- a value or id that runs Python code: a ``"$"`` string is passed to ``eval``, a ``"_target_"`` names any
  importable callable to call, and a ``"%"`` macro that names a file brings in that file's entries. A config
  file is code the user chose to run; an override on a command line or in a shared experiment file should not
  run code unnoticed, so the callers ask for an explicit opt-in (``--allow-code``).
"""

from __future__ import annotations

import difflib
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["code_in_overrides", "unknown_keys"]

_TARGET = "_target_"  # MONAI's key of a component to instantiate


def _id_parts(key: str) -> list[str]:
    from monai.bundle.reference_resolver import ReferenceResolver

    return ReferenceResolver.split_id(key)  # "#" and "::" both separate levels


def _runs_code(value: Any) -> bool:
    """Whether MONAI would run code for a config value (nested lists and dicts included).

    Args:
        value: a config value, as parsed from JSON.

    Returns:
        ``True`` for a string starting with ``$`` (an expression), a dict with a ``_target_`` key (a component),
        or a ``%`` macro naming another config file, anywhere in ``value``.
    """
    from monai.bundle import ConfigParser
    from monai.bundle.utils import EXPR_KEY, MACRO_KEY

    if isinstance(value, str):
        if value.startswith(EXPR_KEY):
            return True
        return value.startswith(MACRO_KEY) and bool(ConfigParser.split_path_id(value[len(MACRO_KEY) :])[0])
    if isinstance(value, Mapping):
        return _TARGET in value or any(_runs_code(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_runs_code(v) for v in value)
    return False


def code_in_overrides(overrides: Mapping[str, Any]) -> list[str]:
    """The override ids whose value or id would run Python code (``$`` expression, ``_target_``, ``%file`` macro).

    Args:
        overrides: config ids -> values.

    Returns:
        the ids, in the order given; an id is listed when one of its levels is ``_target_`` or its value runs code.
    """
    return [key for key, value in overrides.items() if _TARGET in _id_parts(key) or _runs_code(value)]


def _nearest(config: Any, parts: Sequence[str]) -> str | None:
    """The existing id nearest to ``parts``: each missing level replaced by its closest sibling, or ``None``."""
    found = []
    node = config
    for part in parts:
        if isinstance(node, dict):
            if part not in node:
                close = difflib.get_close_matches(part, [str(k) for k in node], n=1)
                if not close:
                    return None
                part = close[0]
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
        found.append(part)
    return "#".join(found)


def unknown_keys(
    config_files: Sequence[str | os.PathLike],
    keys: Iterable[str],
    meta_file: str | os.PathLike | None = None,
) -> list[str]:
    """One message per id in ``keys`` that the merged config of ``config_files`` does not have.

    The files are read and merged as MONAI does (later files override top-level ids), without evaluating any
    expression or instantiating any component.

    Args:
        config_files: the stack's config files, base first, in the bundle's ``configs`` folder.
        keys: config ids, levels separated by ``#`` (or ``::``).
        meta_file: the bundle's ``metadata.json``, read as MONAI does into ``_meta_`` (ids under ``_meta_``).

    Returns:
        lines such as ``learning_rat: no such config key in bundles/mskd_synapse (train_teacher.json); did you
        mean learning_rate?``, in the order of ``keys``; empty when every id exists.
    """
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(f) for f in config_files])
    if meta_file is not None:
        with warnings.catch_warnings():  # MONAI's deprecation notice about a metadata field is not the user's concern
            warnings.simplefilter("ignore")
            parser.read_meta(str(meta_file))
    files = [Path(f) for f in config_files]
    where = f"{files[0].parent.parent} ({', '.join(f.name for f in files)})"
    lines = []
    for key in keys:
        if key in parser:
            continue
        parts = _id_parts(key)
        near = _nearest(parser.get(), parts)
        parent = "#".join(parts[:-1])
        if near is not None:
            hint = f"; did you mean {near}?"
        elif parent and isinstance(parser.get(parent), dict):
            hint = f"; to add a key to {parent}, override the whole of {parent} (a JSON object)"
        else:
            hint = ""
        lines.append(f"{key}: no such config key in {where}{hint}")
    return lines
