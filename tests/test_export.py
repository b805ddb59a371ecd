"""ONNX / TorchScript export: every registered network exports and matches eager on CPU; checkpoints round-trip."""

import math
import shutil
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from mskd import export
from mskd.export import bundle_export, check_onnx_parity, check_torchscript_parity, export_checkpoint, export_onnx
from mskd.networks import (
    UndescribedCheckpointWarning,
    checkpoint_metadata,
    get_network,
    list_networks,
    network_spatial_dims,
    save_weights,
)

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "mskd_synapse"
# paper-scale TransUNet: benchmarks/export.py; the 3D networks: their export is a volume's (issue 18)
NETWORKS = [name for name in list_networks() if name != "transunet" and network_spatial_dims(name) == 2]
SIZES = {"swin_unetr": 64}  # smallest H = W each network takes: 32 (SwinUNETR: its deepest stage needs 2×2 tokens)
KWARGS = {"swin_unetr": {"feature_size": 12}}  # half width, for time: the same graph


def _dims(value) -> list:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


@pytest.fixture
def checkpoint(tmp_path):
    """A plain tiny_unet state dict (as MONAI's CheckpointSaver saves one), with its network."""
    torch.manual_seed(0)
    network = get_network("tiny_unet").eval()
    path = tmp_path / "model.pt"
    torch.save(network.state_dict(), path)
    return path, network


@pytest.mark.parametrize("name", NETWORKS)
def test_onnx_export_matches_eager_at_any_batch(name, tmp_path):
    torch.manual_seed(0)
    size = SIZES.get(name, 32)
    network = get_network(name, in_channels=1, out_channels=9, **KWARGS.get(name, {})).train()
    path = export_onnx(network, tmp_path / "net.onnx", image_size=size)

    assert path == tmp_path / "net.onnx" and network.training  # mode restored
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.onnx"]  # no temporary file left
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["image"] and [o.name for o in graph.output] == ["logits"]
    assert _dims(graph.input[0]) == ["batch", 1, size, size]
    assert _dims(graph.output[0]) == ["batch", 9, size, size]
    assert check_onnx_parity(network, path, size, batch=(1, 3)) <= 1e-4  # traced at batch 2


def test_onnx_fixed_batch_opset_and_nested_folder(tmp_path):
    network = get_network("tiny_unet", in_channels=2, out_channels=4)
    path = export_onnx(network, tmp_path / "a" / "b.onnx", image_size=32, in_channels=2, opset=17, dynamic_batch=False)
    model = onnx.load(str(path))
    assert _dims(model.graph.input[0]) == [1, 2, 32, 32] and _dims(model.graph.output[0]) == [1, 4, 32, 32]
    assert {o.domain: o.version for o in model.opset_import}[""] == 17
    assert check_onnx_parity(network, path, 32, batch=1) <= 1e-4


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("fmt, suffix, nested", [("onnx", ".onnx", False), ("torchscript", ".ts", True)])
def test_export_checkpoint_round_trip(checkpoint, tmp_path, fmt, suffix, nested):
    path, network = checkpoint
    if nested:  # CheckpointSaver layout: {"model": state_dict, ...}
        torch.save({"model": network.state_dict(), "epoch": 3}, path)
    out = tmp_path / "export" / f"student{suffix}"
    report = export_checkpoint("tiny_unet", path, out, format=fmt, image_size=32)

    assert report["path"] == str(out) and report["format"] == fmt and report["network"] == "tiny_unet"
    assert report["size_bytes"] == out.stat().st_size > 0 and report["image_size"] == 32
    assert 0.0 <= report["max_abs_diff"] <= report["tolerance"] == {"onnx": 1e-4, "torchscript": 1e-5}[fmt]
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        expected = network(x)
    if fmt == "torchscript":
        torch.testing.assert_close(torch.jit.load(str(out))(x), expected, rtol=0, atol=1e-5)
    else:
        import onnxruntime as ort

        actual = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})[0]
        torch.testing.assert_close(torch.from_numpy(actual), expected, rtol=0, atol=1e-4)


def test_export_checkpoint_passes_network_kwargs(tmp_path):
    kwargs = {"channels": (4, 8, 16), "strides": (2, 2)}
    network = get_network("tiny_unet", 1, 3, **kwargs)
    torch.save(network.state_dict(), tmp_path / "model.pt")
    report = export_checkpoint(
        "tiny_unet", tmp_path / "model.pt", tmp_path / "m.ts", "torchscript", num_classes=3, image_size=16,
        network_kwargs=kwargs,
    )  # fmt: skip
    assert report["max_abs_diff"] <= 1e-5
    assert check_torchscript_parity(network, tmp_path / "m.ts", 16, batch=1) <= 1e-5


