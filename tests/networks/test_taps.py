import pytest
import torch
from monai.networks.nets import UNet
from torch import nn

from mskd.networks import FeatureTaps


def _tiny_unet() -> UNet:
    return UNet(2, 1, 3, channels=(4, 8, 16), strides=(2, 2), num_res_units=1)


def test_taps_capture_named_outputs_and_remove_hooks():
    net = _tiny_unet()
    x = torch.rand(2, 1, 32, 32)
    with FeatureTaps(net, {"low": "model.0", "high": "model.1.submodule.1.submodule"}) as taps:
        out = net(x)
    assert out.shape == (2, 3, 32, 32)
    assert taps.features["low"].shape == (2, 4, 16, 16)
    assert taps.features["high"].shape == (2, 16, 8, 8)
    # hooks are gone after exit: a second forward records nothing new
    taps.features.clear()
    net(x)
    assert taps.features == {}
    assert not net.model[0]._forward_hooks


def test_taps_leave_forward_untouched():
    net = _tiny_unet().eval()
    x = torch.rand(1, 1, 32, 32)
    plain = net(x)
    with FeatureTaps(net, {"low": "model.0"}):
        tapped = net(x)
    torch.testing.assert_close(plain, tapped, rtol=0, atol=0)


def test_taps_keep_graph_for_student():
    net = _tiny_unet()
    with FeatureTaps(net, {"low": "model.0"}) as taps:
        net(torch.rand(1, 1, 16, 16))
    taps.features["low"].sum().backward()
    assert net.model[0].conv.unit0.conv.weight.grad is not None


def test_taps_unwrap_data_parallel():
    net = _tiny_unet()
    with FeatureTaps(nn.DataParallel(net), {"low": "model.0"}) as taps:
        net(torch.rand(1, 1, 16, 16))
    assert "low" in taps.features


def test_taps_first_tensor_of_tuple_output():
    class Pair(nn.Module):
        def forward(self, x):
            return x * 2, x

    net = nn.Sequential(Pair())
    with FeatureTaps(net, {"pair": "0"}) as taps:
        net(torch.ones(1, 1, 2, 2))
    torch.testing.assert_close(taps.features["pair"], torch.full((1, 1, 2, 2), 2.0))


@pytest.mark.parametrize(
    "path, hint",
    [("model.9", "did you mean"), ("nonexistent.layer", "not a sub-module")],
)
def test_taps_unknown_path_is_a_clear_error(path, hint):
    with pytest.raises(ValueError, match=hint) as err:
        FeatureTaps(_tiny_unet(), {"x": path})
    assert path in str(err.value) and "tap 'x'" in str(err.value)


def test_no_taps_is_a_no_op():
    net = _tiny_unet()
    with FeatureTaps(net, None) as taps:
        net(torch.rand(1, 1, 16, 16))
    assert taps.features == {}
