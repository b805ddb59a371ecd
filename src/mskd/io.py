"""Files written whole or not at all, and checkpoints read without running foreign code.

Every file mskd writes (checkpoints, predictions, CSVs, exported models, executed configs, figures, phantoms) goes
through :func:`atomic_path`: the writer writes a temporary file in the destination's folder, which is flushed to disk
and renamed onto the destination (``os.replace``, atomic on one filesystem) only when the writer returns. A reader
never sees half a file; a crash or an error mid-write leaves the previous file as it was and no temporary file behind
(only a ``SIGKILL`` or power loss mid-write can leave a hidden ``.tmp-*`` file, never a damaged destination). A write
that fails for want of disk space says so: ``OSError(ENOSPC)`` naming the file and the space left, whatever the writer
raised (``torch.save`` reports a full disk as ``RuntimeError: [enforce fail at inline_container.cc] ... unexpected
pos``).

Every checkpoint mskd reads goes through :func:`load_checkpoint`: ``torch.load(..., weights_only=True)``, which
unpickles tensors, numbers, strings and containers only. A file that needs arbitrary unpickling (a pickled class, a
function) is refused with a message naming it, since unpickling runs code chosen by whoever wrote the file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "TMP_PREFIX",
    "UnsafeCheckpointError",
    "atomic_open",
    "atomic_path",
    "error_line",
    "load_checkpoint",
    "nonfinite_entry",
    "remove_stale_temporaries",
    "save_checkpoint",
]

TMP_PREFIX = ".tmp-"  # temporary files are hidden siblings: .tmp-<pid>-<random>-<name> (the name's extension kept)
STALE_TMP_S = 600  # a temporary untouched this long was left by a killed writer (a live one writes continually)
# how torch.save's C++ writer reports a short write, which is a full disk in practice
_TORCH_SHORT_WRITE = ("inline_container", "unexpected pos", "No space left")


class UnsafeCheckpointError(ValueError):
    """A checkpoint that ``torch.load(weights_only=True)`` refuses: it holds pickled Python objects."""


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _disk_full(error: BaseException) -> bool:
    """Whether a writer's error means the disk is full: ``OSError(ENOSPC)``, or torch's short-write ``RuntimeError``."""
    if isinstance(error, OSError):
        return error.errno == errno.ENOSPC
    return isinstance(error, RuntimeError) and any(marker in str(error) for marker in _TORCH_SHORT_WRITE)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, exclusive: bool = False) -> Iterator[Path]:
    """Write ``path`` atomically: yield a temporary path beside it for the writer, then rename it onto ``path``.

    The temporary file is ``.tmp-<pid>-<random>-<name>`` in ``path``'s folder (created if missing), so it keeps the
    extension that writers such as nibabel choose the format by, and ``os.replace`` stays on one filesystem. When the
    ``with`` block finishes, the file is flushed to disk (``fsync``) and renamed onto ``path``; when it raises, the
    temporary file is removed and ``path`` is left as it was.

    Example::

        with atomic_path("model.pt") as tmp:
            torch.save(state, tmp)

    Args:
        path: the file to write.
        exclusive: create ``path`` only if it does not exist (a hard link, which fails on an existing file): when
            another process created it meanwhile, theirs is kept and this one discarded.

    Yields:
        the temporary path to write instead.

    Raises:
        FileNotFoundError: when the writer returned without creating the temporary file.
        OSError: ``ENOSPC``, "no space left on device writing <path>: <n> MB free in <folder>", when the disk is full
            (the writer's own error is its ``__cause__``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-{path.name}")
    try:
        yield tmp
        _fsync(tmp)
        if exclusive:
            with contextlib.suppress(FileExistsError):  # another process created it first: theirs is kept
                os.link(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException as e:
        if _disk_full(e):
            free_mb = shutil.disk_usage(path.parent).free / 1e6
            raise OSError(
                errno.ENOSPC, f"no space left on device writing {path}: {free_mb:.1f} MB free in {path.parent}"
            ) from e
        raise
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_temporaries(path: str | os.PathLike, older_than_s: float = STALE_TMP_S) -> list[Path]:
    """Remove the temporary files of ``path`` (:func:`atomic_path`'s, and what their writer made beside them, such as
    SQLite's ``-journal``) that a killed writer left: those not modified for ``older_than_s`` seconds.

    Returns:
        the files removed.
    """
    path = Path(path)
    cutoff = time.time() - older_than_s
    removed = []
    for tmp in path.parent.glob(f"{TMP_PREFIX}*-{path.name}*"):
        with contextlib.suppress(FileNotFoundError):  # its live writer may finish (and remove it) meanwhile
            if tmp.stat().st_mtime < cutoff:
                tmp.unlink()
                removed.append(tmp)
    return removed


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """``open(path, mode, **kwargs)`` for writers that take a file object, written through :func:`atomic_path`.

    Args:
        path: the file to write.
        mode: a write mode (``"w"``, ``"wb"``, ...).
        kwargs: passed to ``open`` (``encoding``, ``newline``, ...).

    Yields:
        the open temporary file; it is closed before the rename.

    Raises:
        ValueError: for a mode that does not write a new file.
    """
    if not mode.startswith(("w", "x")):
        raise ValueError(f"atomic_open writes a whole new file; mode must start with 'w' or 'x', got {mode!r}")
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as f:
        yield f


def error_line(error: BaseException, limit: int = 240, lines: int = 1) -> str:
    """An error's message on one line: its first non-empty line (or first ``lines`` of them, joined), whitespace
    collapsed, at most ``limit`` characters (SQLAlchemy's messages go on with the SQL and a link; torch's unpickler
    wraps the reason in paragraphs, and that reason is the line kept); the type name when the message is empty."""
    text = str(error)
    unpickler = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\s*\n|$)", text, flags=re.DOTALL)
    if unpickler is not None:
        text = unpickler.group(1)
    kept = [line for line in text.splitlines() if line.strip()][:lines]
    return " ".join(" ".join(kept).split())[:limit] or type(error).__name__


def load_checkpoint(path: str | os.PathLike, what: str = "checkpoint", mmap: bool = False) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``, with errors that name the file.

    Args:
        path: the checkpoint file.
        what: what the file is ("teacher checkpoint", "resume checkpoint", ...), for messages.
        mmap: map the file instead of reading it (cheap when only a few entries are needed).

    Returns:
        the loaded object (tensors on the CPU).

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        UnsafeCheckpointError: when the file holds pickled Python objects, which are never unpickled.
        ValueError: when the file is not a readable PyTorch checkpoint (truncated, or another format).
    """
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        # torch's message for a refused class or function is several paragraphs; one line names it
        refused = re.search(r"GLOBAL ([\w.]+)", str(e))
        if refused is None:  # not a pickle of PyTorch's kind at all
            raise ValueError(f"{what} {path} is not a readable PyTorch checkpoint: {error_line(e)}") from e
        raise UnsafeCheckpointError(
            f"{what} {path} holds pickled Python objects, not only tensors and plain values (it needs "
            f"{refused.group(1)}); mskd does not unpickle checkpoints, since that runs code chosen by whoever wrote "
            "the file. Save weights with torch.save(model.state_dict(), path)"
        ) from e
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise ValueError(f"{what} {path} is not a readable PyTorch checkpoint: {error_line(e)}") from e


def nonfinite_entry(state: Any, prefix: str = "") -> str | None:
    """The first floating-point tensor holding NaN or Inf in a (nested) state dict, as ``"key/sub.key"``, or ``None``.

    Args:
        state: a tensor, or dicts, lists and tuples of them (other values are ignored).
        prefix: the path of ``state`` itself.
    """
    import torch

    if isinstance(state, torch.Tensor):
        if (state.is_floating_point() or state.is_complex()) and not bool(torch.isfinite(state).all()):
            return prefix or "<tensor>"
        return None
    if isinstance(state, dict):
        items: Any = state.items()
    elif isinstance(state, (list, tuple)):
        items = enumerate(state)
    else:
        return None
    for key, value in items:
        found = nonfinite_entry(value, f"{prefix}/{key}" if prefix else str(key))
        if found is not None:
            return found
    return None


def save_checkpoint(state: dict[str, Any] | torch.Tensor, path: str | os.PathLike, what: str = "checkpoint") -> Path:
    """``torch.save(state, path)`` written atomically, refused when a floating-point tensor holds NaN or Inf.

    Args:
        state: what to save (state dicts: tensors and plain values).
        path: the file to write (its folder is created).
        what: what the file is, for messages.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        FloatingPointError: when a tensor holds NaN or Inf (nothing is written; the previous file is kept).
        OSError: ``ENOSPC`` when the disk is full (:func:`atomic_path`; the previous file is kept).
    """
    import torch

    path = Path(path)
    bad = nonfinite_entry(state)
    if bad is not None:
        raise FloatingPointError(
            f"refusing to save {what} {path}: '{bad}' holds NaN or Inf (the training diverged; the previous file is "
            "kept). Lower the learning rate, check the data, or set nonfinite_loss to 'skip'"
        )
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path
