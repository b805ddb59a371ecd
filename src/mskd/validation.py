"""Up-front checks: refuse bad data, configs and checkpoints before any compute is spent (or any output written).

A bundle's first ``initialize`` step is ``$mskd.validation.preflight()``. It builds, one by one, the components that
the stack's run uses (:data:`mskd.bundle.PREFLIGHT`: networks, losses, taps, datalists, the checkpoints' loaders),
so that every constraint is checked once, where it lives (the constructors and the data functions), and each
exception becomes a :class:`Problem` of one config id. It then reads every case of the run's datalist with the
bundle's own loading transform (:class:`mskd.data.LoadCased`: reader, RAS reorientation, BTCV label remap) and checks
what no component checks: run settings, output folders, network input sizes, checkpoint metadata, and the volumes
(3D, finite, on a physical grid, CT intensities in HU, labels on their image's grid and in the task's label set,
every case once, some organ to learn). Every problem is collected; then, if there is any,
:func:`report_problems` raises :class:`ValidationError`, or, on MONAI's command line (``python -m monai.bundle run``),
prints::

    mskd: 2 problem(s) found before starting:
      - /data/labelsTr/case_0001.nii.gz: label values [12] outside the task's labels 0..8 (num_classes 9)
      - loss: term 'kd': weight must be finite and >= 0, got -0.1.

to stderr and exits with status 2, without a traceback (``SystemExit`` is not an ``Exception``, so MONAI's config
evaluation lets it through unwrapped). With ``MSKD_DEBUG=1`` it raises :class:`ValidationError` there too. A command
line maps each problem's config id to its own flag (:class:`Flag`: ``mskd predict`` says ``--ckpt-path``).

What the pre-flight builds is thrown away before the run starts (the parser is reset), so that the run builds its
networks after ``set_determinism``, exactly as without the pre-flight.
"""

from __future__ import annotations

import math
import os
import re
import sys
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np

from mskd.extras import require
from mskd.io import error_line

__all__ = [
    "AIR_HU",
    "DEBUG_ENV",
    "DIRECTION_TOLERANCE",
    "SETTINGS",
    "SPACING_TOLERANCE_MM",
    "Flag",
    "Problem",
    "ValidationError",
    "bundle_problems",
    "debug_enabled",
    "describe",
    "format_problems",
    "open_tracking",
    "preflight",
    "report_problems",
    "reported_error",
    "validation_error",
]

DEBUG_ENV = "MSKD_DEBUG"  # set to 1: tracebacks, and ValidationError raised on MONAI's command line too
SPACING_TOLERANCE_MM = 1e-3  # image and label spacing and origin may differ by this much (mm)
DIRECTION_TOLERANCE = 1e-4  # ... and their direction cosines by this much
AIR_HU = -500.0  # a CT in Hounsfield units holds voxels at or below this (air is about -1000 HU)
EXIT_STATUS = 2

# run setting -> (kind, bound): "int" an integer >= bound, "number" a finite number > bound, "flag" true/false,
# "gib" a size in GiB of at least one byte, "choice" one of bound. These are the values that no component the
# pre-flight builds takes (the engines, loaders and optimiser are built by the run); one that is an expression
# (num_classes from the task) is left to the components that use it.
SETTINGS: dict[str, tuple[str, Any]] = {
    "max_epochs": ("int", 1),
    "val_interval": ("int", 1),
    "batch_size": ("int", 1),
    "slices_per_volume": ("int", 1),
    "val_slice_batch": ("int", 1),
    "slice_batch": ("int", 1),
    "log_every": ("int", 1),
    "checkpoint_every": ("int", 0),
    "num_workers": ("int", 0),
    "seed": ("int", 0),
    "image_size": ("int", 8),
    "num_classes": ("int", 2),
    "learning_rate": ("number", 0.0),
    "teacher_cache_gib": ("gib", 0),
    "resume": ("flag", 0),
    "augment": ("flag", 0),
    "mlflow": ("flag", 0),
    "role": ("choice", ("teacher", "student")),
}

_MAX_LISTED = 8  # values or keys named in one line
_LIMIT = 600  # characters of a component's message kept (MONAI's list every option)


# --- problems and their report ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Flag:
    """How a command line sets a config id (``mskd predict``'s ``--image-size`` sets ``image_size``).

    Attributes:
        name: the flag.
        default: where the command takes the value from when the flag is left out (``"the checkpoint's"``), for the
            fixes that suggest a value; ``None`` when the flag has a plain default.
    """

    name: str
    default: str | None = None


