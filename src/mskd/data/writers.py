"""Image writers for MONAI's ``SaveImage``/``SaveImaged`` that write each file atomically."""

from __future__ import annotations

import logging
import os
from typing import Any

from monai.data import NibabelWriter

from mskd.io import atomic_path

__all__ = ["AtomicNibabelWriter"]

logger = logging.getLogger(__name__)


class AtomicNibabelWriter(NibabelWriter):
    """MONAI's ``NibabelWriter`` writing through :func:`mskd.io.atomic_path`: a label map appears whole or not at all,
    and a failed write leaves an earlier file of the same name intact.

    Use it from a config as ``SaveImaged(..., writer="mskd.data.AtomicNibabelWriter")``.
    """

    def write(self, filename: str | os.PathLike, verbose: bool = False, **obj_kwargs: Any) -> None:
        """Write ``filename`` (NIfTI, by its extension) atomically; see ``NibabelWriter.write``."""
        with atomic_path(filename) as tmp:
            super().write(tmp, verbose=False, **obj_kwargs)
        if verbose:
            logger.info(f"writing: {filename}")
