"""Optional dependencies: the packages only some inputs or outputs need, imported when used, with the install line.

The core (training, evaluation, inference on NIfTI, MLflow tracking) needs none of them; the extras of
``setup.cfg`` name them: ``dicom`` (DICOM series in), ``h5`` (Synapse ``.npy.h5`` volumes), ``onnx`` (ONNX export).
"""

from __future__ import annotations

from typing import Any

from monai.utils import optional_import

__all__ = ["require"]


def require(module: str, extra: str, purpose: str) -> Any:
    """Import ``module`` (an optional dependency of the extra ``extra``), or say how to install it.

    Args:
        module: the module to import, e.g. ``"pydicom"``.
        extra: the ``mskd`` extra that installs it, e.g. ``"dicom"``.
        purpose: what needs it, for the message, e.g. ``"reading DICOM series"``.

    Raises:
        ImportError: when it is not installed, naming the extra to install.
    """
    mod, found = optional_import(module)
    if not found:
        raise ImportError(f"{module} is not installed; {purpose} needs the optional extra: pip install 'mskd[{extra}]'")
    return mod
