import math

import pytest
import torch

from mskd.networks import count_parameters
from mskd.networks.mobilenetv2_unet import MobileNetV2UNet, make_divisible
from mskd.networks.taps import FeatureTaps


@pytest.mark.parametrize(
    "value, divisor, expected",
    [
        (32, 8, 32),  # already a multiple
        (16.0, 8, 16),  # 32 * 0.5
        (12.0, 8, 16),  # 16 * 0.75: rounds half up
        (18.0, 8, 24),  # 24 * 0.75: 16 would lose > 10 %, so one more step
        (10, 8, 16),  # 8 < 0.9 * 10
        (134.4, 8, 136),  # 96 * 1.4
        (3, 8, 8),  # never below the divisor
        (36, 8, 40),
    ],
)
def test_make_divisible(value, divisor, expected):
    assert make_divisible(value, divisor) == expected


def test_make_divisible_min_value():
    assert make_divisible(3, 8, min_value=16) == 16


@pytest.mark.parametrize(
    "in_channels, out_channels, shape",
    [
        (1, 9, (224, 224)),
        (3, 9, (224, 224)),
        (1, 4, (160, 224)),
        (3, 2, (160, 224)),
    ],
)
def test_forward_shapes(in_channels, out_channels, shape):
    net = MobileNetV2UNet(in_channels=in_channels, out_channels=out_channels).eval()
    with torch.no_grad():
        out = net(torch.rand(1, in_channels, *shape))
    assert out.shape == (1, out_channels, *shape)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({}, 2_075_985),
        ({"in_channels": 3}, 2_076_561),
        ({"width_mult": 0.5}, 634_337),
    ],
)
def test_parameter_count(kwargs, expected):
    assert count_parameters(MobileNetV2UNet(**kwargs)) == expected


def test_parameter_count_in_target_range():
    assert 2_000_000 <= count_parameters(MobileNetV2UNet(in_channels=1, out_channels=9)) <= 4_000_000


@pytest.mark.parametrize(
    "width_mult, stage_channels",
    [
        (1.0, [16, 24, 32, 96, 320]),
        (0.5, [8, 16, 16, 48, 160]),
        (1.4, [24, 32, 48, 136, 448]),
    ],
)
def test_encoder_stage_channels(width_mult, stage_channels):
    assert MobileNetV2UNet(width_mult=width_mult).encoder.out_channels == stage_channels


@pytest.mark.parametrize(
    "width_mult, expected_channels",
    [(1.0, {"low": 24, "mid": 32, "high": 320}), (0.5, {"low": 16, "mid": 16, "high": 160})],
)
def test_taps_at_declared_strides(width_mult, expected_channels):
    net = MobileNetV2UNet(in_channels=1, out_channels=9, width_mult=width_mult).eval()
    assert {"low", "high"} <= set(net.tap_points)
    module_names = dict(net.named_modules())
    for path, _ in net.tap_points.values():
        assert path in module_names
    h, w = 64, 96
    with FeatureTaps(net, {k: v[0] for k, v in net.tap_points.items()}) as taps, torch.no_grad():
        out = net(torch.rand(2, 1, h, w))
    assert out.shape == (2, 9, h, w)
    assert set(taps.features) == set(net.tap_points)
    for name, (_, stride) in net.tap_points.items():
        feature = taps.features[name]
        assert feature.shape == (2, expected_channels[name], h // stride, w // stride), name
    assert net.tap_points["low"][1] == 4
    assert net.tap_points["high"][1] == 32


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    net = MobileNetV2UNet(in_channels=1, out_channels=3).train()
    out = net(torch.rand(2, 1, 64, 64))
    out.square().mean().backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_jit_trace_equals_eager():
    torch.manual_seed(0)
    net = MobileNetV2UNet(in_channels=1, out_channels=9).eval()
    x = torch.rand(1, 1, 64, 64)
    # optimized_execution(False): skip the JIT's profiling/fusion passes, which only cost test time here
    with torch.no_grad(), torch.jit.optimized_execution(False):
        traced = torch.jit.trace(net, x, check_trace=False)
        for shape in [(64, 64), (96, 128)]:
            y = torch.rand(1, 1, *shape)
            torch.testing.assert_close(traced(y), net(y), rtol=0, atol=1e-5)


def test_jit_script_equals_eager_and_checks_shape():
    net = MobileNetV2UNet(in_channels=1, out_channels=2, width_mult=0.5).eval()
    scripted = torch.jit.script(net)
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad(), torch.jit.optimized_execution(False):
        torch.testing.assert_close(scripted(x), net(x), rtol=0, atol=1e-5)
    with pytest.raises(Exception, match="divisible by 32"):
        scripted(torch.rand(1, 1, 48, 64))


@pytest.mark.parametrize("shape", [(1, 1, 48, 64), (1, 1, 64, 80), (1, 1, 100, 100)])
def test_rejects_sizes_not_divisible_by_32(shape):
    net = MobileNetV2UNet()
    with pytest.raises(ValueError, match=r"divisible by 32, got \(" + f"{shape[2]}, {shape[3]}"):
        net(torch.rand(*shape))


@pytest.mark.parametrize("shape", [(1, 3, 64, 64), (1, 64, 64)])
def test_rejects_wrong_input_layout(shape):
    with pytest.raises(ValueError, match="B, 1, H, W"):
        MobileNetV2UNet(in_channels=1)(torch.rand(*shape))


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        ({"in_channels": 0}, "in_channels"),
        ({"in_channels": 1.5}, "in_channels"),
        ({"out_channels": -1}, "out_channels"),
        ({"out_channels": True}, "out_channels"),
        ({"width_mult": 0.0}, "width_mult"),
        ({"width_mult": -1.0}, "width_mult"),
        ({"width_mult": math.nan}, "width_mult"),
        ({"width_mult": "1"}, "width_mult"),
        ({"decoder_channels": (96, 32, 24)}, "decoder_channels"),
        ({"decoder_channels": (96, 32, 24, 0)}, "decoder_channels"),
        ({"decoder_channels": (96, 32, 24, 16.0)}, "decoder_channels"),
        ({"decoder_channels": 96}, "decoder_channels"),
    ],
)
def test_rejects_bad_constructor_args(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        MobileNetV2UNet(**kwargs)


def test_custom_decoder_channels():
    net = MobileNetV2UNet(decoder_channels=[96, 32, 24, 16]).eval()
    assert net.decoder_channels == (96, 32, 24, 16)
    assert count_parameters(net) == 1_864_681
    assert net.head.in_channels == 16
    with torch.no_grad():
        assert net(torch.rand(1, 1, 64, 64)).shape == (1, 9, 64, 64)
