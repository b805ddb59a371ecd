import pytest
import torch

from mskd.networks import (
    FeatureTaps,
    count_parameters,
    default_taps,
    get_network,
    list_networks,
    network_spatial_dims,
    tap_points,
)

WITH_TAPS = ["transunet_small", "enet", "erfnet", "espnet", "mobilenetv2_unet", "unet", "tiny_unet", "basic_unet"]
WITH_TAPS += ["swin_unetr"]
WITHOUT_TAPS = ["attention_unet", "flexible_unet", "segresnet"]


def test_every_network_is_listed_with_a_description():
    names = list_networks()
    assert set(WITH_TAPS + WITHOUT_TAPS + ["transunet"]) == {n for n in names if network_spatial_dims(n) == 2}
    assert all(isinstance(d, str) and d for d in names.values())


@pytest.mark.parametrize("name", WITH_TAPS)
def test_build_by_name_and_taps_have_declared_strides(name):
    torch.manual_seed(0)
    net = get_network(name, in_channels=1, out_channels=9).eval()
    points = tap_points(net)
    assert {"low", "high"} <= set(points)
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad(), FeatureTaps(net, {k: path for k, (path, _) in points.items()}) as taps:
        out = net(x)
    assert out.shape == (1, 9, 64, 64)
    for tap, (_, stride) in points.items():
        feature = taps.features[tap]
        assert feature.ndim == 4 and feature.shape[0] == 1
        assert feature.shape[-2:] == (64 // stride, 64 // stride), f"{name}:{tap}"


@pytest.mark.parametrize("name", WITHOUT_TAPS)
def test_networks_without_default_taps_say_what_to_do(name):
    net = get_network(name, out_channels=3)
    with pytest.raises(ValueError, match="no default tap points; name the sub-modules"):
        default_taps(net)


def test_constructor_arguments_override_defaults():
    small = get_network("unet", channels=(4, 8), strides=(2,))
    assert count_parameters(small) < count_parameters(get_network("unet"))
    assert default_taps(small) == {"low": "model.0", "high": "model.1.submodule"}


def test_default_taps_picks_named_stages():
    net = get_network("basic_unet")
    assert default_taps(net, ("low", "mid")) == {"low": "down_1", "mid": "down_2"}
    with pytest.raises(ValueError, match=r"not \['deep'\]"):
        default_taps(net, ("low", "deep"))


@pytest.mark.parametrize("name, message", [("resnet", "resnet"), ("UNET", "UNET")])
def test_unknown_name_lists_the_choices(name, message):
    with pytest.raises(ValueError, match=message) as err:
        get_network(name)
    assert "enet" in str(err.value)


def test_bad_channel_counts():
    with pytest.raises(ValueError, match="got 0, 9"):
        get_network("tiny_unet", in_channels=0)