@dataclass(frozen=True)
class Problem:
    """One thing that keeps a run from starting.

    Attributes:
        config_id: the config id whose value to change (``ckpt_path``, ``teacher``, ``loss``, ``dataset_dir``: the
            folder of a broken file); a command line shows its own flag for it.
        message: what is wrong, on one line, naming the value, the file or the key and, where it can, the fix.
        file: the file or folder the problem is in, shown first instead of the config id (a broken volume).
        value: a value of ``config_id`` that fixes it (a checkpoint's image size); the line then ends with
            ``; pass <flag> <value>``.
    """

    config_id: str
    message: str
    file: str | None = None
    value: Any = None

    def line(self, flags: Mapping[str, Flag] | None = None) -> str:
        """The problem on one line, with the flags of ``flags`` (config id -> :class:`Flag`) for their config ids
        (the others keep the config id, and a suggested value names the bundle override ``--<config id>``)."""
        flag = (flags or {}).get(self.config_id)
        head = self.file if self.file is not None else flag.name if flag is not None else self.config_id
        text = f"{head}: {self.message}"
        if self.value is not None:
            text += f"; pass {flag.name if flag is not None else '--' + self.config_id} {self.value}"
            if flag is not None and flag.default is not None:
                text += f" or omit it to use {flag.default}"
        return _one_line(text)


class ValidationError(ValueError):
    """The problems found before a run started (see :func:`report_problems`).

    Attributes:
        problems: the :class:`Problem` objects.
        flags: config id -> :class:`Flag` of the command that reports them (empty: the config ids).
    """

    def __init__(self, problems: Sequence[Problem], flags: Mapping[str, Flag] | None = None) -> None:
        self.problems = list(problems)
        self.flags = dict(flags or {})
        super().__init__(format_problems(self.problems, self.flags))

    @property
    def lines(self) -> list[str]:
        """One line per problem, as the report shows them."""
        return [p.line(self.flags) for p in self.problems]


def format_problems(problems: Sequence[Problem], flags: Mapping[str, Flag] | None = None) -> str:
    """The report: a header line with the count, then one indented line per problem (:meth:`Problem.line`)."""
    lines = [f"  - {p.line(flags)}" for p in problems]
    return "\n".join([f"mskd: {len(problems)} problem(s) found before starting:", *lines])


def debug_enabled() -> bool:
    """Whether ``MSKD_DEBUG`` asks for tracebacks (set, and not ``0``, ``false`` or ``no``)."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _bundle_command_line() -> bool:
    """Whether this process is ``python -m monai.bundle`` (also under ``torchrun``): a command line of MONAI's,
    where the report must come without a traceback and the process must exit."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec is not None and spec.name in ("monai.bundle", "monai.bundle.__main__")


def report_problems(problems: Sequence[Problem], debug: bool | None = None) -> None:
    """Do nothing when ``problems`` is empty; otherwise raise :class:`ValidationError`, or, on MONAI's command line
    (``python -m monai.bundle run``), print them and exit with status 2, without a traceback.

    A library raises: a host that builds a workflow in its own process (``monai.bundle.create_workflow``, MONAI
    Label, ``mskd``'s commands) gets the exception, and ``mskd`` prints its problems and exits 2 itself. Under
    ``torchrun`` every rank runs the checks and exits; only each node's local rank 0 prints.

    Args:
        problems: the problems found.
        debug: raise :class:`ValidationError` (with its traceback) on MONAI's command line too; default whether
            ``MSKD_DEBUG`` is set to something other than ``0``.

    Raises:
        ValidationError: when there is a problem (in-process, or with ``debug``).
        SystemExit: with status 2, when there is a problem on MONAI's command line and not ``debug``.
    """
    if not problems:
        return
    if debug is None:
        debug = debug_enabled()
    if debug or not _bundle_command_line():
        raise ValidationError(problems)
    if os.environ.get("LOCAL_RANK", "0") == "0":
        print(format_problems(problems), file=sys.stderr, flush=True)
    raise SystemExit(EXIT_STATUS)


def validation_error(error: BaseException) -> ValidationError | None:
    """The :class:`ValidationError` in ``error``'s chain (MONAI wraps what a config expression raises), if any."""
    return next((e for e in _chain(error) if isinstance(e, ValidationError)), None)


def _chain(error: BaseException) -> list[BaseException]:
    """``error`` and the exceptions it was raised from (``__cause__``, else an unsuppressed ``__context__``)."""
    chain = [error]
    while True:
        last = chain[-1]
        inner = last.__cause__ if last.__cause__ is not None or last.__suppress_context__ else last.__context__
        if inner is None or any(inner is e for e in chain):
            return chain
        chain.append(inner)


def _raised_by_mskd(error: BaseException) -> bool:
    """Whether ``error`` was raised in mskd's own code (the last frame of its traceback is in the package)."""
    tb = error.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    name = tb.tb_frame.f_globals.get("__name__", "")
    return name == "mskd" or name.startswith("mskd.")


def reported_error(error: BaseException) -> BaseException:
    """The exception of ``error``'s chain that says what is wrong: the outermost raised by mskd's own code (a message
    written to say what to fix, which MONAI's "Failed to instantiate component" and "Failed to evaluate
    ConfigExpression" wrap), else the innermost (the root cause)."""
    chain = _chain(error)
    return next((e for e in chain if _raised_by_mskd(e)), chain[-1])


