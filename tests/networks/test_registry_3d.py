"""3D networks in the registry: build by name, forward on small volumes, taps at their declared strides."""

import dataclasses
import functools

import pytest
import torch

from mskd.networks import (
    ESPNet3D,
    FeatureTaps,
    count_parameters,
    default_taps,
    get_network,
    list_networks,
    network_spatial_dims,
    tap_points,
)
from mskd.networks.registry import NetworkEntry

TEACHERS = ["unet_3d", "segresnet_3d", "dynunet_3d", "swin_unetr_3d"]
STUDENTS = ["tiny_unet_3d", "segresnet_3d_small", "espnet_3d"]
# smallest cube each takes: D, H, W divisible by the total stride (DynUNet 16; SwinUNETR 32, and its deepest stage
# needs more than one voxel for its instance norm, so 64)
SIZES = {"swin_unetr_3d": 64}
# exact parameter counts at 1 input channel, 9 classes (docs/networks.md quotes them)
PARAMS = {
    "unet_3d": 4_754_058,
    "segresnet_3d": 4_701_033,
    "dynunet_3d": 16_543_881,
    "swin_unetr_3d": 62_187_051,
    "tiny_unet_3d": 155_750,
    "segresnet_3d_small": 442_617,
    "espnet_3d": 179_504,
}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _build(name: str, **kwargs) -> torch.nn.Module:
    """The network on the meta device (no memory, no initialisation), or for real where building calls ``.item()``."""
    try:
        with torch.device("meta"):
            return get_network(name, **kwargs)
    except RuntimeError:  # SwinUNETR
        return get_network(name, **kwargs)


@functools.cache
def _parameters(name: str) -> int:
    return count_parameters(_build(name, in_channels=1, out_channels=9))


@pytest.mark.parametrize("name", TEACHERS + STUDENTS)
def test_builds_by_name_and_taps_have_declared_strides(name):
    size = SIZES.get(name, 32)
    net = get_network(name, in_channels=1, out_channels=9).eval()
    points = tap_points(net)
    assert {"low", "high"} <= set(points)
    with torch.no_grad(), FeatureTaps(net, {k: path for k, (path, _) in points.items()}) as taps:
        out = net(torch.rand(1, 1, size, size, size))
    assert out.shape == (1, 9, size, size, size)
    assert torch.isfinite(out).all()
    assert set(taps.features) == set(points)
    for tap, (_, stride) in points.items():
        feature = taps.features[tap]
        assert feature.ndim == 5 and feature.shape[0] == 1, f"{name}:{tap}"
        assert feature.shape[-3:] == (size // stride,) * 3, f"{name}:{tap}"
    high = points["high"][1]
    assert all(stride <= high for _, stride in points.values()), "high is the deepest encoder stage"


@pytest.mark.parametrize(
    "name, taps",
    [
        ("unet_3d", {"low": ("model.0", 2), "high": ("model.1.submodule.1.submodule.1.submodule", 8)}),
        ("segresnet_3d", {"low": ("down_layers.1", 2), "mid": ("down_layers.2", 4), "high": ("down_layers.3", 8)}),
        ("dynunet_3d", {"low": ("downsamples.0", 2), "mid": ("downsamples.1", 4), "high": ("bottleneck", 16)}),
        ("swin_unetr_3d", {"low": ("encoder2", 2), "mid": ("encoder3", 4), "high": ("encoder10", 32)}),
        ("espnet_3d", {"low": ("b1", 2), "mid": ("b2", 4), "high": ("b3", 8)}),
    ],
)
def test_declared_taps(name, taps):
    assert tap_points(_build(name)) == taps


@pytest.mark.parametrize(
    "kwargs, taps",
    [
        (  # four levels: stride 8 at the bottleneck
            {"kernel_size": (3, 3, 3, 3), "strides": (1, 2, 2, 2), "upsample_kernel_size": (2, 2, 2)},
            {"low": ("downsamples.0", 2), "mid": ("downsamples.1", 4), "high": ("bottleneck", 8)},
        ),
        (  # a strided input block is the first stage at stride > 1; per-axis equal strides count as one
            {"kernel_size": (3, 3, 3, 3), "strides": ((2, 2, 2), 2, 2, 2), "upsample_kernel_size": (2, 2, 2)},
            {"low": ("input_block", 2), "mid": ("downsamples.0", 4), "high": ("bottleneck", 16)},
        ),
        (  # three levels: no stage between low and high
            {"kernel_size": (3, 3, 3), "strides": (1, 2, 2), "upsample_kernel_size": (2, 2)},
            {"low": ("downsamples.0", 2), "high": ("bottleneck", 4)},
        ),
    ],
)
def test_dynunet_taps_follow_its_strides(kwargs, taps):
    assert tap_points(get_network("dynunet_3d", **kwargs)) == taps


def test_dynunet_with_anisotropic_strides_has_no_default_taps():
    net = get_network(
        "dynunet_3d", kernel_size=(3, 3, 3), strides=(1, (2, 2, 1), 2), upsample_kernel_size=((2, 2, 1), 2)
    )
    with pytest.raises(ValueError, match="no default tap points; name the sub-modules"):
        default_taps(net)


def test_segresnet_taps_follow_its_depth():
    net = get_network("segresnet_3d_small", blocks_down=(1, 1, 1), blocks_up=(1, 1))
    assert tap_points(net) == {"low": ("down_layers.1", 2), "high": ("down_layers.2", 4)}
    with pytest.raises(ValueError, match="no default tap points"):
        default_taps(get_network("segresnet_3d_small", blocks_down=(1,), blocks_up=()))


@pytest.mark.parametrize("name", TEACHERS + STUDENTS)
def test_parameter_counts(name):
    assert _parameters(name) == PARAMS[name]


def test_students_have_at_most_a_fifth_of_the_smallest_teachers_parameters():
    smallest_teacher = min(_parameters(name) for name in TEACHERS)
    for name in STUDENTS:
        assert 5 * _parameters(name) <= smallest_teacher, name


def test_gradients_flow_through_espnet_3d():
    net = get_network("espnet_3d", in_channels=2, out_channels=3).train()
    x = torch.rand(2, 2, 16, 16, 16, requires_grad=True)
    net(x).square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, param in net.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("size", [(40, 40, 40), (24, 40, 32), (8, 8, 8)])
def test_espnet_3d_takes_any_multiple_of_8(size):
    net = ESPNet3D(in_channels=1, out_channels=4).eval()
    with torch.no_grad(), FeatureTaps(net, {"high": "b3"}) as taps:
        out = net(torch.rand(1, 1, *size))
    assert out.shape == (1, 4, *size)
    assert taps.features["high"].shape[-3:] == tuple(s // 8 for s in size)


@pytest.mark.parametrize(
    "shape, message",
    [
        ((1, 1, 36, 32, 32), r"ESPNet3D needs D, H and W divisible by 8, got \(36, 32, 32\): 8 is its total stride"),
        ((1, 1, 32, 32, 30), r"divisible by 8, got \(32, 32, 30\): .*; pad or crop the input to a multiple of 8"),
        ((1, 1, 32, 32), r"expects a B, 1, D, H, W input, got shape \[1, 1, 32, 32\]"),
        ((1, 2, 32, 32, 32), r"expects a B, 1, D, H, W input, got shape \[1, 2, 32, 32, 32\]"),
    ],
)
def test_espnet_3d_refuses_bad_inputs_before_the_forward(shape, message):
    with pytest.raises(ValueError, match=message):
        ESPNet3D(in_channels=1)(torch.rand(*shape))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"in_channels": 0}, "in_channels must be >= 1, got 0"),
        ({"out_channels": 0}, "out_channels must be >= 1, got 0"),
        ({"channels": (16, 32)}, r"three positive widths .*got \(16, 32\)"),
        ({"channels": (16, 0, 64)}, r"three positive widths .*got \(16, 0, 64\)"),
        ({"alpha2": 0}, "alpha2 must be >= 1, got 0"),
        ({"alpha3": 0}, "alpha3 must be >= 1, got 0"),
        ({"branches": 6}, "branches must be in 1..5, got 6"),
        ({"channels": (16, 3, 64)}, r"channels\[1\] and channels\[2\] >= branches .*\(16, 3, 64\), branches=4"),
    ],
)
def test_espnet_3d_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ESPNet3D(**kwargs)


@pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")
def test_espnet_3d_torchscript_matches_eager():
    net = ESPNet3D(out_channels=3).eval()
    x = torch.rand(2, 1, 16, 24, 16)
    with torch.no_grad():
        expected = net(x)
        torch.testing.assert_close(torch.jit.script(net)(x), expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(torch.jit.trace(net, x)(x), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name, dims", [("unet", 2), ("espnet", 2), ("transunet", 2), ("unet_3d", 3), ("espnet_3d", 3)])
def test_network_spatial_dims(name, dims):
    assert network_spatial_dims(name) == dims


def test_exactly_the_3d_names_are_3d():
    names = set(list_networks())
    assert {n for n in names if network_spatial_dims(n) == 3} == set(TEACHERS + STUDENTS)
    assert all(n.endswith("_3d") or "_3d_" in n for n in TEACHERS + STUDENTS)


def test_network_spatial_dims_of_an_unknown_name_lists_the_choices():
    with pytest.raises(ValueError, match="unet_3d"):
        network_spatial_dims("vnet")


@pytest.mark.parametrize(
    "name, dims, message",
    [
        ("unet", 3, r"unet is a 2D network, got spatial_dims=3: .*the 3D networks are \[.*'unet_3d'"),
        ("espnet_3d", 2, r"espnet_3d is a 3D network, got spatial_dims=2: .*the 2D networks are \[.*'espnet'"),
        ("swin_unetr_3d", 1, r"swin_unetr_3d is a 3D network, got spatial_dims=1: leave spatial_dims out"),
    ],
)
def test_contradicting_spatial_dims_is_refused(name, dims, message):
    with pytest.raises(ValueError, match=message):
        get_network(name, spatial_dims=dims)


@pytest.mark.parametrize("name", ["unet_3d", "espnet_3d", "tiny_unet"])
def test_agreeing_spatial_dims_is_accepted(name):
    dims = network_spatial_dims(name)
    net = get_network(name, out_channels=2, spatial_dims=dims)
    size = (16,) * dims
    assert net(torch.rand(1, 1, *size)).shape == (1, 2, *size)


def test_registry_entry_refuses_other_dimensions():
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3, got 1"):
        NetworkEntry(lambda i, o: torch.nn.Identity(), "x", spatial_dims=1)
    assert NetworkEntry(lambda i, o: torch.nn.Identity(), "x").spatial_dims == 2
    assert "spatial_dims" in {f.name for f in dataclasses.fields(NetworkEntry)}


def test_list_networks_has_the_3d_networks_with_their_roles():
    names = list_networks()
    for name in TEACHERS:
        assert "(teacher" in names[name] and "3D" in names[name], name
    for name in STUDENTS:
        assert "(student" in names[name] and "3D" in names[name], name
    assert {"unet", "tiny_unet", "espnet", "segresnet"} <= set(names)  # beside the 2D ones
