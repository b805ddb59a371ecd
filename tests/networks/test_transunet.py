import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mskd.networks import count_parameters
from mskd.networks.taps import FeatureTaps
from mskd.networks.transunet import SMALL_CONFIG, TransUNet, transunet_small

REFERENCE_PARAMS = 105_277_081  # github.com/Beckschen/TransUNet, R50-ViT-B_16, 224^2, 9 classes, 3 input channels


# ----------------------------------------------------------------------------------------------------- full size
@pytest.mark.parametrize("in_channels, expected", [(3, 105_277_081), (1, 105_270_809)])
def test_full_size_parameter_counts(in_channels, expected):
    model = TransUNet(in_channels=in_channels, out_channels=9, img_size=224)
    assert count_parameters(model) == expected
    assert abs(count_parameters(model) - REFERENCE_PARAMS) <= 0.01 * REFERENCE_PARAMS


def test_full_size_forward_224_and_taps():
    torch.manual_seed(0)
    model = TransUNet().eval()
    taps = {k: v[0] for k, v in model.tap_points.items()}
    with torch.no_grad(), FeatureTaps(model, taps) as tapped:
        out = model(torch.rand(1, 1, 224, 224))
    assert out.shape == (1, 9, 224, 224)
    assert torch.isfinite(out).all()
    assert tapped.features["low"].shape == (1, 256, 56, 56)
    assert tapped.features["mid"].shape == (1, 512, 28, 28)
    assert tapped.features["high"].shape == (1, 768, 14, 14)


# ----------------------------------------------------------------------------------------------------- small preset
def test_small_preset_parametercount_parameters():
    assert count_parameters(transunet_small()) == 518_177
    assert count_parameters(TransUNet(**SMALL_CONFIG, img_size=96)) == 518_177


@pytest.mark.parametrize(
    "img_size, shape",
    [
        (96, (96, 96)),
        (128, (128, 128)),
        (96, (128, 128)),  # position embeddings interpolated 6x6 -> 8x8
        (96, (64, 96)),  # non-square, interpolated 6x6 -> 4x6
        ((64, 96), (64, 96)),  # non-square stored grid
    ],
)
def test_small_forward_shapes(img_size, shape):
    model = transunet_small(in_channels=2, out_channels=3, img_size=img_size).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 2, *shape))
    assert out.shape == (2, 3, *shape)
    assert torch.isfinite(out).all()


def test_position_embedding_interpolation_is_used():
    torch.manual_seed(0)
    model = transunet_small(img_size=96).eval()
    with torch.no_grad():
        model.position_embeddings.normal_()
        x = torch.rand(1, 1, 128, 128)
        out = model(x)
        model.position_embeddings.zero_()
        out_without = model(x)
    assert out.shape == (1, 9, 128, 128)
    assert not torch.allclose(out, out_without)


@pytest.mark.parametrize("shape", [(100, 100), (96, 100), (40, 96)])
def test_input_not_divisible_by_16_raises(shape):
    model = transunet_small()
    with pytest.raises(
        ValueError, match=re.escape(f"TransUNet needs H and W divisible by 16, got {shape[0]}x{shape[1]}")
    ):
        model(torch.rand(1, 1, *shape))


@pytest.mark.parametrize(
    "override, fragment",
    [
        (dict(hidden_size=90, num_heads=4), "90"),
        (dict(resnet_depths=(1, 1)), "(1, 1)"),
        (dict(resnet_depths=(1, 0, 1)), "0"),
        (dict(decoder_channels=(8, 8, 8)), "(8, 8, 8)"),
        (dict(img_size=100), "100"),
        (dict(img_size=(96, 72)), "(96, 72)"),
        (dict(in_channels=0), "in_channels"),
        (dict(resnet_width=-4), "-4"),
        (dict(num_layers=0), "num_layers"),
        (dict(dropout_rate=1.5), "1.5"),
    ],
)
def test_bad_constructor_arguments(override, fragment):
    kwargs = {**SMALL_CONFIG, "img_size": 96, **override}
    with pytest.raises(ValueError, match=re.escape(fragment)):
        TransUNet(**kwargs)