def test_bundle_export_reads_the_inference_network(tmp_path):
    parser = ConfigParser(ConfigParser.load_config_file(str(BUNDLE / "configs" / "inference.json")))
    num_classes = parser.get_parsed_content("num_classes")
    network = get_network("enet", 1, num_classes)  # `--student enet`, as for every command of an enet run
    torch.save(network.state_dict(), tmp_path / "enet.pt")
    report = bundle_export(BUNDLE, tmp_path / "enet.pt", tmp_path / "student.onnx", student="enet", image_size=32)

    assert report["network"] == "enet" and report["format"] == "onnx" and report["max_abs_diff"] <= 1e-4
    assert _dims(onnx.load(str(tmp_path / "student.onnx")).graph.output[0]) == ["batch", num_classes, 32, 32]
    copy = tmp_path / "bundle"
    shutil.copytree(BUNDLE / "configs", copy / "configs")
    with pytest.raises(FileNotFoundError, match=r"checkpoint not found: .*bundle/models/model\.pt"):  # its ckpt_path
        bundle_export(copy)
    with pytest.raises(ValueError, match="no_such_net"):
        bundle_export(BUNDLE, tmp_path / "enet.pt", tmp_path / "x.onnx", student="no_such_net")


# --- self-describing checkpoints ---


@pytest.fixture
def described(tmp_path):
    """A tiny_unet of 3 classes with its own channels, saved by the bundles' saver (network and size with it)."""
    torch.manual_seed(0)
    kwargs = {"channels": [4, 8, 16, 32]}
    network = get_network("tiny_unet", 1, 3, **kwargs).eval()
    metadata = checkpoint_metadata("tiny_unet", 3, 32, network_kwargs=kwargs, run_name="tiny_unet-baseline-s0")
    return save_weights(network, tmp_path / "described.pt", metadata), network


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_a_self_describing_checkpoint_gives_the_network_and_size(described, tmp_path):
    path, network = described
    report = export_checkpoint(None, path, tmp_path / "m.ts", "torchscript")
    assert report["network"] == "tiny_unet" and report["image_size"] == 32 and report["max_abs_diff"] <= 1e-5
    assert torch.jit.load(str(tmp_path / "m.ts"))(torch.rand(1, 1, 32, 32)).shape == (1, 3, 32, 32)
    bundle_export(BUNDLE, path, tmp_path / "student.onnx")  # not the bundle's 9 classes, 224 or channels: the file's
    assert _dims(onnx.load(str(tmp_path / "student.onnx")).graph.output[0]) == ["batch", 3, 32, 32]


@pytest.mark.parametrize(
    "given, expected",
    [
        (
            {"image_size": 224},
            "image_size: student checkpoint {path} was trained on 32x32 slices, this run uses 224x224; "
            "pass --image-size 32 or omit it to use the checkpoint's",
        ),
        (
            {"student": "enet"},
            "student: student checkpoint {path} was trained as tiny_unet, this run builds enet; "
            "pass --student tiny_unet or omit it to use the checkpoint's",
        ),
    ],
)
def test_a_setting_the_checkpoint_was_not_trained_with_is_refused(described, tmp_path, given, expected):
    path, _ = described
    with pytest.raises(ValueError) as info:
        bundle_export(BUNDLE, path, tmp_path / "student.onnx", **given)
    assert str(info.value) == expected.format(path=path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["described.pt"]


def test_a_plain_state_dict_needs_its_network_and_warns(checkpoint, tmp_path):
    with pytest.raises(
        ValueError, match=r"model\.pt does not describe itself \(a plain state dict\): name its network"
    ):
        export_checkpoint(None, checkpoint[0], tmp_path / "m.onnx")
    with pytest.warns(UndescribedCheckpointWarning, match="this run's image_size cannot be checked"):
        export_checkpoint("tiny_unet", checkpoint[0], tmp_path / "m.onnx", image_size=32)


# --- errors ---


class _NaNAfter(torch.nn.Module):
    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x) * torch.where(x[:, :1] > 0.5, float("nan"), 1.0)


def test_parity_is_nan_when_the_network_gives_nan(checkpoint, tmp_path):
    path, network = checkpoint
    export_onnx(network, tmp_path / "net.onnx", image_size=32)
    assert math.isnan(check_onnx_parity(_NaNAfter(network), tmp_path / "net.onnx", 32, batch=(1, 2)))


