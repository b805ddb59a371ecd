import pytest
import torch
from monai.networks.nets import UNet

from mskd.networks import count_parameters, load_weights


def _net(channels=(4, 8, 16), out=3) -> UNet:
    return UNet(2, 1, out, channels=channels, strides=(2, 2), num_res_units=1)


def test_count_parameters_includes_frozen():
    net = _net()
    n = count_parameters(net)
    net.requires_grad_(False)
    assert count_parameters(net) == n == sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("wrap", [False, True])
def test_load_weights_round_trip(tmp_path, wrap):
    src, dst = _net(), _net()
    path = tmp_path / "m.pt"
    torch.save({"model": src.state_dict()} if wrap else src.state_dict(), path)
    load_weights(dst, path)
    for a, b in zip(src.state_dict().values(), dst.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


def test_missing_checkpoint_says_how_to_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="teacher checkpoint not found: .*nope.pt. Train the teacher first"):
        load_weights(_net(), tmp_path / "nope.pt", role="teacher")


def test_corrupt_checkpoint(tmp_path):
    path = tmp_path / "bad.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt is not a readable PyTorch checkpoint"):
        load_weights(_net(), path)


@pytest.mark.parametrize("other", [{"channels": (8, 16, 32)}, {"out": 4}])
def test_checkpoint_of_other_architecture(tmp_path, other):
    path = tmp_path / "other.pt"
    torch.save(_net(**other).state_dict(), path)
    with pytest.raises(ValueError, match="does not fit UNet .*shape mismatch"):
        load_weights(_net(), path, role="teacher")


class _Pickled:
    """Not a tensor: loading it would need arbitrary unpickling."""


def test_a_checkpoint_that_needs_unpickling_is_refused_naming_the_file(tmp_path):
    from mskd.io import UnsafeCheckpointError

    network = _net()
    path = tmp_path / "teacher.pt"
    torch.save({"model": network.state_dict(), "obj": _Pickled()}, path)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_weights(network, path, role="teacher")
    message = str(info.value)
    assert message.startswith(f"teacher checkpoint {path} holds pickled Python objects")
    assert "_Pickled" in message and "\n" not in message
