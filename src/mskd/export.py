"""Export a trained network to ONNX or TorchScript, and check that the file computes what the network computes.

ONNX goes through MONAI's ``convert_to_onnx`` with PyTorch's TorchScript-based exporter (``dynamo=False``): it
exports every registered network (the ``torch.export``-based default of PyTorch >= 2.9 needs ``onnxscript`` and
fails on ERFNet), in about a second each. The graph has one input ``image`` (``B, C, H, W``) and one output ``logits``
(``B, num_classes, H, W``); the batch axis is dynamic, ``H`` and ``W`` are fixed to ``image_size`` (TransUNet's
position embeddings and SwinUNETR's windows are sized at trace time, so a dynamic ``H, W`` would fail at run time for
them; the bundle infers slice by slice at a fixed ``image_size`` anyway).

TorchScript goes through MONAI's ``convert_to_torchscript`` with ``torch.jit.script``, the converter that the bundle's
``python -m monai.bundle ckpt_export`` uses: the two give the same program (``ckpt_export`` also stores the bundle's
configs and metadata in the file).

``onnx`` and ``onnxruntime`` are the optional extra ``mskd[onnx]``, imported on first use.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.utils import ensure_tuple, look_up_option
from torch import nn

from mskd.extras import require
from mskd.io import atomic_path

__all__ = [
    "EXPORT_FORMATS",
    "INPUT_NAME",
    "ONNX_TOLERANCE",
    "OUTPUT_NAME",
    "TORCHSCRIPT_TOLERANCE",
    "bundle_export",
    "check_onnx_parity",
    "check_torchscript_parity",
    "export_checkpoint",
    "export_onnx",
]

INPUT_NAME, OUTPUT_NAME = "image", "logits"
EXPORT_FORMATS = ("onnx", "torchscript")
ONNX_TOLERANCE = 1e-4  # max |eager - onnxruntime| on logits that export_checkpoint accepts
TORCHSCRIPT_TOLERANCE = 1e-5  # max |eager - torch.jit.load(...)| on logits that export_checkpoint accepts
_SUFFIX = {"onnx": ".onnx", "torchscript": ".ts"}
_JIT_DEPRECATED = r"`torch\.jit\.\w+` is deprecated"  # TorchScript is deprecated in PyTorch, but MONAI bundles ship it
# the settings of a plain state dict that export_checkpoint is not given (a self-describing checkpoint holds its own)
_PLAIN_DEFAULTS = {"network": None, "network_kwargs": {}, "in_channels": 1, "num_classes": 9, "image_size": 224}
_CLI_FLAGS = {"student": "--student", "image_size": "--image-size"}  # the flags of `mskd export` that default to it


def _check_sizes(image_size: int, in_channels: int) -> None:
    if image_size < 1 or in_channels < 1:
        raise ValueError(f"image_size and in_channels must be >= 1, got {image_size}, {in_channels}")


def _device(network: nn.Module) -> torch.device:
    return next(network.parameters(), torch.empty(0)).device


def _random_image(batch: int, in_channels: int, image_size: int, seed: int) -> torch.Tensor:
    """A reproducible ``B, C, H, W`` input in [0, 1) (the bundle's intensity range) that leaves the global RNG alone."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, in_channels, image_size, image_size, generator=generator)


def _eager(network: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """Logits of ``network`` in eval mode on CPU memory; the network's train/eval mode is restored."""
    was_training = network.training
    network.eval()
    try:
        with torch.inference_mode():
            return network(image.to(_device(network))).float().cpu()
    finally:
        network.train(was_training)


def export_onnx(
    network: nn.Module,
    path: str | os.PathLike,
    image_size: int = 224,
    in_channels: int = 1,
    opset: int | None = None,
    dynamic_batch: bool = True,
) -> Path:
    """Export ``network`` in eval mode to an ONNX file, written atomically and checked with ``onnx.checker``.

    The graph has input ``image`` (``B, in_channels, image_size, image_size``) and output ``logits``
    (``B, num_classes, image_size, image_size``); ``B`` is dynamic when ``dynamic_batch`` (the network is traced at
    ``B = 2``, so a batch-1 special case cannot be baked in), ``H`` and ``W`` are fixed.

    Args:
        network: the network (any device; it is left in the train/eval mode it was in).
        path: the ``.onnx`` file to write; its folder is created. Written under a temporary name in the same folder,
            then renamed, so a reader never sees a half-written file.
        image_size: ``H = W`` of the input (must suit the network, e.g. a multiple of 32 for SwinUNETR).
        in_channels: channels of the input (1 for CT).
        opset: ONNX opset; ``None`` is the exporter's default (20 with PyTorch 2.13).
        dynamic_batch: whether the batch axis is dynamic; otherwise it is fixed to 1.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ImportError: when ``onnx`` is not installed (``pip install 'mskd[onnx]'``).
        ValueError: for non-positive sizes.
    """
    onnx = require("onnx", "onnx", "ONNX export")
    from monai.networks.utils import convert_to_onnx

    _check_sizes(image_size, in_channels)
    path = Path(path)
    example = _random_image(2 if dynamic_batch else 1, in_channels, image_size, seed=0).to(_device(network))
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    logits_shape = (example.shape[0], *_eager(network, example[:1]).shape[1:])
    was_training = network.training
    try:
        with atomic_path(path) as tmp:
            with warnings.catch_warnings():
                # the exporter we choose on purpose; shape-dependent Python branches are fine at a fixed H, W, and batch
                # dependence is what the parity checks at other batch sizes catch
                warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export")
                warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx\.")
                warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
                # InstanceNorm without running statistics (MONAI's UNets) normalises by the input's statistics in eval
                # mode too, which is what the exporter warns that it does
                warnings.filterwarnings("ignore", message="ONNX export mode is set to TrainingMode.EVAL, but operator")
                warnings.filterwarnings("ignore", message="Constant folding - Only steps=1 can be constant folded")
                model = convert_to_onnx(
                    network,
                    inputs=[example],
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    opset_version=opset,
                    dynamic_axes=axes,
                    filename=str(tmp),
                    use_trace=True,
                    dynamo=False,
                )
            # the exporter's shape inference can declare wrong symbolic sizes (FlexibleUNet's logits came out as
            # [batch, 9, batch, ?]); declare what the network gives
            declared = model.graph.output[0].type.tensor_type.shape
            declared.ClearField("dim")
            for size in logits_shape:
                declared.dim.add().dim_value = size
            if dynamic_batch:
                declared.dim[0].dim_param = "batch"
            onnx.save(model, str(tmp))
            onnx.checker.check_model(str(tmp))
    finally:
        network.train(was_training)
    return path


def check_onnx_parity(
    network: nn.Module, onnx_path: str | os.PathLike, image_size: int, batch: int | Sequence[int] = 2, seed: int = 0
) -> float:
    """Max ``|eager - onnxruntime|`` over the logits of random ``batch, C, image_size, image_size`` inputs.

    onnxruntime runs on ``CPUExecutionProvider``; ``C`` is read from the ONNX input.

    Args:
        network: the network that was exported (run in eval mode; its mode is restored).
        onnx_path: the exported file.
        image_size: ``H = W`` of the input (the one the file was exported at).
        batch: a batch size, or several (one input each, one onnxruntime session for all).
        seed: seed of the first input (the next ones use ``seed + 1``, ...).

    Returns:
        the largest absolute difference (0 for identical logits).

    Raises:
        ImportError: when ``onnxruntime`` is not installed (``pip install 'mskd[onnx]'``).
        FileNotFoundError: when ``onnx_path`` does not exist.
        ValueError: when the two outputs differ in shape.
    """
    ort = require("onnxruntime", "onnx", "ONNX export")
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX file not found: {onnx_path} (write it with export_onnx or `mskd export`)")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    in_channels = session.get_inputs()[0].shape[1]

    def run(image: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: image.numpy()})[0])

    return _max_abs_diff(network, run, onnx_path, in_channels, image_size, batch, seed)