def describe(error: BaseException, lines: int = 1, limit: int = 240) -> str:
    """:func:`reported_error`'s message on one line (its first ``lines`` lines joined, at most ``limit`` characters),
    after the type name when the message alone says too little (a ``KeyError``'s is the bare key)."""
    reported = reported_error(error)
    text = error_line(reported, limit, lines) if str(reported).strip() else ""
    if text and not isinstance(reported, KeyError):
        return text
    return f"{type(reported).__name__}: {text}" if text else type(reported).__name__


def _one_line(text: object) -> str:
    """The first line of ``text`` (exception messages from torch or h5py can run over several)."""
    lines = str(text).strip().splitlines() or [""]
    return lines[0] + (" ..." if len(lines) > 1 else "")


def _listed(values: Sequence[Any]) -> str:
    values = list(values)
    return str(values[:_MAX_LISTED])[:-1] + (", ...]" if len(values) > _MAX_LISTED else "]")


# --- the entry points of a bundle -----------------------------------------------------------------------------------


def preflight() -> None:
    """The first ``initialize`` step of every mskd bundle (``$mskd.validation.preflight()``): every problem of the
    running config (:func:`bundle_problems`), reported by :func:`report_problems` (exit status 2 on MONAI's command
    line, :class:`ValidationError` in a host process). What it built is dropped, so the run builds its components
    afresh, after ``set_determinism``.

    Raises:
        ValidationError: when there is a problem (in-process).
        SystemExit: with status 2, on MONAI's command line.
        RuntimeError: when called outside a config expression.
    """
    parser = _running_parser()
    try:
        problems = bundle_problems(parser)
    finally:
        parser.parse(reset=True)  # drop every object built here: the run builds its own, seeded
    report_problems(problems)


def open_tracking(run: Any, resume_from: str | os.PathLike | None = None) -> str | None:
    """``run.open(resume_from)`` (:meth:`mskd.tracking.MlflowRun.open`), with an unusable store reported as a problem
    of ``tracking_uri`` by :func:`report_problems`: one line and exit status 2 on a command line, the exception in a
    host process. A bundle's ``initialize`` opens its run so: ``$mskd.validation.open_tracking(@mlflow_run, ...)``.

    Returns:
        the run id, or ``None`` with tracking off.

    Raises:
        ValidationError: when the store cannot be used (in-process; from the :class:`mskd.tracking.TrackingError`).
        SystemExit: with status 2, on MONAI's command line.
    """
    from mskd.tracking import TrackingError

    try:
        return run.open(resume_from)
    except TrackingError as e:
        report_problems([Problem("tracking_uri", str(e))])
        raise  # not reached: report_problems raises


def _running_parser() -> Any:
    """The ``monai.bundle.ConfigParser`` whose config expression is calling (MONAI hands an expression no handle on
    its parser: it is the ``self`` of the ``get_parsed_content`` frame that evaluates the expression)."""
    from monai.bundle import ConfigParser

    frame = sys._getframe(1)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, ConfigParser):
            return candidate
        frame = frame.f_back
    raise RuntimeError(
        "mskd.validation.preflight() runs as a bundle config's first initialize step ($mskd.validation.preflight()); "
        "to check a parser yourself, call mskd.validation.bundle_problems(parser)"
    )


# --- the config: what the run uses --------------------------------------------------------------------------------


class _References:
    """The config ids each id of a parsed config uses, directly (``@`` references, its own sub-components) or
    through other ids."""

    def __init__(self, parser: Any) -> None:
        self.parser = parser
        self._closure: dict[str, frozenset[str]] = {}

    def direct(self, id: str) -> set[str]:
        from monai.bundle import ReferenceResolver

        if id not in self.parser:
            return set()
        found = ReferenceResolver.find_refs_in_config(self.parser[id], id)
        return {r.replace("::", "#") for r in found if r in self.parser}  # MONAI spells the separator "::"

    def uses(self, *ids: str) -> frozenset[str]:
        """Every id that ``ids`` use (not ``ids`` themselves, unless they use each other)."""
        found: set[str] = set()
        todo = [r for id in ids for r in self.direct(id)]
        while todo:
            id = todo.pop()
            if id in found:
                continue
            found.add(id)
            if id in self._closure:
                found |= self._closure[id]
            else:
                todo += self.direct(id)
        if len(ids) == 1:
            self._closure[ids[0]] = frozenset(found)
        return frozenset(found)


def _value(parser: Any, id: str) -> Any:
    return parser.get_parsed_content(id)


def _is_plain(parser: Any, id: str) -> bool:
    """Whether the config value of ``id`` is written out (not a ``$`` expression or an ``@`` reference)."""
    raw = parser[id]
    return not (isinstance(raw, str) and raw.startswith(("$", "@")))