def test_missing_checkpoint_is_named(tmp_path):
    missing = tmp_path / "nowhere" / "model.pt"
    with pytest.raises(FileNotFoundError, match=r"checkpoint not found: .*nowhere/model\.pt.*--ckpt-path"):
        export_checkpoint("tiny_unet", missing, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_unknown_format_lists_the_choices(checkpoint, tmp_path):
    with pytest.raises(ValueError, match=r"'tflite'.*(onnx.*torchscript|torchscript.*onnx)"):
        export_checkpoint("tiny_unet", checkpoint[0], tmp_path / "out.tflite", format="tflite")
    with pytest.raises(ValueError, match="tflite"):
        bundle_export(BUNDLE, checkpoint=checkpoint[0], out=tmp_path / "out.tflite", format="tflite")


def test_unknown_network_and_wrong_checkpoint(checkpoint, tmp_path):
    with pytest.raises(ValueError, match="no_such_net"):
        export_checkpoint("no_such_net", checkpoint[0], tmp_path / "out.onnx")
    with pytest.raises(ValueError, match="does not fit"):  # a tiny_unet checkpoint is not a unet one
        export_checkpoint("unet", checkpoint[0], tmp_path / "out.onnx")
    with pytest.raises(ValueError, match=r"image_size and in_channels must be >= 1, got 0, 1"):
        export_checkpoint("tiny_unet", checkpoint[0], tmp_path / "out.onnx", image_size=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_parity_failure_writes_nothing(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "ONNX_TOLERANCE", -1.0)  # no export can pass
    with pytest.raises(RuntimeError, match=r"onnx export of tiny_unet differs .* max \|Δ\| = .*out\.onnx not written"):
        export_checkpoint("tiny_unet", checkpoint[0], tmp_path / "out.onnx", image_size=32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("fmt, writer", [("onnx", "onnx.save"), ("torchscript", "torch.jit.save")])
def test_a_failed_write_keeps_the_previous_export(checkpoint, tmp_path, monkeypatch, fmt, writer):
    out = tmp_path / f"student.{fmt}"
    export_checkpoint("tiny_unet", checkpoint[0], out, format=fmt, image_size=32)
    before = out.read_bytes()

    def partial(*args, **kwargs):  # onnx.save(model, f) and torch.jit.save(m=..., f=...)
        with open(kwargs.get("f", args[1] if len(args) > 1 else None), "wb") as stream:
            stream.write(before[: len(before) // 2])
        raise OSError("disk full")

    module, name = writer.rsplit(".", 1)
    monkeypatch.setattr(onnx if module == "onnx" else torch.jit, name, partial)
    with pytest.raises((OSError, RuntimeError)):
        export_checkpoint("tiny_unet", checkpoint[0], out, format=fmt, image_size=32)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", out.name]


def test_unscriptable_network_points_to_onnx(tmp_path):
    torch.save(get_network("swin_unetr").state_dict(), tmp_path / "swin.pt")
    with pytest.raises(
        RuntimeError, match=r"torch\.jit\.script cannot compile swin_unetr; export it with format='onnx'"
    ):
        export_checkpoint("swin_unetr", tmp_path / "swin.pt", tmp_path / "swin.ts", format="torchscript")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["swin.pt"]


def test_missing_onnx_extra_says_how_to_install(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(ImportError, match=r"onnxruntime is not installed.*pip install 'mskd\[onnx\]'"):
        export_checkpoint("tiny_unet", checkpoint[0], tmp_path / "out.onnx")
    with pytest.raises(ImportError, match=r"mskd\[onnx\]"):
        check_onnx_parity(checkpoint[1], tmp_path / "out.onnx", 32)
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"onnx is not installed.*mskd\[onnx\]"):
        export_onnx(checkpoint[1], tmp_path / "out.onnx")


def test_missing_files_are_named(checkpoint, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ONNX file not found: .*absent\.onnx"):
        check_onnx_parity(checkpoint[1], tmp_path / "absent.onnx", 32)
    with pytest.raises(FileNotFoundError, match=r"TorchScript file not found: .*absent\.ts"):
        check_torchscript_parity(checkpoint[1], tmp_path / "absent.ts", 32)
    with pytest.raises(
        FileNotFoundError, match=r"not an mskd bundle \(no configs/train_teacher\.json\); pass --bundle"
    ):
        bundle_export(tmp_path, checkpoint=checkpoint[0])