# ----------------------------------------------------------------------------------------------------- taps
@pytest.mark.parametrize("shape", [(96, 96), (64, 96)])
def test_taps_have_declared_strides(shape):
    model = transunet_small(img_size=96).eval()
    assert {"low", "high"} <= set(model.tap_points)
    channels = {"low": 64, "mid": 128, "high": 96}
    with torch.no_grad(), FeatureTaps(model, {k: v[0] for k, v in model.tap_points.items()}) as taps:
        model(torch.rand(2, 1, *shape))
    for name, (_, stride) in model.tap_points.items():
        feature = taps.features[name]
        assert feature.ndim == 4
        assert feature.shape == (2, channels[name], shape[0] // stride, shape[1] // stride)


# ----------------------------------------------------------------------------------------------------- training
def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = transunet_small(img_size=64)
    model(torch.rand(2, 1, 64, 64)).square().mean().backward()
    no_grad = [name for name, p in model.named_parameters() if p.grad is None]
    assert no_grad == []


def test_training_steps_reduce_loss():
    torch.manual_seed(0)
    model = transunet_small(in_channels=1, out_channels=2, img_size=64, dropout_rate=0.0)
    labels = torch.zeros(4, 64, 64, dtype=torch.long)
    for i in range(4):
        labels[i, 8 + 4 * i : 40 + 4 * i, 16:48] = 1
    images = labels[:, None].float() + 0.1 * torch.randn(4, 1, 64, 64)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_jit_trace_matches_eager():
    torch.manual_seed(0)
    model = transunet_small(img_size=64).eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        traced = torch.jit.trace(model, x)
        torch.testing.assert_close(traced(x), model(x), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------------- pretrained
def _synthetic_npz(hidden=96, heads=4, mlp=192, layers=2, width=16, depths=(1, 1, 1), grid=7, cls_token=True, seed=0):
    """Arrays in the Google ViT R50+ViT-B_16 npz layout (HWIO convs, (in, out) Dense, split-head attention)."""
    rng = np.random.default_rng(seed)

    def arr(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    w = {"conv_root/kernel": arr(7, 7, 3, width), "gn_root/scale": arr(width), "gn_root/bias": arr(width)}
    cin = width
    for b, depth in enumerate(depths, start=1):
        cmid, cout = width * 2 ** (b - 1), width * 4 * 2 ** (b - 1)
        for u in range(1, depth + 1):
            unit = f"block{b}/unit{u}"
            unit_in = cin if u == 1 else cout
            w[f"{unit}/conv1/kernel"] = arr(1, 1, unit_in, cmid)
            w[f"{unit}/conv2/kernel"] = arr(3, 3, cmid, cmid)
            w[f"{unit}/conv3/kernel"] = arr(1, 1, cmid, cout)
            for n, c in (("1", cmid), ("2", cmid), ("3", cout)):
                w[f"{unit}/gn{n}/scale"], w[f"{unit}/gn{n}/bias"] = arr(c), arr(c)
            if u == 1:
                w[f"{unit}/conv_proj/kernel"] = arr(1, 1, unit_in, cout)
                w[f"{unit}/gn_proj/scale"], w[f"{unit}/gn_proj/bias"] = arr(cout), arr(cout)
        cin = cout
    w["embedding/kernel"], w["embedding/bias"] = arr(1, 1, cin, hidden), arr(hidden)
    w["Transformer/posembed_input/pos_embedding"] = arr(1, grid * grid + int(cls_token), hidden)
    w["Transformer/encoder_norm/scale"], w["Transformer/encoder_norm/bias"] = arr(hidden), arr(hidden)
    hd = hidden // heads
    for i in range(layers):
        blk = f"Transformer/encoderblock_{i}"
        for ln in ("LayerNorm_0", "LayerNorm_2"):
            w[f"{blk}/{ln}/scale"], w[f"{blk}/{ln}/bias"] = arr(hidden), arr(hidden)
        for name in ("query", "key", "value"):
            w[f"{blk}/MultiHeadDotProductAttention_1/{name}/kernel"] = arr(hidden, heads, hd)
            w[f"{blk}/MultiHeadDotProductAttention_1/{name}/bias"] = arr(heads, hd)
        w[f"{blk}/MultiHeadDotProductAttention_1/out/kernel"] = arr(heads, hd, hidden)
        w[f"{blk}/MultiHeadDotProductAttention_1/out/bias"] = arr(hidden)
        w[f"{blk}/MlpBlock_3/Dense_0/kernel"], w[f"{blk}/MlpBlock_3/Dense_0/bias"] = arr(hidden, mlp), arr(mlp)
        w[f"{blk}/MlpBlock_3/Dense_1/kernel"], w[f"{blk}/MlpBlock_3/Dense_1/bias"] = arr(mlp, hidden), arr(hidden)
    if cls_token:  # classifier leftovers the segmentation model does not use
        w["cls"], w["head/kernel"], w["head/bias"] = arr(1, 1, hidden), arr(hidden, 10), arr(10)
    return w


def _save(tmp_path, weights, name="R50+ViT-B_16.npz"):
    path = tmp_path / name
    np.savez(path, **weights)
    return path


@pytest.mark.parametrize("in_channels", [1, 3])
def test_load_pretrained_converts_layouts(tmp_path, in_channels):
    weights = _synthetic_npz()
    model = transunet_small(in_channels=in_channels, img_size=96)  # 6x6 grid, file has 7x7 + class token
    decoder_before = model.segmentation_head.weight.detach().clone()
    report = model.load_pretrained(_save(tmp_path, weights))

    assert set(report) >= {"loaded", "missing", "unexpected", "resized"}
    assert report["missing"] == []
    assert report["unexpected"] == ["cls", "head/bias", "head/kernel"]
    assert "position_embeddings" in report["resized"]
    assert ("hybrid.root.conv.weight" in report["resized"]) == (in_channels != 3)
    encoder = [n for n, _ in model.named_parameters() if not n.startswith(("decoder.", "segmentation_head."))]
    assert sorted(report["loaded"]) == sorted(encoder)
    assert "segmentation_head.weight" in report["skipped"]
    assert torch.equal(model.segmentation_head.weight, decoder_before)

    def t(a):
        return torch.from_numpy(np.ascontiguousarray(a))

    # convs: HWIO -> OIHW
    root = weights["conv_root/kernel"].transpose(3, 2, 0, 1)
    if in_channels == 1:
        root = root.sum(axis=1, keepdims=True)
    torch.testing.assert_close(model.hybrid.root.conv.weight.detach(), t(root), rtol=0, atol=1e-6)
    assert torch.equal(
        model.hybrid.stage2[0].conv2.weight, t(weights["block2/unit1/conv2/kernel"].transpose(3, 2, 0, 1))
    )
    assert torch.equal(
        model.hybrid.stage3[0].conv_proj.weight, t(weights["block3/unit1/conv_proj/kernel"].transpose(3, 2, 0, 1))
    )
    assert torch.equal(model.hybrid.stage1[0].gn_proj.bias, t(weights["block1/unit1/gn_proj/bias"]))
    assert torch.equal(model.patch_embeddings.weight, t(weights["embedding/kernel"].transpose(3, 2, 0, 1)))
    # dense: (in, out) -> (out, in)
    blk = "Transformer/encoderblock_1"
    assert torch.equal(model.layers[1].ffn.fc1.weight, t(weights[f"{blk}/MlpBlock_3/Dense_0/kernel"].T))
    assert torch.equal(model.layers[1].ffn.fc2.bias, t(weights[f"{blk}/MlpBlock_3/Dense_1/bias"]))
    assert torch.equal(model.layers[1].ffn_norm.weight, t(weights[f"{blk}/LayerNorm_2/scale"]))
    # attention: query kernel (in, heads, head_dim) -> (heads * head_dim, in);
    # out kernel (heads, head_dim, out) -> (out, heads * head_dim)
    q = weights[f"{blk}/MultiHeadDotProductAttention_1/query/kernel"]
    q_expected = np.array([[q[i, o // 24, o % 24] for i in range(96)] for o in range(96)], dtype=np.float32)
    assert torch.equal(model.layers[1].attn.query.weight, t(q_expected))
    qb = weights[f"{blk}/MultiHeadDotProductAttention_1/query/bias"]
    assert torch.equal(model.layers[1].attn.query.bias, t(np.array([qb[o // 24, o % 24] for o in range(96)])))
    out = weights[f"{blk}/MultiHeadDotProductAttention_1/out/kernel"]
    out_expected = np.array([[out[i // 24, i % 24, o] for i in range(96)] for o in range(96)], dtype=np.float32)
    assert torch.equal(model.layers[1].attn.out.weight, t(out_expected))
    # position embeddings: class token dropped, 7x7 grid resized bicubically to 6x6
    grid = t(weights["Transformer/posembed_input/pos_embedding"][0, 1:].reshape(7, 7, 96)).permute(2, 0, 1)[None]
    resized = (
        F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False)[0].permute(1, 2, 0).reshape(1, 36, 96)
    )
    torch.testing.assert_close(model.position_embeddings.detach(), resized, rtol=0, atol=1e-6)

    with torch.no_grad():
        assert torch.isfinite(model.eval()(torch.rand(1, in_channels, 96, 96))).all()


def test_load_pretrained_same_grid_is_copied(tmp_path):
    weights = _synthetic_npz(grid=7, cls_token=False)
    model = transunet_small(img_size=112)  # 7x7 grid
    report = model.load_pretrained(_save(tmp_path, weights))
    assert report["resized"] == ["hybrid.root.conv.weight"]
    assert report["unexpected"] == []
    expected = torch.from_numpy(weights["Transformer/posembed_input/pos_embedding"])
    assert torch.equal(model.position_embeddings.detach(), expected)


def test_load_pretrained_missing_keys_and_strict(tmp_path):
    weights = _synthetic_npz()
    del weights["Transformer/encoderblock_0/MlpBlock_3/Dense_0/bias"]
    path = _save(tmp_path, weights)
    report = transunet_small().load_pretrained(path)
    assert report["missing"] == ["layers.0.ffn.fc1.bias"]
    with pytest.raises(RuntimeError, match=re.escape("layers.0.ffn.fc1.bias")):
        transunet_small().load_pretrained(path, strict=True)


def test_load_pretrained_missing_file(tmp_path):
    path = tmp_path / "nowhere.npz"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        transunet_small().load_pretrained(path)


@pytest.mark.parametrize(
    "key, shape",
    [
        ("Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel", (96, 100)),
        ("Transformer/encoderblock_1/MultiHeadDotProductAttention_1/query/kernel", (96, 4, 20)),
        ("Transformer/posembed_input/pos_embedding", (1, 50, 64)),
        ("Transformer/posembed_input/pos_embedding", (1, 40, 96)),
        ("block2/unit1/conv2/kernel", (3, 3, 32, 16)),
    ],
)
def test_load_pretrained_shape_mismatch(tmp_path, key, shape):
    weights = _synthetic_npz()
    weights[key] = np.zeros(shape, dtype=np.float32)
    model = transunet_small()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match=re.escape(key)) as excinfo:
        model.load_pretrained(_save(tmp_path, weights))
    assert str(shape) in str(excinfo.value)
    # nothing was copied
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