def bundle_problems(parser: Any) -> list[Problem]:
    """Everything that keeps the run of a bundle config from starting.

    Looks only at what the run uses (:data:`mskd.bundle.USED_FROM`), in this order: the run settings
    (:data:`SETTINGS`), the output folders, the components of :data:`mskd.bundle.PREFLIGHT` (each built from the
    config, a checkpoint's metadata checked against the run before its loader is built), the image size every
    network built must take, and every case of the run's datalist, read with the bundle's loading transform
    (:func:`case_problems`), with the checks over the cases (each listed once, the test cases never trained on,
    some organ in the training labels).

    Args:
        parser: a ``monai.bundle.ConfigParser`` of a bundle stack (:meth:`mskd.bundle.Bundle.parser`); the
            components it builds stay in its cache.

    Returns:
        the problems (empty when the run can start).
    """
    from mskd import bundle

    if not parser.ref_resolver.items:
        parser.parse()
    refs = _References(parser)
    used = refs.uses(*[id for id in bundle.USED_FROM if id in parser])
    failed: set[str] = set()
    problems = _setting_problems(parser, used, failed) + _output_problems(
        {key: _value(parser, key) for key in bundle.OUTPUT_DIRS if key in used}
    )
    built: dict[str, Any] = {}
    reported: dict[str, str] = {}
    checkpoints = {c.loader: c for c in bundle.CHECKPOINTS}
    for step in bundle.PREFLIGHT:
        if step.id not in used:
            continue
        depends = refs.uses(step.id)
        blame = next((r for r in step.reported_as if r == step.id or r in depends), None)
        if blame is None or step.id in failed or depends & failed:
            continue
        found = _checkpoint_problems(parser, checkpoints[step.id], failed) if step.id in checkpoints else []
        if not found:
            try:
                built[step.id] = _value(parser, step.id)
                reported[step.id] = blame
                continue
            except Exception as e:  # a constructor's own check (or a bad value in its arguments)
                context = None if step.context is None else _with_values(parser, step.context)
                found = [_component_problem(blame, e, context)]
        problems += found
        failed.add(step.id)
        if step.exclusive:
            failed.add(blame)
    problems += _size_problems(parser, built, failed)
    problems += _data_problems(parser, used, built, reported, failed)
    return problems


def _with_values(parser: Any, text: str) -> str:
    """``text`` with each ``{config id}`` replaced by the id's value."""

    def value(match: re.Match) -> str:
        try:
            return str(_value(parser, match.group(1)))
        except Exception:  # a value that does not evaluate: as written
            return str(parser[match.group(1)]) if match.group(1) in parser else match.group(0)

    return re.sub(r"\{([\w#]+)\}", value, text)


def _component_problem(config_id: str, error: BaseException, context: str | None = None) -> Problem:
    message = describe(error, lines=3, limit=_LIMIT).removeprefix(f"{config_id}: ")  # some name the key themselves
    return Problem(config_id, message if context is None else f"{context}: {message}")


def _setting_problems(parser: Any, used: frozenset[str], failed: set[str]) -> list[Problem]:
    """Each run setting the run uses has the type and range :data:`SETTINGS` gives it (a command line passes ``two``
    as easily as ``2``; the engine would fail on it only at its first epoch, after the run was opened)."""
    from mskd.flags import as_flag

    problems = []
    for key, (kind, bound) in SETTINGS.items():
        if key not in used or not _is_plain(parser, key):
            continue
        value = _value(parser, key)
        number = not isinstance(value, bool) and isinstance(value, Real) and math.isfinite(value)
        if kind == "flag":
            try:
                as_flag(value, key)
                continue
            except ValueError:
                message = f"must be true or false, got {value!r}"
        elif kind == "int":
            if not isinstance(value, bool) and isinstance(value, int) and value >= bound:
                continue
            message = f"must be an integer >= {bound}, got {value!r}"
        elif kind == "number":
            if number and value > bound:
                continue
            message = f"must be a finite number > {bound:g}, got {value!r}"
        elif kind == "gib":
            if number and int(value * 2**30) >= 1:
                continue
            message = f"must be a number > 0 (GiB), got {value!r}"
        else:
            if value in bound:
                continue
            message = f"must be one of {list(bound)}, got {value!r}"
        problems.append(Problem(key, message))
        failed.add(key)
    return problems


def _output_problems(folders: Mapping[str, Any]) -> list[Problem]:
    """Each output folder is a folder (or can be created) and is writable, checked before anything is written."""
    problems = []
    for key, folder in folders.items():
        if folder is None:
            continue
        path = Path(folder)
        if path.exists() and not path.is_dir():
            problems.append(Problem(key, f"{path} is a file, not a folder; give a folder (it is created if missing)"))
            continue
        existing = next(p for p in (path, *path.parents) if p.exists())
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            what = "is not writable" if existing == path else f"cannot be created: {existing} is not writable"
            problems.append(Problem(key, f"{path} {what}; choose another folder or fix its permissions"))
    return problems


# --- checkpoints and networks -------------------------------------------------------------------------------------


