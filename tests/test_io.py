import errno
import math
import os
import pickle
import shutil
import time

import pytest
import torch

from mskd.io import (
    TMP_PREFIX,
    UnsafeCheckpointError,
    atomic_open,
    atomic_path,
    load_checkpoint,
    nonfinite_entry,
    remove_stale_temporaries,
    save_checkpoint,
)

FULL = "/dev/full"  # every write to it fails with ENOSPC, as on a full disk
needs_dev_full = pytest.mark.skipif(not os.path.exists(FULL), reason="no /dev/full")


class Unpicklable:
    """A class a checkpoint may not hold: loading it would need arbitrary unpickling."""


def _partial_then_fail(path, data=b"half a fi"):
    with open(path, "wb") as f:
        f.write(data)
    raise OSError("disk full")


def test_atomic_path_replaces_the_file_only_when_the_writer_returns(tmp_path):
    target = tmp_path / "sub" / "x.nii.gz"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(TMP_PREFIX) and tmp.name.endswith(".nii.gz")
        assert not target.exists()
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert os.listdir(target.parent) == ["x.nii.gz"]


def test_atomic_path_keeps_the_old_file_and_no_temporary_when_the_writer_fails(tmp_path):
    target = tmp_path / "x.csv"
    target.write_bytes(b"old")
    with pytest.raises(OSError, match="disk full"):
        with atomic_path(target) as tmp:
            _partial_then_fail(tmp)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["x.csv"]


def test_atomic_path_fails_when_the_writer_wrote_nothing(tmp_path):
    with pytest.raises(FileNotFoundError):
        with atomic_path(tmp_path / "x.json"):
            pass
    assert os.listdir(tmp_path) == []


def test_atomic_open_writes_text_whole_or_not_at_all(tmp_path):
    target = tmp_path / "a.txt"
    with atomic_open(target, "w", encoding="utf-8") as f:
        f.write("one")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_open(target, "w", encoding="utf-8") as f:
            f.write("two, partly")
            f.flush()
            raise RuntimeError("boom")
    assert target.read_text() == "one" and os.listdir(tmp_path) == ["a.txt"]
    with pytest.raises(ValueError, match="mode must start with 'w' or 'x', got 'a'"):
        with atomic_open(target, "a"):
            pass


def test_load_checkpoint_reads_tensors_and_plain_values(tmp_path):
    path = tmp_path / "ok.pt"
    torch.save({"model": {"w": torch.ones(2)}, "trainer": {"iteration": 3}, "python": (3, (1, 2), None)}, path)
    state = load_checkpoint(path)
    assert torch.equal(state["model"]["w"], torch.ones(2)) and state["python"] == (3, (1, 2), None)
    assert load_checkpoint(path, mmap=True)["trainer"] == {"iteration": 3}


def test_load_checkpoint_refuses_pickled_objects_naming_the_file(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.ones(2)}, "obj": Unpicklable()}, path)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_checkpoint(path, "teacher checkpoint")
    message = str(info.value)
    assert message.startswith(f"teacher checkpoint {path} holds pickled Python objects")
    assert "Unpicklable" in message and "torch.save(model.state_dict(), path)" in message
    assert "\n" not in message
    assert isinstance(info.value, ValueError) and isinstance(info.value.__cause__, pickle.UnpicklingError)


@pytest.mark.parametrize(
    "content, error, match",
    [
        (None, FileNotFoundError, "checkpoint not found: "),
        (b"not a checkpoint", ValueError, "is not a readable PyTorch checkpoint"),
    ],
)
def test_load_checkpoint_errors_name_the_file(tmp_path, content, error, match):
    path = tmp_path / "c.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(error, match=match) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_load_checkpoint_refuses_a_truncated_file(tmp_path):
    path = tmp_path / "t.pt"
    torch.save({"w": torch.ones(1000)}, path)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(ValueError, match="is not a readable PyTorch checkpoint"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "state, expected",
    [
        ({"model": {"a": torch.ones(2), "b": torch.tensor([1.0, math.nan])}}, "model/b"),
        ({"optimizer": {"state": {0: {"exp_avg": torch.tensor([math.inf])}}}}, "optimizer/state/0/exp_avg"),
        ({"rng": [torch.zeros(3, dtype=torch.uint8)], "x": 1.0}, None),
        ({"model": {"a": torch.ones(2)}, "trainer": {"iteration": 3}}, None),
        (torch.tensor([-math.inf]), "<tensor>"),
    ],
)
def test_nonfinite_entry_names_the_first_bad_tensor(state, expected):
    assert nonfinite_entry(state) == expected


