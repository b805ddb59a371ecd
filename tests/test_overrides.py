import json

import pytest

from mskd.overrides import code_in_overrides, unknown_keys


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"seed": 1, "run_name": "a$b", "loss": "@seg_loss", "net": "%seg_loss", "tags": {"$key": 1}}, []),
        ({"seed": "$1"}, ["seed"]),
        ({"a#_target_": "os.system"}, ["a#_target_"]),
        ({"a::_target_": "os.system"}, ["a::_target_"]),
        ({"a": {"b": {"_target_": "os.system"}}}, ["a"]),
        ({"a": [1, ["$x"]]}, ["a"]),
        ({"a": ("$x",)}, ["a"]),
        ({"a": "%other.yaml"}, ["a"]),  # a macro naming a file brings that file's entries in
        ({"a": "%/configs/other.json#net"}, ["a"]),
        ({"ok": 1, "bad": "$1", "also": {"_target_": "X"}}, ["bad", "also"]),
    ],
)
def test_code_in_overrides(overrides, expected):
    assert code_in_overrides(overrides) == expected


@pytest.fixture
def stack(tmp_path):
    """A bundle's config stack (base.json, over.json) and its metadata file."""
    configs = tmp_path / "bundle" / "configs"
    configs.mkdir(parents=True)
    base = {"lr": 0.1, "loss": {"_target_": "X", "weight": 0.5}, "handlers": [{"print_lr": False}], "kwargs": {}}
    (configs / "base.json").write_text(json.dumps({**base, "epochs": 3}))
    (configs / "over.json").write_text(json.dumps({"extra": 1}))
    (configs / "metadata.json").write_text(json.dumps({"version": "0.1.0"}))
    return [configs / "base.json", configs / "over.json"], configs / "metadata.json"


@pytest.mark.parametrize(
    "key, hint",
    [
        ("lr", None),
        ("extra", None),  # from the second file
        ("loss#weight", None),
        ("loss::weight", None),
        ("handlers#0#print_lr", None),
        ("_meta_#version", None),
        ("lrr", "; did you mean lr?"),
        ("loss#wieght", "; did you mean loss#weight?"),
        ("los#weight", "; did you mean loss#weight?"),
        ("_meta_#versoin", "; did you mean _meta_#version?"),
        ("handlers#1#print_lr", ""),  # past the list's end
        ("kwargs#dropout", "; to add a key to kwargs, override the whole of kwargs (a JSON object)"),
        ("epochs#x", ""),  # epochs is a number
        ("zzzz", ""),
    ],
)
def test_unknown_keys(stack, key, hint):
    files, meta = stack
    expected = (
        [] if hint is None else [f"{key}: no such config key in {files[0].parents[1]} (base.json, over.json){hint}"]
    )
    assert unknown_keys(files, [key], meta) == expected


def test_unknown_keys_without_metadata_know_no_meta_ids(stack):
    files, _ = stack
    assert unknown_keys(files, ["lr", "_meta_#version"]) == [
        f"_meta_#version: no such config key in {files[0].parents[1]} (base.json, over.json); to add a key to _meta_, "
        "override the whole of _meta_ (a JSON object)"
    ]
