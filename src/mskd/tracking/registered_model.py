"""The best checkpoint of a training as an MLflow model, registered as a new version in the MLflow model registry.

At the end of a training (the trainer's ``COMPLETED``), :class:`RegisteredModelHandler` rebuilds the network from the
run's best checkpoint (self-describing: :func:`mskd.networks.load_network`), logs it to the run with
``mlflow.pytorch.log_model`` (a signature, an input example and the metadata that make it usable on its own: the label
names, the image size, the intensity window, the network, the bundle and the run) and registers it under the bundle's
name, the version tagged with the run's validation Dice. ``mlflow models serve -m models:/<name>/<version>`` then
serves it; ``mlflow.pyfunc.load_model`` and ``mlflow.pytorch.load_model`` load it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from monai.utils import look_up_option, optional_import

from mskd.tracking.artefacts import RunArtefactHandler
from mskd.tracking.run import MlflowRun
from mskd.tracking.store import error_line

if TYPE_CHECKING:
    from ignite.engine import Engine
    from torch import nn
else:
    Engine, _ = optional_import("ignite.engine", name="Engine")

__all__ = [
    "SERIALIZATION_FORMATS",
    "RegisteredModelHandler",
    "model_input_example",
    "model_metadata",
    "model_signature",
]

SERIALIZATION_FORMATS = ("pt2", "pickle")  # mlflow.pytorch's: torch.export graph, or the pickled module


def model_input_example(image_size: int, in_channels: int = 1) -> np.ndarray:
    """The model's input example: one slice ``(1, in_channels, image_size, image_size)``, float32, mid-grey (0.5).

    Inputs are CT slices with the intensity window mapped to ``[0, 1]`` (the bundles' ``ScaleIntensityRanged``), so
    0.5 is the middle of the window.

    Raises:
        ValueError: for a size below 1.
    """
    if image_size < 1 or in_channels < 1:
        raise ValueError(f"image_size and in_channels must be >= 1, got {image_size}, {in_channels}")
    return np.full((1, in_channels, image_size, image_size), 0.5, dtype=np.float32)


def model_signature(image_size: int, num_classes: int, in_channels: int = 1, batch: int = 1) -> Any:
    """The MLflow model signature: float32 ``(batch, in_channels, H, W)`` in, float32 logits ``(batch, C, H, W)`` out.

    Args:
        image_size: ``H = W``.
        num_classes: output channels ``C`` (background included).
        in_channels: input channels (1 for CT).
        batch: slices per call; ``-1`` for any number (a ``pt2`` model, traced on one slice, takes exactly one).

    Returns:
        an ``mlflow.models.ModelSignature`` of tensor specs.
    """
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    float32 = np.dtype(np.float32)
    return ModelSignature(
        inputs=Schema([TensorSpec(float32, (batch, in_channels, image_size, image_size))]),
        outputs=Schema([TensorSpec(float32, (batch, num_classes, image_size, image_size))]),
    )


def model_metadata(
    checkpoint: Mapping[str, Any],
    bundle: str | None = None,
    bundle_version: str | None = None,
    run_name: str | None = None,
    run_id: str | None = None,
    metrics: Mapping[str, float] | None = None,
    batch: int = 1,
) -> dict[str, Any]:
    """What a registered model needs to be used on its own, from its checkpoint's metadata
    (:func:`mskd.networks.checkpoint_metadata`) and the training's bundle and run.

    Args:
        checkpoint: the checkpoint's metadata (``network``, ``network_kwargs``, ``in_channels``, ``num_classes``,
            ``image_size``, and ``organs`` and ``hu_window`` when it has them).
        bundle: the bundle's name, e.g. ``"mskd_synapse"``.
        bundle_version: its version (``metadata.json``'s ``version``).
        run_name: the MLflow run that trained it.
        run_id: that run's id.
        metrics: e.g. ``{"val_mean_dice": 0.81}``.
        batch: slices per call (``-1``: any number).

    Returns:
        ``organs`` (label index, as a string, -> name, ``"0": "background"`` first), ``num_classes``, ``image_size``,
        ``in_channels``, ``hu_window``, ``input`` and ``output`` (shape, dtype and meaning), ``network``,
        ``network_kwargs``, ``bundle``, ``bundle_version``, ``run_name``, ``run_id`` and the metrics.

    Raises:
        ValueError: when the checkpoint names a number of organs other than ``num_classes - 1``.
    """
    num_classes, size = int(checkpoint["num_classes"]), int(checkpoint["image_size"])
    in_channels = int(checkpoint.get("in_channels") or 1)
    organs = checkpoint.get("organs")
    if organs is None:
        organs = [f"class_{i}" for i in range(1, num_classes)]
    if len(organs) != num_classes - 1:
        raise ValueError(
            f"the checkpoint names {len(organs)} organs {list(organs)} for {num_classes} classes; it needs "
            f"num_classes - 1 = {num_classes - 1} (background is class 0)"
        )
    window = checkpoint.get("hu_window")
    window = None if window is None else [float(v) for v in window]
    scaling = (
        f"intensities clipped to [{window[0]:g}, {window[1]:g}] and mapped linearly to [0, 1]"
        if window is not None
        else "intensities in [0, 1]"
    )
    shape_in = [batch, in_channels, size, size]
    return {
        "organs": {"0": "background", **{str(i): str(name) for i, name in enumerate(organs, start=1)}},
        "num_classes": num_classes,
        "image_size": size,
        "in_channels": in_channels,
        "hu_window": window,
        "input": {
            "shape": shape_in,
            "dtype": "float32",
            "range": [0.0, 1.0],
            "description": f"axial CT slices resized to {size}x{size}, {scaling}",
        },
        "output": {
            "shape": [batch, num_classes, size, size],
            "dtype": "float32",
            "description": "logits per class; argmax over dim 1 gives the label (see organs)",
        },
        "network": str(checkpoint["network"]),
        "network_kwargs": dict(checkpoint.get("network_kwargs") or {}),
        "bundle": bundle,
        "bundle_version": bundle_version,
        "run_name": run_name,
        "run_id": run_id,
        **{key: float(value) for key, value in (metrics or {}).items()},
    }


@contextlib.contextmanager
def _fluent_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's fluent API (``mlflow.pytorch.log_model``) on the store ``uri`` for the duration of the block; the
    process's setting (and ``MLFLOW_TRACKING_URI``) restored afterwards."""
    import mlflow
    from mlflow.tracking._tracking_service import utils

    before, env = getattr(utils, "_tracking_uri", None), os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)  # None unsets MLFLOW_TRACKING_URI: put back the user's
        if env is not None:
            os.environ["MLFLOW_TRACKING_URI"] = env