def _checkpoint_problems(parser: Any, checkpoint: Any, failed: set[str]) -> list[Problem]:
    """The checkpoint of ``checkpoint.path`` reads and was trained as this run would use it (network and kwargs,
    classes, image size, run): :func:`mskd.networks.checkpoint.metadata_mismatches`. Whether its weights fit is the
    loader's to say (:func:`mskd.networks.load_weights`)."""
    from mskd.networks.checkpoint import metadata_mismatches, read_checkpoint

    role = checkpoint.role
    if checkpoint.role_id is not None and checkpoint.role_id in parser:
        role = _value(parser, checkpoint.role_id)
    path = _value(parser, checkpoint.path)
    try:
        metadata = read_checkpoint(path, role, mmap=True)[1]
    except (OSError, ValueError) as e:  # missing, unreadable, pickled objects: the messages name file and fix
        return [Problem(checkpoint.path, error_line(e, _LIMIT))]
    run_name = checkpoint.run_name
    expected = {
        "network": _value(parser, role),
        "network_kwargs": _value(parser, f"{role}_kwargs"),
        "num_classes": _value(parser, "num_classes"),
        "image_size": _value(parser, "image_size") if "image_size" in parser else None,
        "run_name": _value(parser, run_name) if run_name is not None and run_name in parser else None,
    }
    expected = {key: None if key in failed else value for key, value in expected.items()}
    return [
        Problem(m.config_key, m.message if m.fix is None else f"{m.message}; {m.fix}", value=m.value)
        for m in metadata_mismatches(path, role, metadata, expected)
    ]


def _size_problems(parser: Any, built: Mapping[str, Any], failed: set[str]) -> list[Problem]:
    """Every network built takes ``image_size`` x ``image_size`` slices and returns logits of that size."""
    from mskd import bundle

    if "image_size" in failed or "image_size" not in parser:
        return []
    size, problems, seen = _value(parser, "image_size"), [], set()
    for id, role in bundle.NETWORKS.items():
        network = built.get(id)
        if network is None or any(network is other for other in seen):
            continue
        seen.add(network)
        problems += _network_size_problems(role, _value(parser, role), network, size)
    return problems


