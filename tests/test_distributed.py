"""Distributed helpers in one process: device and backend choice, the launch checks, the sample recorder."""

import json
import socket

import pytest
import torch
from ignite.engine import Engine, Events
from monai.data import DataLoader, Dataset, DistributedSampler

import mskd.distributed as md


@pytest.fixture
def no_launcher(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)


@pytest.fixture
def world_of_one(monkeypatch):
    """The environment ``torchrun --nproc_per_node=1`` would set, on a free port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    yield
    md.destroy_process_group()


@pytest.mark.parametrize("cuda, backend", [(False, "gloo"), (True, "nccl")])
def test_default_backend(monkeypatch, cuda, backend):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert md.default_backend() == backend


@pytest.mark.parametrize(
    "cuda, gpus, local_rank, expected",
    [(False, 0, "1", "cpu"), (True, 2, "0", "cuda:0"), (True, 2, "1", "cuda:1")],
)
def test_device_is_cuda_local_rank_or_cpu(monkeypatch, cuda, gpus, local_rank, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    assert md.local_rank() == int(local_rank)
    assert md.device() == torch.device(expected)


def test_device_rejects_more_processes_than_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(ValueError, match=r"LOCAL_RANK=2 but this node has 2 GPU.*--nproc_per_node to at most 2"):
        md.device()


def test_single_process_defaults(no_launcher):
    assert (md.get_rank(), md.get_world_size(), md.is_main_process(), md.local_rank()) == (0, 1, True, 0)
    md.destroy_process_group()  # nothing to destroy: no error


def test_init_without_torchrun_says_how_to_launch(no_launcher):
    with pytest.raises(RuntimeError, match=r"needs \['RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT'\].*torchrun"):
        md.init_process_group()


def test_nccl_without_cuda_is_refused(world_of_one, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="backend 'nccl' needs CUDA; use 'gloo' on CPU"):
        md.init_process_group("nccl")


def test_init_joins_once_and_syncs_ignite(world_of_one):
    import ignite.distributed as idist

    assert md.init_process_group("gloo") is True
    assert md.init_process_group("gloo") is False  # already joined
    assert (md.get_rank(), md.get_world_size(), md.is_main_process()) == (0, 1, True)
    assert idist.backend() == "gloo" and idist.get_nproc_per_node() == 1  # synced, no lazy collective left
    md.destroy_process_group()
    assert idist.backend() is None and md.get_world_size() == 1


@pytest.mark.parametrize(
    "items, world, message",
    [
        (0, 1, r"0 validation cases for 1 processes: each process needs at least one; set --num_val_cases >= 1"),
        (1, 2, r"1 validation cases for 2 processes: .* set --num_val_cases >= 2"),
    ],
)
def test_check_per_rank_names_the_option(monkeypatch, items, world, message):
    monkeypatch.setattr(md, "get_world_size", lambda: world)
    with pytest.raises(ValueError, match=message):
        md.check_per_rank(list(range(items)), "validation cases", "--num_val_cases")


@pytest.mark.parametrize("items, world", [(1, 1), (2, 2), (5, 2)])
def test_check_per_rank_passes(monkeypatch, items, world):
    monkeypatch.setattr(md, "get_world_size", lambda: world)
    assert md.check_per_rank(list(range(items)), "validation cases", "--num_val_cases") == items


def _loader(rank: int, num_replicas: int = 2) -> DataLoader:
    data = [{"image": f"/data/imagesTr/case_{i}.nii.gz", "x": torch.tensor([float(i)])} for i in range(5)]
    dataset = Dataset(data, transform=lambda d: d["x"])
    sampler = DistributedSampler(dataset, even_divisible=False, num_replicas=num_replicas, rank=rank, shuffle=False)
    return DataLoader(dataset, batch_size=2, sampler=sampler)


@pytest.mark.parametrize(
    "rank, items, iterations",
    [(0, ["case_0.nii.gz", "case_2.nii.gz", "case_4.nii.gz"], 2), (1, ["case_1.nii.gz", "case_3.nii.gz"], 1)],
)
def test_record_samples_writes_what_the_sampler_drew(tmp_path, rank, items, iterations):
    network = torch.nn.Linear(2, 1)
    with torch.no_grad():
        network.weight.fill_(0.5)
        network.bias.fill_(-0.25)
    engine = Engine(lambda e, batch: None)

    @engine.on(Events.EPOCH_COMPLETED)
    def _metric(e):
        e.state.metrics["val_mean_dice"] = 0.5

    md.RecordSamples(tmp_path, name="validate", network=network).attach(engine)
    engine.run(_loader(rank), max_epochs=2)
    written = json.loads((tmp_path / "validate-rank0.json").read_text())  # one process: the file says rank 0
    assert written["rank"] == 0 and written["world_size"] == 1
    assert [e["epoch"] for e in written["epochs"]] == [1, 2]
    first = written["epochs"][0]
    assert first["items"] == items and first["iterations"] == iterations
    assert first["metrics"] == {"val_mean_dice": 0.5} and first["parameter_sum"] == 0.75


def test_record_samples_without_a_sampler_warns(tmp_path):
    engine = Engine(lambda e, batch: None)
    md.RecordSamples(tmp_path, name="train").attach(engine)
    with pytest.warns(UserWarning, match="train: the engine's data loader has no sampler"):
        engine.run([1, 2, 3], max_epochs=1)
    [epoch] = json.loads((tmp_path / "train-rank0.json").read_text())["epochs"]
    assert epoch["items"] == [] and epoch["iterations"] == 3