def test_save_checkpoint_refuses_nan_weights_and_keeps_the_previous_file(tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint({"w": torch.ones(2)}, path)
    with pytest.raises(FloatingPointError, match=r"refusing to save checkpoint .*model\.pt: 'w' holds NaN or Inf"):
        save_checkpoint({"w": torch.tensor([1.0, math.nan])}, path)
    assert torch.equal(load_checkpoint(path)["w"], torch.ones(2))
    assert os.listdir(tmp_path) == ["model.pt"]


def test_save_checkpoint_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    save_checkpoint({"w": torch.ones(2)}, path)
    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: _partial_then_fail(f))
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"w": torch.zeros(2)}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["w"], torch.ones(2))
    assert os.listdir(tmp_path) == ["model.pt"]


def _write_to_full_device(path):
    with open(FULL, "wb") as f:
        f.write(b"x" * 4096)


@needs_dev_full
@pytest.mark.parametrize("writer", ["open", "torch.save"])
def test_a_full_disk_says_so_and_keeps_the_previous_file(tmp_path, monkeypatch, writer):
    # both writers hit a real ENOSPC: Python's as OSError, torch's as "RuntimeError: [enforce fail at
    # inline_container.cc:672] . unexpected pos 704 vs 598"
    path = tmp_path / "model.pt"
    save_checkpoint({"w": torch.ones(2)}, path)
    real_save = torch.save
    if writer == "open":
        monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: _write_to_full_device(f))
    else:
        monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: real_save(obj, FULL))
    with pytest.raises(OSError) as raised:
        save_checkpoint({"w": torch.zeros(100_000)}, path)
    monkeypatch.undo()
    error = raised.value
    free_mb = shutil.disk_usage(tmp_path).free / 1e6
    assert error.errno == errno.ENOSPC
    assert error.strerror.startswith(f"no space left on device writing {path}: ")
    assert error.strerror.endswith(f" MB free in {tmp_path}")
    assert abs(float(error.strerror.split(": ")[1].split()[0]) - free_mb) < 100
    assert type(error.__cause__) is (OSError if writer == "open" else RuntimeError)
    assert torch.equal(load_checkpoint(path)["w"], torch.ones(2))
    assert os.listdir(tmp_path) == ["model.pt"]


@pytest.mark.parametrize(
    "error",
    [OSError(errno.EACCES, "Permission denied"), RuntimeError("something else"), KeyboardInterrupt()],
    ids=["eacces", "runtime", "interrupt"],
)
def test_other_write_errors_pass_unchanged(tmp_path, error):
    with pytest.raises(type(error)) as raised:
        with atomic_path(tmp_path / "x.csv") as tmp:
            tmp.write_bytes(b"half")
            raise error
    assert raised.value is error and os.listdir(tmp_path) == []


def test_atomic_path_exclusive_keeps_a_file_created_meanwhile(tmp_path):
    target = tmp_path / "mlruns.db"
    with atomic_path(target, exclusive=True) as tmp:
        tmp.write_bytes(b"mine")
    assert target.read_bytes() == b"mine"
    with atomic_path(target, exclusive=True) as tmp:
        tmp.write_bytes(b"late")
    assert target.read_bytes() == b"mine" and os.listdir(tmp_path) == ["mlruns.db"]


def test_stale_temporaries_of_a_file_are_removed(tmp_path):
    old = time.time() - 3600
    stale = [tmp_path / f"{TMP_PREFIX}1-ab-mlruns.db", tmp_path / f"{TMP_PREFIX}1-ab-mlruns.db-journal"]
    live = tmp_path / f"{TMP_PREFIX}2-cd-mlruns.db"
    other = tmp_path / f"{TMP_PREFIX}3-ef-model.pt"
    for path in [*stale, live, other]:
        path.write_bytes(b"x")
    for path in [*stale, other]:
        os.utime(path, (old, old))
    assert sorted(remove_stale_temporaries(tmp_path / "mlruns.db")) == sorted(stale)
    assert sorted(os.listdir(tmp_path)) == sorted([live.name, other.name])