def _network_size_problems(role: str, name: str, network: Any, image_size: int) -> list[Problem]:
    """``network`` takes ``image_size`` x ``image_size`` slices and returns logits of that size (one forward of one
    slice, in eval mode, without gradients); otherwise the nearest multiples of 8 that work."""
    import torch

    def output_size(size: int) -> tuple[int, ...] | None:
        device = next((p.device for p in network.parameters()), torch.device("cpu"))
        with torch.no_grad():
            try:
                return tuple(network(torch.zeros(1, 1, size, size, device=device)).shape[2:])
            except Exception:  # any shape error of any layer: the size does not fit
                return None

    training = network.training
    network.eval()
    try:
        got = output_size(image_size)
        if got == (image_size, image_size):
            return []
        lower = next(
            (s for s in range(image_size // 8 * 8, 7, -8) if s != image_size and output_size(s) == (s, s)), None
        )
        upper = next((s for s in range(image_size // 8 * 8 + 8, image_size + 65, 8) if output_size(s) == (s, s)), None)
    finally:
        network.train(training)
    nearest = " or ".join(str(s) for s in (lower, upper) if s is not None) or "none within 64"
    what = "fails on" if got is None else f"returns {got[0]}x{got[1]} logits for"
    size = f"{image_size}x{image_size}"
    return [Problem("image_size", f"the {role} network {name} {what} {size} slices; nearest sizes it takes: {nearest}")]


# --- data: every case, read as the run reads it --------------------------------------------------------------------


def _data_problems(
    parser: Any, used: frozenset[str], built: Mapping[str, Any], reported: Mapping[str, str], failed: set[str]
) -> list[Problem]:
    """The cases of the run's datalist (:data:`mskd.bundle.DATALISTS`), read with its loading transform."""
    from mskd import bundle

    datalist = next((id for id in bundle.DATALISTS if id in used), None)
    if datalist is None or datalist not in built or {"data_format", "task", "num_classes"} & failed:
        return []  # no datalist, or it failed (reported), or the task's labels are unknown (reported)
    loaders = sorted(id for id in used if isinstance(parser[id], dict) and parser[id].get("_target_") == bundle.LOADER)
    if not loaders:
        return []
    try:
        loader = _value(parser, loaders[0])
    except Exception as e:
        return [_component_problem("data_format", e)]
    cases, config_id = built[datalist], reported[datalist]
    labelled = bool(cases) and all("label" in case for case in cases)
    split = ("training" if datalist == bundle.DATALISTS[0] else "test") if labelled else None
    window = built.get("hu_window") if "hu_window" in used else None
    root = _value(parser, config_id)
    return case_problems(cases, loader, _value(parser, "num_classes"), window, config_id, root, split)


def case_problems(
    cases: Sequence[Mapping[str, Any]],
    loader: Any,
    num_classes: int,
    window: Sequence[float] | None = None,
    config_id: str = "dataset_dir",
    root: str | os.PathLike | None = None,
    split: str | None = "training",
) -> list[Problem]:
    """Everything wrong with ``cases`` read as the run reads them (every case is read once, in threads).

    Each case is loaded with ``loader`` (the bundle's :class:`mskd.data.LoadCased`: reader, channel axis, RAS
    reorientation, BTCV label remap), one file at a time so that a file that does not read is named. Then: images
    are one 3D volume with no NaN or infinite voxel, on a physical grid, with intensities in the protocol's
    ``window`` (HU with air below :data:`AIR_HU` for a window below 0; ``[0, 1]`` for ``[0, 1]``); each label has its
    image's shape and affine (within :data:`SPACING_TOLERANCE_MM` and :data:`DIRECTION_TOLERANCE`) and only the
    task's label values; no case is listed twice. Training cases also share no file with the folder's test cases,
    and some label holds an organ (a class never seen is warned about).

    Args:
        cases: MONAI-style dicts (``image``, and ``label`` when labelled).
        loader: the loading transform (a ``Compose`` of one ``LoadImaged`` per key, then the rest).
        num_classes: the task's class count (background included); labels must lie in ``0..num_classes - 1``.
        window: the protocol's intensity window (``hu_window``); ``None`` skips the intensity check.
        config_id: the config id that names the data (``dataset_dir``, or ``input`` for inference).
        root: the dataset folder (or input), for the messages about the whole list.
        split: ``"training"`` or ``"test"`` for a dataset's cases, ``None`` for inputs without labels.

    Returns:
        the problems (empty when the data are usable).
    """
    highest = num_classes - 1
    labels = f"the task's labels 0..{highest} (num_classes {num_classes})"
    data_format = getattr(loader, "data_format", None)
    # numpy parses .npy headers with ast.literal_eval, which CPython 3.11 cannot run in several threads at once
    threads = data_format != "synapse_npz"
    reports = _map_cases(_case_problems, cases, threads, loader, config_id, highest, labels, window, data_format)
    problems = [p for found, _ in reports for p in found]
    problems += _repeated_case_problems(config_id, root, split, cases)
    if split == "training" and root is not None and not problems:
        problems += _leak_problems(config_id, Path(root), data_format, cases)
        present = [seen for _, seen in reports if seen is not None]
        if len(present) == len(cases):
            problems += _label_coverage_problems(config_id, Path(root), present, highest)
    return list(dict.fromkeys(problems))


def _map_cases(function, cases: Sequence[Any], threads: bool, *args: Any) -> list[Any]:
    """``[function(case, *args) for case in cases]``, in threads when ``threads`` (reading and decompressing release
    the GIL)."""
    if len(cases) <= 1 or not threads:
        return [function(case, *args) for case in cases]
    with ThreadPoolExecutor(max_workers=min(8, len(cases), os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda case: function(case, *args), cases))


def _name(path: str | Sequence[str]) -> str:
    """A file for a message (a case of TransUNet slices is named by its first slice and the count)."""
    if isinstance(path, str):
        return path
    return f"{path[0]} (+{len(path) - 1} more slices)" if len(path) > 1 else path[0]


def _load(case: Mapping[str, Any], loader: Any, config_id: str) -> tuple[dict | None, list[Problem]]:
    """``loader(case)``, one reader at a time: ``(loaded case, [])``, or ``(None, [a problem per file that does not
    read])`` (a file shared by two keys, as TransUNet's, is reported once)."""
    from monai.transforms import LoadImaged

    data, problems, broken = dict(case), [], []
    steps = list(getattr(loader, "transforms", [loader]))
    for step in [s for s in steps if isinstance(s, LoadImaged)]:
        files = [case.get(key) for key in step.keys if case.get(key) is not None]
        if not files:
            continue
        if any(f in broken for f in files):
            continue
        try:
            data = step(data)
        except Exception as e:  # any reader's error: the file cannot be used
            broken += files
            problems.append(
                Problem(config_id, f"cannot be read ({type(e).__name__}: {error_line(e)})", _name(files[0]))
            )
    if problems:
        return None, problems
    try:
        for step in [s for s in steps if not isinstance(s, LoadImaged)]:
            data = step(data)
    except Exception as e:  # reorientation or label remap of a volume that read
        return None, [Problem(config_id, f"cannot be loaded ({describe(e, 3, _LIMIT)})", _name(case["image"]))]
    return data, []


def _case_problems(
    case: Mapping[str, Any],
    loader: Any,
    config_id: str,
    highest: int,
    labels: str,
    window: Sequence[float] | None,
    data_format: str | None,
) -> tuple[list[Problem], set[int] | None]:
    """One case's problems, and the label values present (``None`` when it has no label or it cannot be read)."""
    image_name = _name(case["image"])
    if data_format == "dicom" and os.path.isdir(case["image"]):
        found = _modality_problems(config_id, case["image"])
        if found:
            return found, None
    data, problems = _load(case, loader, config_id)
    if data is None:
        return problems, None
    image = data["image"]
    problems += _volume_problems(config_id, image_name, image, "image")
    problems += _grid_problems(config_id, image_name, _affine(image))
    problems += _intensity_problems(config_id, image_name, _array(image), window)
    if "label" not in data:
        return problems, None
    label, label_name = data["label"], _name(case["label"])
    problems += _volume_problems(config_id, label_name, label, "label", finite=False)  # non-finite: next line
    array = _array(label)
    value_problems = _label_value_problems(config_id, label_name, array, highest, labels)
    problems += value_problems
    present = None if value_problems else {int(v) for v in np.unique(array)}
    if tuple(image.shape[1:]) != tuple(label.shape[1:]):
        problems.append(
            Problem(
                config_id,
                f"label shape {tuple(label.shape[1:])} differs from image shape {tuple(image.shape[1:])} of "
                f"{image_name}",
                label_name,
            )
        )
    elif difference := _affine_difference(_affine(image), _affine(label)):
        problems.append(Problem(config_id, f"affine differs from its image's {image_name} ({difference})", label_name))
    return problems, present


def _array(tensor: Any) -> np.ndarray:
    return np.asarray(tensor.detach().cpu() if hasattr(tensor, "detach") else tensor)


def _affine(tensor: Any) -> np.ndarray | None:
    affine = getattr(tensor, "affine", None)
    return None if affine is None else np.asarray(_array(affine), dtype=float)


def _volume_problems(config_id: str, name: str, volume: Any, what: str, finite: bool = True) -> list[Problem]:
    """A loaded volume (channel first) must be one 3D volume and (when ``finite``) hold no NaN or infinite voxel."""
    problems = []
    shape = tuple(volume.shape)
    if shape[0] != 1:
        problems.append(
            Problem(
                config_id,
                f"{what} holds {shape[0]} volumes (channel-first shape {shape} once loaded); one 3D volume is expected",
                name,
            )
        )
    elif len(shape) != 4:
        problems.append(
            Problem(config_id, f"{what} is {len(shape) - 1}D, shape {shape[1:]}; a 3D volume is expected", name)
        )
    if finite and volume.is_floating_point():
        import torch

        for count, kind in ((int(torch.isnan(volume).sum()), "NaN"), (int(torch.isinf(volume).sum()), "infinite")):
            if count:
                problems.append(Problem(config_id, f"{count} {kind} voxel(s) in the {what}", name))
    return problems


def _label_value_problems(config_id: str, name: str, label: np.ndarray, highest: int, labels: str) -> list[Problem]:
    if label.dtype.kind in "fc":
        if not np.isfinite(label).all():
            count = int((~np.isfinite(label)).sum())
            return [Problem(config_id, f"{count} NaN or infinite voxel(s) in the label", name)]
        fractional = label != np.round(label)
        if fractional.any():
            values = np.unique(label[fractional]).tolist()
            text = f"non-integer label values {_listed(values)}; a label map holds class ids ({labels})"
            return [Problem(config_id, text, name)]
    if label.size and (label.min() < 0 or label.max() > highest):
        values = np.unique(label[(label < 0) | (label > highest)])
        return [Problem(config_id, f"label values {_listed([int(v) for v in values])} outside {labels}", name)]
    return []


def _affine_difference(image: np.ndarray | None, label: np.ndarray | None) -> str:
    """How two 4x4 affines differ beyond the tolerances (spacing, origin, direction); ``""`` when they agree."""
    if image is None or label is None:
        return ""
    image, label = np.asarray(image, dtype=float), np.asarray(label, dtype=float)
    if image.shape != (4, 4) or label.shape != (4, 4):
        return ""
    spacing_i, spacing_l = np.linalg.norm(image[:3, :3], axis=0), np.linalg.norm(label[:3, :3], axis=0)
    parts = []
    if np.abs(spacing_i - spacing_l).max() > SPACING_TOLERANCE_MM:
        parts.append(f"label spacing {np.round(spacing_l, 4).tolist()}, image {np.round(spacing_i, 4).tolist()} mm")
    origin_i, origin_l = np.round(image[:3, 3], 3).tolist(), np.round(label[:3, 3], 3).tolist()
    if np.abs(image[:3, 3] - label[:3, 3]).max() > SPACING_TOLERANCE_MM:
        parts.append(f"label origin {origin_l}, image {origin_i} mm")
    if spacing_i.min() > 0 and spacing_l.min() > 0:
        direction = np.abs(image[:3, :3] / spacing_i - label[:3, :3] / spacing_l).max()
        if direction > DIRECTION_TOLERANCE:
            parts.append(f"direction cosines differ by up to {direction:.3g}")
    return "; ".join(parts)


def _grid_problems(config_id: str, name: str, affine: np.ndarray | None) -> list[Problem]:
    """A loaded volume's affine must give a physical grid: finite, with every voxel spacing > 0 (not singular)."""
    if affine is None or affine.shape != (4, 4):
        return []
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if not np.isfinite(affine).all() or spacing.min() <= 1e-6 or abs(np.linalg.det(affine[:3, :3])) <= 1e-9:
        message = (
            f"the affine is singular or not finite (voxel spacing {np.round(spacing, 4).tolist()} mm), so the volume "
            "has no physical grid; fix the header (qform/sform or DICOM geometry)"
        )
        return [Problem(config_id, message, name)]
    return []


def _intensity_problems(config_id: str, name: str, array: np.ndarray, window: Sequence[float] | None) -> list[Problem]:
    """The intensities must be what the protocol's window expects.

    A window below 0 is in Hounsfield units: every body CT holds air (about -1000 HU) around or inside the body, so a
    volume with no voxel at or below :data:`AIR_HU` is not a CT in HU (an MR, a uint8 export, a rescaled CT) and
    would be segmented silently wrong. The window ``[0, 1]`` (TransUNet's preprocessed files) needs values in it.
    """
    if window is None or not array.size or array.dtype.kind not in "uif":
        return []
    finite = array[np.isfinite(array)] if array.dtype.kind == "f" else array
    if not finite.size:
        return []
    low, high = float(np.min(finite)), float(np.max(finite))
    if window[0] < 0 and low > AIR_HU:
        message = (
            f"intensities span [{low:g}, {high:g}], with no air below {AIR_HU:g} HU: not a CT in Hounsfield units (an "
            "MR or a rescaled export?); the models are trained on HU"
        )
        return [Problem(config_id, message, name)]
    if list(window) == [0.0, 1.0] and (low < -1e-3 or high > 1 + 1e-3):
        message = (
            f"intensities span [{low:g}, {high:g}], outside [0, 1]: this format holds CT already windowed and scaled "
            "to [0, 1] (TransUNet's preprocessing); use data_format msd or btcv for CT in HU"
        )
        return [Problem(config_id, message, name)]
    return []


def _modality_problems(config_id: str, folder: str) -> list[Problem]:
    """A DICOM series must be CT (its Modality tag), the only modality the models have seen."""
    pydicom = require("pydicom", "dicom", "reading DICOM series")

    for file in sorted(Path(folder).iterdir()):
        try:
            header = pydicom.dcmread(file, stop_before_pixels=True)
        except Exception:  # not a DICOM file (a DICOMDIR, a note): the next one
            continue
        modality = str(header.get("Modality", "") or "")
        if modality and modality != "CT":
            return [Problem(config_id, f"DICOM Modality is {modality!r}; the models segment CT only", folder)]
        return []
    return []


def _files_of(case: Mapping[str, Any]) -> tuple[str, ...]:
    image = case["image"]
    return (image,) if isinstance(image, str) else tuple(image)


def _repeated_case_problems(
    config_id: str, root: str | os.PathLike | None, split: str | None, cases: Sequence[Mapping[str, Any]]
) -> list[Problem]:
    """A case listed twice leaks: with ``num_val_cases`` the copy can land in the validation split (best-model choice
    on training data)."""
    problems, first = [], {}
    what = f"'{split}' cases" if split else "inputs"
    for i, case in enumerate(cases):
        for file in _files_of(case):
            resolved = os.path.realpath(file)
            if resolved in first and first[resolved] != i:
                message = (
                    f"{what} {first[resolved]} and {i} are the same image {file}; a case listed twice can be trained "
                    "on and validated on (a leak); list each case once"
                )
                problems.append(Problem(config_id, message, None if root is None else str(root)))
            first.setdefault(resolved, i)
    return problems


def _leak_problems(config_id: str, root: Path, data_format: str | None, cases: Sequence[Mapping[str, Any]]) -> list:
    """A test case among the training cases scores too high: the format's test list must share none of them."""
    from mskd.data.datalist import get_datalist

    try:
        test = get_datalist(data_format, root, "test")
    except (OSError, ValueError, KeyError):  # no test list: nothing to compare
        return []
    training = {os.path.realpath(f) for case in cases for f in _files_of(case)}
    shared = sorted({os.path.realpath(f) for case in test for f in _files_of(case)} & training)
    if not shared:
        return []
    where = root / "dataset.json" if data_format in ("msd", "phantom") else root
    message = (
        f"{len(shared)} 'test' case(s) are also 'training' cases ({_listed(shared)}); test cases must never be "
        "trained on"
    )
    return [Problem(config_id, message, str(where))]


def _label_coverage_problems(config_id: str, root: Path, present: Sequence[set[int]], highest: int) -> list[Problem]:
    """Labels that hold only background cannot train (every Dice is 0 or undefined, and a 0-Dice model would be saved
    as the best); a class present in no training label is warned about (its Dice is never measured)."""
    seen = set().union(*present)
    if not seen - {0}:
        message = (
            f"every label of the {len(present)} 'training' cases is background only (all 0); nothing to learn (are "
            "the label files the images' segmentations?)"
        )
        return [Problem(config_id, message, str(root))]
    missing = sorted(set(range(1, highest + 1)) - seen)
    if missing:
        warnings.warn(
            f"{root}: class(es) {missing} appear in no 'training' label; the model cannot learn them", stacklevel=3
        )
    return []
