"""The up-front checks of a checkpoint (``mskd.networks.checkpoint``, run by the bundles' pre-flight): what a
self-describing checkpoint says is refused when the run differs, in one line naming the key, both values and the fix;
a plain state dict is used with a warning."""

from pathlib import Path

import pytest
import torch

from mskd.bundle import Bundle
from mskd.networks import UndescribedCheckpointWarning, checkpoint_metadata, get_network, save_weights
from mskd.networks.checkpoint import metadata_mismatch, read_checkpoint
from mskd.validation import Flag, bundle_problems

RUN = "tiny_unet_from_unet-mskd-s0"
BUNDLE = Bundle(Path(__file__).resolve().parents[2] / "bundles" / "mskd_synapse")


def _save(path, network="tiny_unet", num_classes=9, image_size=48, **kwargs):
    metadata = checkpoint_metadata(network, num_classes, image_size, run_name=RUN, **kwargs)
    save_weights(get_network(network, 1, num_classes, **metadata["network_kwargs"]), path, metadata)
    return path


def _checkpoint_lines(tmp_path, ckpt, flags=None, **run):
    """The pre-flight of ``inference.json`` on a missing input: its ``input`` line, then the checkpoint's (on the
    flags ``flags`` of a command that takes them from the checkpoint when left out)."""
    parser = BUNDLE.parser(("inference.json",), input=str(tmp_path / "no_input"), ckpt_path=str(ckpt), **run)
    shown = {key: Flag(flag, "the checkpoint's") for key, flag in (flags or {}).items()}
    problems = [p.line(shown) for p in bundle_problems(parser)]
    assert problems[0].startswith("input: ")
    return problems[1:]


def test_a_checkpoint_used_as_trained_has_no_problem(tmp_path):
    ckpt = _save(tmp_path / "m.pt", network_kwargs={"channels": [4, 8, 16, 32]})
    assert _checkpoint_lines(tmp_path, ckpt, student_kwargs={"channels": (4, 8, 16, 32)}, image_size=48) == []


@pytest.mark.parametrize(
    "run, flags, expected",
    [
        (
            {"image_size": 224},
            None,
            "image_size: student checkpoint {ckpt} was trained on 48x48 slices, this run uses 224x224; "
            "pass --image_size 48",
        ),
        (
            {"image_size": 224},
            {"image_size": "--image-size"},
            "--image-size: student checkpoint {ckpt} was trained on 48x48 slices, this run uses 224x224; "
            "pass --image-size 48 or omit it to use the checkpoint's",
        ),
        (
            {"student": "enet", "image_size": 48},
            None,
            "student: student checkpoint {ckpt} was trained as tiny_unet, this run builds enet; "
            "pass --student tiny_unet",
        ),
        (
            {"num_classes": 3, "image_size": 48},
            None,
            "num_classes: student checkpoint {ckpt} predicts 9 classes, this run's task has 3; it is a model of "
            "another task; use that task's bundle",
        ),
        (
            {"student_kwargs": {"channels": [8, 16, 32, 64]}, "image_size": 48},
            None,
            "student_kwargs: student checkpoint {ckpt} was built with student_kwargs {{}}, this run with "
            "{{'channels': [8, 16, 32, 64]}}; pass --student_kwargs '{{}}'",
        ),
    ],
)
def test_a_mismatch_is_refused_in_one_line_naming_key_values_and_fix(tmp_path, run, flags, expected):
    ckpt = _save(tmp_path / "m.pt")
    assert _checkpoint_lines(tmp_path, ckpt, flags=flags, **run) == [expected.format(ckpt=ckpt)]


def test_evaluation_refuses_another_runs_checkpoint(tmp_path):
    ckpt = _save(tmp_path / "tiny_unet_from_unet-mskd-s1.pt")  # seed 0's weights under seed 1's name
    run = {"network": "tiny_unet", "image_size": 48, "run_name": "tiny_unet_from_unet-mskd-s1"}
    assert metadata_mismatch(ckpt, "student", read_checkpoint(ckpt)[1], run) == [
        f"ckpt_path: student checkpoint {ckpt} was written by run {RUN}, this run evaluates "
        "tiny_unet_from_unet-mskd-s1; evaluate the run that wrote it, or train tiny_unet_from_unet-mskd-s1 first "
        "(each run keeps its own <run>.pt)"
    ]


def test_a_plain_state_dict_is_used_with_a_warning(tmp_path):
    torch.save(get_network("tiny_unet", 1, 9).state_dict(), tmp_path / "old.pt")
    with pytest.warns(UndescribedCheckpointWarning, match=r"old\.pt does not describe itself .* this run's image_size"):
        assert _checkpoint_lines(tmp_path, tmp_path / "old.pt", image_size=224) == []


class _Pickled:
    """Not a tensor: loading it would need arbitrary unpickling."""


def test_a_pickled_checkpoint_is_reported_as_holding_pickled_objects(tmp_path):
    torch.save({"model": get_network("tiny_unet", 1, 9).state_dict(), "obj": _Pickled()}, tmp_path / "m.pt")
    [line] = _checkpoint_lines(tmp_path, tmp_path / "m.pt")
    assert line.startswith(f"ckpt_path: student checkpoint {tmp_path / 'm.pt'} holds pickled Python objects")
    assert "_Pickled" in line and "not a readable" not in line


def test_a_non_tensor_value_is_reported_not_crashed_on(tmp_path):
    state = get_network("tiny_unet", 1, 9).state_dict()
    key = next(iter(state))
    torch.save({**state, key: "weights"}, tmp_path / "m.pt")
    assert _checkpoint_lines(tmp_path, tmp_path / "m.pt") == [
        f"ckpt_path: student checkpoint {tmp_path / 'm.pt'} holds a value of type str under '{key}', not a tensor: "
        "not a state dict of weights (save one with torch.save(model.state_dict(), path))"
    ]
