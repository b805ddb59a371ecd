"""Lightweight student networks: ENet, ERFNet, ESPNet."""

import pytest
import torch

from mskd.networks.checkpoint import count_parameters
from mskd.networks.enet import ENet
from mskd.networks.erfnet import ERFNet
from mskd.networks.espnet import ESPNet
from mskd.networks.taps import FeatureTaps

STUDENTS = [ENet, ERFNet, ESPNet]
IDS = [cls.__name__ for cls in STUDENTS]

# exact counts (deterministic) for out_channels=9, in_channels 1 and 3
PARAMS = {
    ENet: {1: 359_759, 3: 359_975},
    ERFNet: {1: 2_063_327, 3: 2_063_541},
    ESPNet: {1: 350_158, 3: 351_304},
}
# published counts (papers): ENet 0.37 M, ERFNet 2.07 M, ESPNet 0.364 M (alpha3 = 8, 20 Cityscapes classes)
PUBLISHED = {ENet: 0.37e6, ERFNet: 2.07e6, ESPNet: 0.364e6}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("cls", STUDENTS, ids=IDS)
@pytest.mark.parametrize("size", [(224, 224), (160, 224)])
def test_forward_shape(cls, size):
    net = cls(in_channels=1, out_channels=9).eval()
    with torch.no_grad():
        out = net(torch.rand(1, 1, *size))
    assert out.shape == (1, 9, *size)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("cls", STUDENTS, ids=IDS)
def test_forward_shape_rgb_batch(cls):
    net = cls(in_channels=3, out_channels=2)
    assert net(torch.rand(2, 3, 32, 48)).shape == (2, 2, 32, 48)


@pytest.mark.parametrize("cls", STUDENTS, ids=IDS)
@pytest.mark.parametrize("in_channels", [1, 3])
def test_parameter_count(cls, in_channels):
    n = count_parameters(cls(in_channels=in_channels, out_channels=9))
    assert n == PARAMS[cls][in_channels]


@pytest.mark.parametrize("cls", STUDENTS, ids=IDS)
def test_parameter_count_near_published(cls):
    # the papers count RGB input (ESPNet: 20 Cityscapes classes, ENet/ERFNet: the class count barely matters)
    out_channels = 20 if cls is ESPNet else 9
    n = count_parameters(cls(in_channels=3, out_channels=out_channels))
    assert abs(n - PUBLISHED[cls]) / PUBLISHED[cls] < 0.05


def test_espnet_reference_code_default_variant():
    # alpha3 = 3 (the reference code's default) at 9 classes: the ~0.19 M of the public port
    assert count_parameters(ESPNet(in_channels=3, out_channels=9, alpha3=3)) == 189_384
    assert count_parameters(ESPNet(in_channels=3, out_channels=20)) == 365_109


@pytest.mark.parametrize("cls", STUDENTS, ids=IDS)
def test_tap_points_give_features_at_declared_strides(cls):
    net = cls(in_channels=1, out_channels=9).eval()
    assert {"low", "high"} <= set(net.tap_points)
    assert net.tap_points["high"][1] == 8
    h, w = 32, 48
    with torch.no_grad(), FeatureTaps(net, {k: v[0] for k, v in net.tap_points.items()}) as taps:
        net(torch.rand(2, 1, h, w))
    assert set(taps.features) == set(net.tap_points)
    for name, (_path, stride) in net.tap_points.items():
        feature = taps.features[name]
        assert isinstance(feature, torch.Tensor) and feature.ndim == 4, name
        assert feature.shape[0] == 2 and feature.shape[-2:] == (h // stride, w // stride), name


@pytest.mark.parametrize("cls", STUDENTS, ids=IDS)
def test_gradients_reach_every_parameter(cls):
    net = cls(in_channels=1, out_channels=9).train()
    net(torch.rand(2, 1, 32, 32)).square().mean().backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None]
    assert not missing


@pytest.mark.parametrize("cls", STUDENTS, ids=IDS)
def test_jit_trace_and_script_match_eager(cls):
    net = cls(in_channels=1, out_channels=9).eval()
    x, other = torch.rand(1, 1, 32, 48), torch.rand(1, 1, 32, 48)
    # optimized_execution(False): skip the JIT's profiling/fusion passes, which only cost test time here
    with torch.no_grad(), torch.jit.optimized_execution(False):
        expected = net(x)
        traced = torch.jit.trace(net, x, check_trace=False)
        torch.testing.assert_close(traced(x), expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(traced(other), net(other), rtol=0, atol=1e-5)
        scripted = torch.jit.script(net)
        torch.testing.assert_close(scripted(x), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("cls", STUDENTS, ids=IDS)
def test_input_size_not_divisible_by_stride(cls):
    net = cls().eval()
    with pytest.raises(ValueError, match=rf"{cls.__name__} needs H and W divisible by 8, got \(60, 64\)"):
        net(torch.rand(1, 1, 60, 64))


@pytest.mark.parametrize("cls", STUDENTS, ids=IDS)
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"in_channels": 0}, "in_channels.*0"), ({"out_channels": 0}, "out_channels.*0")],
)
def test_bad_constructor_arguments(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (ENet, {"in_channels": 16}, "in_channels.*16"),
        (ENet, {"dropout": 1.0}, "dropout.*1.0"),
        (ERFNet, {"dropout_deep": -0.1}, "dropout_deep.*-0.1"),
        (ESPNet, {"alpha3": 0}, "alpha3.*0"),
        (ESPNet, {"branches": 6}, "branches.*6"),
    ],
)
def test_bad_specific_arguments(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)
