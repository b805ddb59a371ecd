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


# --- self-describing checkpoints --------------------------------------------------------------------------------

METADATA = {
    "network": "tiny_unet",
    "num_classes": 3,
    "image_size": 48,
    "network_kwargs": {"channels": (4, 8, 16, 32)},
    "organs": ["kidney", "tumour"],
    "hu_window": [-200.0, 300.0],
    "run_name": "tiny_unet-baseline-s0",
}


def _tiny(**kwargs):
    from mskd.networks import get_network

    return get_network("tiny_unet", 1, 3, **{"channels": (4, 8, 16, 32), **kwargs})


def test_metadata_round_trips_with_the_weights_and_loads_weights_only(tmp_path):
    from mskd.networks import checkpoint_metadata, load_network, read_checkpoint, save_weights

    config = tmp_path / "run.config.json"
    config.write_text('{"seed": 0}')
    metadata = checkpoint_metadata(**METADATA, config=config)
    network = _tiny()
    save_weights(network, tmp_path / "m.pt", metadata)

    raw = torch.load(tmp_path / "m.pt", weights_only=True)  # plain values only: no unpickling needed
    assert sorted(raw) == ["model", "mskd"]
    assert raw["mskd"] == {
        "format": 1,
        "network": "tiny_unet",
        "network_kwargs": {"channels": [4, 8, 16, 32]},  # tuples saved as lists
        "in_channels": 1,
        "num_classes": 3,
        "image_size": 48,
        "organs": ["kidney", "tumour"],
        "hu_window": [-200.0, 300.0],
        "run_name": "tiny_unet-baseline-s0",
        "config_sha256": "de7d7744ccd7722e315c562dad156564c645209f9c9e27871fc44265ed15c99c",  # sha256sum of the file
    }
    state, read = read_checkpoint(tmp_path / "m.pt", mmap=True)
    assert read == raw["mskd"] and state.keys() == network.state_dict().keys()
    rebuilt, read = load_network(tmp_path / "m.pt")  # the checkpoint rebuilds its own network
    assert read["image_size"] == 48
    for a, b in zip(network.state_dict().values(), rebuilt.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    load_weights(_tiny(), tmp_path / "m.pt")  # and still loads into a network built by hand


def test_plain_state_dicts_still_read_without_metadata(tmp_path):
    from mskd.networks import load_network, read_checkpoint

    torch.save(_tiny().state_dict(), tmp_path / "old.pt")
    state, metadata = read_checkpoint(tmp_path / "old.pt")
    assert metadata is None and state.keys() == _tiny().state_dict().keys()
    load_weights(_tiny(), tmp_path / "old.pt")
    with pytest.raises(ValueError, match=r"old\.pt does not describe itself \(a plain state dict\): build its network"):
        load_network(tmp_path / "old.pt")


@pytest.mark.parametrize(
    "value, match",
    [
        ({"network": "tiny_unet"}, r"lacks \['network_kwargs', 'in_channels', 'num_classes', 'image_size'\]"),
        ([1, 2], "the 'mskd' entry is a list, not a dict"),
        ({**METADATA, "network_kwargs": {}, "in_channels": 1, "format": 2}, "metadata format 2 is newer"),
    ],
)
def test_malformed_metadata_is_refused(tmp_path, value, match):
    from mskd.networks import read_checkpoint

    torch.save({"model": _tiny().state_dict(), "mskd": value}, tmp_path / "m.pt")
    with pytest.raises(ValueError, match=match):
        read_checkpoint(tmp_path / "m.pt", "student")


@pytest.mark.parametrize(
    "change, error, match",
    [
        ({"network_kwargs": {"norm": object()}}, TypeError, r"mskd\.network_kwargs\.norm must hold plain values"),
        ({"image_size": 0}, ValueError, r"\{'image_size': 0\} must be integers >= 1"),
        ({"organs": {1: "liver"}}, TypeError, "must have string keys, got 1"),
    ],
)
def test_metadata_takes_plain_values_only(change, error, match):
    from mskd.networks import checkpoint_metadata

    with pytest.raises(error, match=match):
        checkpoint_metadata(**{**METADATA, **change})


def test_a_non_tensor_among_the_weights_is_refused_in_one_line(tmp_path):
    from mskd.networks import read_state_dict

    state = _net().state_dict()
    state[next(iter(state))] = 3
    torch.save(state, tmp_path / "m.pt")
    with pytest.raises(ValueError) as info:
        read_state_dict(tmp_path / "m.pt", "student", mmap=True)
    key = next(iter(state))
    assert str(info.value) == (
        f"student checkpoint {tmp_path / 'm.pt'} holds a value of type int under '{key}', not a tensor: not a state "
        "dict of weights (save one with torch.save(model.state_dict(), path))"
    )
