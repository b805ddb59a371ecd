import random

import numpy as np
import pytest
import torch

from mskd.engines import (
    LATEST_CHECKPOINT,
    RandomStates,
    checkpoint_run_id,
    epoch_seed,
    resume_checkpoint,
    seed_epoch,
)
from mskd.io import UnsafeCheckpointError


class Unpicklable:
    pass


def test_epoch_seed_depends_on_seed_rank_and_epoch_only():
    seeds = {epoch_seed(s, e, r) for s in (0, 1) for e in (1, 2, 3) for r in (0, 1)}
    assert len(seeds) == 12 and all(0 <= s < 2**32 for s in seeds)
    assert epoch_seed(0, 2, 1) == epoch_seed(0, 2, 1)
    # a fixed value, so a change of the hashing (which would change every run's data order) is noticed
    assert epoch_seed(0, 1, 0) == int(np.random.SeedSequence([0, 0, 1]).generate_state(1)[0])
    with pytest.raises(ValueError, match=r"seed, epoch and rank must be >= 0, got 0, -1, 0"):
        epoch_seed(0, -1)


def test_seed_epoch_reseeds_every_generator_and_the_dataset_transforms():
    from monai.transforms import Compose, RandFlipd

    dataset = type("D", (), {})()
    dataset.transform = Compose([RandFlipd(keys="x", prob=0.5)])

    def draws():
        return random.random(), np.random.rand(), torch.rand(1).item(), dataset.transform.transforms[0].R.rand()

    seed_epoch(0, 3, dataset=dataset)
    first = draws()
    torch.rand(5), np.random.rand(5)  # whatever ran in between (validation, another epoch) is forgotten
    seed_epoch(0, 3, dataset=dataset)
    assert draws() == first
    seed_epoch(0, 4, dataset=dataset)
    assert draws() != first


def test_random_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    states = RandomStates()
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.randn()  # leaves a cached Gaussian in NumPy's state
    torch.save({"rng": states.state_dict()}, tmp_path / "rng.pt")
    expected = (random.random(), np.random.randn(), torch.rand(2))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    states.load_state_dict(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    got = (random.random(), np.random.randn(), torch.rand(2))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])


def _save(run_dir, iteration=5, epoch_length=4, max_epochs=3, run_id="abc"):
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer = {"iteration": iteration, "epoch_length": epoch_length, "max_epochs": max_epochs}
    torch.save({"trainer": trainer, "run": {"run_id": run_id}}, run_dir / LATEST_CHECKPOINT)
    return str(run_dir / LATEST_CHECKPOINT)


def test_resume_checkpoint_of_an_unfinished_run(tmp_path):
    path = _save(tmp_path / "run")
    assert resume_checkpoint(tmp_path / "run", True) == path
    assert resume_checkpoint(tmp_path / "run", "true") == path
    assert checkpoint_run_id(path) == "abc"
    assert resume_checkpoint(tmp_path / "none", True) is None and checkpoint_run_id(None) is None


def test_resume_checkpoint_starts_afresh_when_told_or_when_the_run_finished(tmp_path):
    _save(tmp_path / "run")
    with pytest.warns(UserWarning, match="resume is false: starting afresh; .*latest.pt will be replaced"):
        assert resume_checkpoint(tmp_path / "run", "false") is None
    _save(tmp_path / "done", iteration=12)
    with pytest.warns(UserWarning, match=r"is the checkpoint of a finished run \(3 epochs\); starting a new run"):
        assert resume_checkpoint(tmp_path / "done", True) is None


def test_checkpoint_run_id_without_tracking(tmp_path):
    assert checkpoint_run_id(_save(tmp_path / "run", run_id=None)) is None


def test_resume_checkpoint_refuses_foreign_and_unsafe_files(tmp_path):
    (tmp_path / "run").mkdir()
    torch.save({"model": {"w": torch.ones(1)}}, tmp_path / "run" / LATEST_CHECKPOINT)
    with pytest.raises(ValueError, match="holds no trainer state.*--resume false"):
        resume_checkpoint(tmp_path / "run")
    torch.save({"trainer": Unpicklable()}, tmp_path / "run" / LATEST_CHECKPOINT)
    with pytest.raises(UnsafeCheckpointError, match="resume checkpoint .*latest.pt holds pickled Python objects"):
        resume_checkpoint(tmp_path / "run")