def _requirement(package: str) -> str | None:
    """``package==<installed version>`` (without a local label such as ``+cpu``), or ``None`` when not installed."""
    import importlib.metadata

    try:
        return f"{package}=={importlib.metadata.version(package).split('+')[0]}"
    except importlib.metadata.PackageNotFoundError:
        return None


class RegisteredModelHandler(RunArtefactHandler):
    """At the end of a training, log its best checkpoint as an MLflow model and register it as a new version.

    At the trainer's ``COMPLETED``, the network is rebuilt from the self-describing checkpoint ``ckpt_path``
    (:func:`mskd.networks.load_network`: the weights the validation chose, on the CPU, in eval mode) and logged to the
    run with ``mlflow.pytorch.log_model``, with a signature (float32 ``(1, 1, H, W)`` slices in ``[0, 1]`` in,
    logits ``(1, C, H, W)`` out), an input example (:func:`model_input_example`) and the metadata of
    :func:`model_metadata` (label names, image size, intensity window, network, bundle and run). It is then
    registered under ``name`` as a new version, tagged with the best validation metric (``val_mean_dice``), the run
    and the bundle version.

    The ``pt2`` format (the default) stores the network as a ``torch.export`` graph: loading and serving it need
    torch only (not mskd) and unpickle nothing, but it takes exactly one slice per call (the graph is traced on one).
    ``pickle`` stores the module: any number of slices per call, but mskd must be installed where it is loaded.

    With tracking off (``run.enabled`` false) it does nothing. A store that refuses a call never stops the training
    (:meth:`MlflowRun.read`: a few tries, then skipped with one warning per run); nor does a network that cannot be
    saved as an MLflow model (a warning names the error). Without the checkpoint (``validate#save_best`` false) it
    warns and registers nothing.

    Args:
        ckpt_path: the best checkpoint (the bundle's ``@ckpt_path``, written by ``validate#handlers#best_model``).
        run: the workflow's MLflow run (the bundle's ``@mlflow_run``).
        name: the registered model's name; default: the run's experiment name (the bundle's, e.g. ``mskd_synapse``).
        bundle: the bundle's name, recorded in the metadata.
        bundle_metadata: the bundle's ``metadata.json`` (a path, read when the model is logged; or its content), for
            its ``version``.
        validator: the evaluator whose key metric chose the checkpoint: its ``state.best_metric`` is the version's
            metric. Without it, the highest ``metric_name`` the run logged.
        metric_name: the validation metric the version is tagged with.
        artifact_name: the logged model's name in the run.
        serialization_format: ``"pt2"`` or ``"pickle"`` (see above).
        role: what the network is (``"student"``, ``"teacher"``), in messages.

    Raises:
        ValueError: for an unknown ``serialization_format``, an empty ``metric_name`` or ``artifact_name``, or no
            ``name`` and no experiment name with tracking on.
    """

    EVENTS = {"COMPLETED": "completed"}

    def __init__(
        self,
        ckpt_path: str | os.PathLike,
        run: MlflowRun,
        name: str | None = None,
        bundle: str | None = None,
        bundle_metadata: str | os.PathLike | Mapping[str, Any] | None = None,
        validator: Engine | None = None,
        metric_name: str = "val_mean_dice",
        artifact_name: str = "model",
        serialization_format: str = "pt2",
        role: str = "student",
    ) -> None:
        super().__init__(run)
        self.serialization_format = look_up_option(serialization_format, SERIALIZATION_FORMATS)
        if not metric_name or not artifact_name:
            raise ValueError(
                f"metric_name and artifact_name must be non-empty, got {metric_name!r} and {artifact_name!r}"
            )
        self.name = name or self.mlflow.experiment_name
        if self.mlflow.enabled and not self.name:
            raise ValueError(
                "name the registered model (name=...) or give the MLflow run an experiment_name, got neither"
            )
        self.ckpt_path = Path(ckpt_path)
        self.bundle = bundle
        self.bundle_metadata = bundle_metadata
        self.validator = validator
        self.metric_name = metric_name
        self.artifact_name = artifact_name
        self.role = role
        self.model_info: Any = None
        self.version: Any = None

    def completed(self, engine: Engine | None = None) -> Any:
        """Log and register the model (:meth:`register`)."""
        return self.register()

    def register(self) -> Any:
        """Log the checkpoint's network as an MLflow model and register it as a new version of :attr:`name`.

        Returns:
            the ``ModelVersion``; ``None`` with tracking off, without the checkpoint, or when the store refused.
        """
        if not self.mlflow.enabled:
            return None
        if not self.ckpt_path.is_file():
            warnings.warn(
                f"no best checkpoint {self.ckpt_path} to register as MLflow model {self.name!r} (is validate#save_best "
                "false?); nothing registered",
                stacklevel=2,
            )
            return None
        from mskd.networks import load_network

        network, checkpoint = load_network(self.ckpt_path, self.role)
        network.eval()
        batch = 1 if self.serialization_format == "pt2" else -1
        size, in_channels = int(checkpoint["image_size"]), int(checkpoint.get("in_channels") or 1)
        metric = self.best_metric()
        metrics = {} if metric is None else {self.metric_name: metric}
        run_id = self.mlflow.read(self.mlflow.run_id, default=None)
        if run_id is None:
            return None
        metadata = model_metadata(
            checkpoint,
            bundle=self.bundle,
            bundle_version=self.bundle_version(),
            run_name=self.mlflow.read(self.mlflow.display_name, default=None),
            run_id=run_id,
            metrics=metrics,
            batch=batch,
        )
        signature = model_signature(size, int(checkpoint["num_classes"]), in_channels, batch)
        example = model_input_example(size, in_channels)
        self.model_info = self.mlflow.read(
            lambda: self._log_model(network, run_id, signature, example, metadata), default=None
        )
        if self.model_info is None:
            return None
        tags = {
            **{key: f"{value:.6g}" for key, value in metrics.items()},
            "run_name": metadata["run_name"],
            "run_id": run_id,
            "network": metadata["network"],
            "bundle_version": metadata["bundle_version"],
        }
        best = "" if metric is None else f", best {self.metric_name} {metric:.4f}"
        description = (
            f"{metadata['network']} from run {metadata['run_name']} ({self.ckpt_path.name}){best}; input "
            f"{metadata['input']['description']}, float32 {tuple(metadata['input']['shape'])}; output logits "
            f"{tuple(metadata['output']['shape'])}"
        )
        tags = {key: str(value) for key, value in tags.items() if value is not None}
        self.version = self.mlflow.read(lambda: self._register(run_id, tags, description), default=None)
        return self.version

    def best_metric(self) -> float | None:
        """The validation metric of the checkpoint: the validator's best key metric, else the highest
        ``metric_name`` the run logged (``None`` when there is neither)."""
        state = getattr(self.validator, "state", None)
        best = getattr(state, "best_metric", None)
        if isinstance(best, (int, float)) and math.isfinite(best) and best > -1:  # MONAI starts it at -1
            return float(best)
        if not self.mlflow.enabled:
            return None
        history = self.mlflow.read(
            lambda: self.mlflow.client.get_metric_history(self.mlflow.run_id(), self.metric_name), default=[]
        )
        values = [m.value for m in history if math.isfinite(m.value)]
        return max(values) if values else None

    def bundle_version(self) -> str | None:
        """``version`` of :attr:`bundle_metadata` (``None`` when not given or not found)."""
        meta = self.bundle_metadata
        if meta is None:
            return None
        if not isinstance(meta, Mapping):
            path = Path(meta)
            if not path.is_file():
                return None
            meta = json.loads(path.read_text(encoding="utf-8"))
        version = meta.get("version")
        return None if version is None else str(version)

    def _requirements(self) -> list[str]:
        packages: Sequence[str] = ("torch",) if self.serialization_format == "pt2" else ("torch", "monai", "mskd")
        return [r for r in map(_requirement, packages) if r is not None]

    def _log_model(self, network: nn.Module, run_id: str, signature: Any, example: np.ndarray, metadata: dict) -> Any:
        """``mlflow.pytorch.log_model`` into the run; a network it cannot save warns and gives ``None`` (the store's
        errors go to ``log_or_skip``)."""
        import mlflow.pytorch
        from mlflow.exceptions import MlflowException

        try:
            with _fluent_tracking_uri(str(self.mlflow.tracking_uri)):
                return mlflow.pytorch.log_model(
                    network,
                    name=self.artifact_name,
                    signature=signature,
                    input_example=example,
                    metadata=metadata,
                    pip_requirements=self._requirements(),
                    serialization_format=self.serialization_format,
                    run_id=run_id,  # Model.log's: the run to log to, without making it the active run
                )
        except (MlflowException, OSError):
            raise
        except Exception as e:  # torch.export or pickling: the network, not the store
            warnings.warn(
                f"could not save {metadata['network']} from {self.ckpt_path} as an MLflow model "
                f"({type(e).__name__}: {error_line(e)}); nothing registered (the checkpoint is unaffected); try "
                "serialization_format 'pickle', or register_model false",
                stacklevel=2,
            )
            return None

    def _register(self, run_id: str, tags: dict[str, str], description: str) -> Any:
        """Create the registered model when missing, then a new version of it from the logged model."""
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

        client = self.mlflow.client
        with _fluent_tracking_uri(str(self.mlflow.tracking_uri)):  # the registry finds the logged model there
            try:
                client.create_registered_model(self.name)
            except MlflowException as e:
                if e.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                    raise
            return client.create_model_version(
                self.name,
                source=self.model_info.model_uri,
                run_id=run_id,
                tags=tags,
                description=description,
                await_creation_for=0,
                model_id=self.model_info.model_id,
            )