def check_torchscript_parity(
    network: nn.Module,
    ts_path: str | os.PathLike,
    image_size: int,
    batch: int | Sequence[int] = 2,
    seed: int = 0,
    in_channels: int = 1,
) -> float:
    """Max ``|eager - torch.jit.load(ts_path)|`` over the logits of random inputs, both on CPU.

    Arguments as :func:`check_onnx_parity`, with ``in_channels`` of the input.

    Raises:
        FileNotFoundError: when ``ts_path`` does not exist.
        ValueError: when the two outputs differ in shape.
    """
    ts_path = Path(ts_path)
    if not ts_path.is_file():
        raise FileNotFoundError(f"TorchScript file not found: {ts_path}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_JIT_DEPRECATED, category=DeprecationWarning)
        scripted = torch.jit.load(str(ts_path), map_location="cpu").eval()

    def run(image: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return scripted(image)

    return _max_abs_diff(network, run, ts_path, in_channels, image_size, batch, seed)


def _max_abs_diff(
    network: nn.Module,
    run: Callable[[torch.Tensor], torch.Tensor],
    source: Path,
    in_channels: int,
    image_size: int,
    batch: int | Sequence[int],
    seed: int,
) -> float:
    """Max ``|network(x) - run(x)|`` over one random input per batch size; NaN if either gives NaN."""
    diffs = []
    for i, size in enumerate(ensure_tuple(batch)):
        image = _random_image(size, in_channels, image_size, seed + i)
        expected, actual = _eager(network, image), run(image)
        if actual.shape != expected.shape:
            raise ValueError(
                f"{source} gives logits of shape {tuple(actual.shape)}, the network {tuple(expected.shape)}"
            )
        diffs.append(float((actual.float() - expected).abs().max()))
    return max(diffs, key=lambda d: (math.isnan(d), d))


def _export_torchscript(network: nn.Module, path: Path, name: str) -> Path:
    """Script ``network`` with MONAI's ``convert_to_torchscript`` (as ``ckpt_export`` does), written atomically."""
    from monai.networks.utils import convert_to_torchscript

    with atomic_path(path) as tmp:
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=_JIT_DEPRECATED, category=DeprecationWarning)
                convert_to_torchscript(network, filename_or_obj=str(tmp))
        except RuntimeError as e:  # TorchScript's compiler errors
            raise RuntimeError(
                f"torch.jit.script cannot compile {name}; export it with format='onnx' (`mskd export --format onnx`) "
                f"instead: {e}"
            ) from e
    return path


def export_checkpoint(
    network_name: str | None,
    checkpoint_path: str | os.PathLike,
    out_path: str | os.PathLike,
    format: str = "onnx",
    num_classes: int | None = None,
    in_channels: int | None = None,
    image_size: int | None = None,
    network_kwargs: dict[str, Any] | None = None,
    fallback: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build a network, load a checkpoint into it, export it and check the export against it.

    A checkpoint that describes itself (the bundles save them so) gives every setting left ``None`` (its network,
    constructor arguments, channels, classes and image size); a setting given must be the checkpoint's, or the export
    is refused. For a plain state dict the settings left ``None`` come from ``fallback``, else 1 channel, 9 classes
    and 224, with a warning that its image size cannot be checked.

    The check runs the network and the exported file on the same random inputs (batch 1 and batch 3, so the dynamic
    batch axis of ONNX is exercised at sizes other than the traced one) and requires
    ``max |eager - export| <= ONNX_TOLERANCE`` (1e-4, onnxruntime on CPU) or ``TORCHSCRIPT_TOLERANCE`` (1e-5,
    ``torch.jit.load``). ``out_path`` appears only once the check has passed.

    Args:
        network_name: a name from ``mskd.networks.list_networks()`` (e.g. ``"tiny_unet"``, ``"enet"``).
        checkpoint_path: a checkpoint saved by the bundles, or a state dict (plain or under ``"model"``).
        out_path: the file to write (``.onnx`` / ``.ts`` by convention); its folder is created.
        format: ``"onnx"`` or ``"torchscript"``.
        num_classes: output channels, background included (9 for Synapse).
        in_channels: input channels (1 for CT).
        image_size: ``H = W`` of the input; fixed in the ONNX graph.
        network_kwargs: constructor arguments of the network, as the bundle's ``student_kwargs``.
        fallback: settings for a plain state dict (keys ``network``, ``network_kwargs``, ``in_channels``,
            ``num_classes``, ``image_size``; ``mskd export`` passes the bundle's).

    Returns:
        ``{"network", "format", "path", "image_size", "max_abs_diff", "tolerance", "size_bytes"}``.

    Raises:
        ValueError: for an unknown format or network name (the message lists the choices), a setting that is not the
            checkpoint's (the line names the flag to change), a plain state dict without a network name, or a
            checkpoint that does not fit the network.
        FileNotFoundError: when ``checkpoint_path`` does not exist.
        ImportError: for ONNX without ``onnx``/``onnxruntime`` (``pip install 'mskd[onnx]'``).
        RuntimeError: when the export differs from the network by more than the tolerance (nothing is written), or
            ``torch.jit.script`` cannot compile the network.
    """
    from mskd.networks import get_network, load_weights, metadata_mismatch, read_checkpoint

    fmt = look_up_option(format, EXPORT_FORMATS)
    checkpoint_path, out_path = Path(checkpoint_path), Path(out_path)
    if not checkpoint_path.is_file():
        raise FileNotFoundError(
            f"checkpoint not found: {checkpoint_path}; pass the .pt file the bundle wrote (--ckpt-path), "
            "e.g. <bundle>/models/model.pt after distillation"
        )
    metadata = read_checkpoint(checkpoint_path, "student", mmap=True)[1]
    settings = dict(metadata) if metadata is not None else {**_PLAIN_DEFAULTS, **(fallback or {})}
    given = {
        "network": network_name,
        "network_kwargs": network_kwargs,
        "in_channels": in_channels,
        "num_classes": num_classes,
        "image_size": image_size,
    }
    settings.update({key: value for key, value in given.items() if value is not None})
    checked = {key: settings[key] for key in ("network", "network_kwargs", "num_classes", "image_size")}
    problems = metadata_mismatch(checkpoint_path, "student", metadata, checked, _CLI_FLAGS)
    if problems:
        raise ValueError("; ".join(problems))
    network_name, image_size, in_channels = settings["network"], settings["image_size"], settings["in_channels"]
    if network_name is None:
        raise ValueError(
            f"checkpoint {checkpoint_path} does not describe itself (a plain state dict): name its network (--student)"
        )
    _check_sizes(image_size, in_channels)
    if fmt == "onnx":  # fail before building the network
        require("onnx", "onnx", "ONNX export")
        require("onnxruntime", "onnx", "ONNX export")
    network = get_network(network_name, in_channels, settings["num_classes"], **settings["network_kwargs"])
    load_weights(network, checkpoint_path, role=network_name).eval()

    with atomic_path(out_path) as staged:  # appears as out_path only once the parity check has passed
        if fmt == "onnx":
            export_onnx(network, staged, image_size=image_size, in_channels=in_channels)
            tolerance = ONNX_TOLERANCE
            diff = check_onnx_parity(network, staged, image_size, batch=(1, 3))
        else:
            _export_torchscript(network, staged, network_name)
            tolerance = TORCHSCRIPT_TOLERANCE
            diff = check_torchscript_parity(network, staged, image_size, batch=(1, 3), in_channels=in_channels)
        if not diff <= tolerance:  # also catches NaN
            raise RuntimeError(
                f"{fmt} export of {network_name} differs from the network by max |Δ| = {diff:.3g} > {tolerance:g} "
                f"on its logits; {out_path} not written"
            )
    return {
        "network": network_name,
        "format": fmt,
        "path": str(out_path),
        "image_size": image_size,
        "max_abs_diff": diff,
        "tolerance": tolerance,
        "size_bytes": out_path.stat().st_size,
    }


def bundle_export(
    bundle: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    format: str = "onnx",
    student: str | None = None,
    image_size: int | None = None,
) -> dict[str, Any]:
    """:func:`export_checkpoint` for the student a bundle infers with: what ``mskd export`` runs.

    A checkpoint that describes itself gives the student, its constructor arguments and the image size; ``student``
    and ``image_size``, when given, must be its own. For a plain state dict they default to ``student``,
    ``student_kwargs``, ``num_classes`` and ``image_size`` of ``<bundle>/configs/inference.json`` (the network its
    ``network_def`` builds), with the input channels of ``configs/metadata.json``.

    Args:
        bundle: the bundle folder (e.g. ``bundles/mskd_synapse``).
        checkpoint: the student's checkpoint; default the config's ``ckpt_path`` (``<bundle>/models/model.pt``).
        out: the file to write; default ``<bundle>/models/model.onnx`` (``model.ts`` for TorchScript).
        format: ``"onnx"`` or ``"torchscript"``.
        student: a name from ``mskd.networks.list_networks()``; default the checkpoint's.
        image_size: the fixed ``H = W`` of the ONNX input; default the checkpoint's.

    Returns:
        the report of :func:`export_checkpoint`.

    Raises:
        FileNotFoundError: when ``bundle`` is not a bundle or the checkpoint does not exist.
        ValueError: for an unknown format or network, a ``student`` or ``image_size`` that is not the checkpoint's,
            or an inference config without the keys above.
    """
    from mskd.bundle import INFERENCE, Bundle

    fmt = look_up_option(format, EXPORT_FORMATS)
    bundle = Bundle(bundle)
    parser = bundle.parser((INFERENCE,))
    missing = [k for k in ("student", "num_classes", "image_size") if k not in parser]
    if missing:
        raise ValueError(f"{bundle.configs / INFERENCE} does not define {missing}; it must name the network it runs")
    in_channels = int(parser.get("_meta_#network_data_format#inputs#image#num_channels", 1))
    if checkpoint is None:
        checkpoint = parser.get_parsed_content("ckpt_path", default=str(bundle.root / "models" / "model.pt"))
    fallback = {
        "network": parser.get_parsed_content("student"),
        "network_kwargs": dict(parser.get_parsed_content("student_kwargs", default={})),
        "in_channels": in_channels,
        "num_classes": int(parser.get_parsed_content("num_classes")),
        "image_size": int(parser.get_parsed_content("image_size")),
    }
    return export_checkpoint(
        network_name=student,
        checkpoint_path=checkpoint,
        out_path=out if out is not None else bundle.root / "models" / f"model{_SUFFIX[fmt]}",
        format=fmt,
        image_size=image_size,
        fallback=fallback,
    )
