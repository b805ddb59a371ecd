"""`mskd predict`: the student and its image size come from a self-describing checkpoint unless given; a given one
that is not the checkpoint's is refused before anything runs."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from mskd.bundle import Bundle
from mskd.networks import UndescribedCheckpointWarning, checkpoint_metadata, get_network, save_weights
from mskd.predict import predict
from mskd.validation import ValidationError

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "mskd_synapse"
KWARGS = {"channels": [4, 8, 16, 32]}  # not the bundle's tiny_unet: the weights load only with the checkpoint's


@pytest.fixture
def ct(tmp_path):
    """A small CT volume in HU (air included), 1.5 mm voxels."""
    volume = np.random.default_rng(0).integers(-1000, 300, (20, 18, 4)).astype(np.int16)
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(volume, np.diag([1.5, 1.5, 3.0, 1.0])), path)
    return path


@pytest.fixture
def student(tmp_path):
    """A tiny_unet trained (as far as its checkpoint says) at 16x16."""
    torch.manual_seed(0)
    metadata = checkpoint_metadata("tiny_unet", 9, 16, network_kwargs=KWARGS, run_name="tiny_unet-baseline-s0")
    return save_weights(get_network("tiny_unet", 1, 9, **KWARGS), tmp_path / "student.pt", metadata)


@pytest.fixture
def overrides(monkeypatch):
    """What predict hands to the bundle run (the run itself is skipped)."""
    captured = {}
    monkeypatch.setattr(Bundle, "run", lambda self, files, **kwargs: captured.update(kwargs))
    return captured


def test_the_student_and_its_size_come_from_the_checkpoint(ct, student, overrides, tmp_path):
    predict(BUNDLE, ct, tmp_path / "out", checkpoint=student)
    assert {k: overrides[k] for k in ("student", "student_kwargs", "image_size")} == {
        "student": "tiny_unet",
        "student_kwargs": KWARGS,
        "image_size": 16,
    }


@pytest.mark.parametrize(
    "given, expected",
    [
        (
            {"image_size": 224},
            "--image-size: student checkpoint {ckpt} was trained on 16x16 slices, this run uses 224x224; "
            "pass --image-size 16 or omit it to use the checkpoint's",
        ),
        (
            {"student": "enet"},
            "--student: student checkpoint {ckpt} was trained as tiny_unet, this run builds enet; "
            "pass --student tiny_unet or omit it to use the checkpoint's",
        ),
    ],
)
def test_a_setting_the_checkpoint_was_not_trained_with_is_refused(ct, student, tmp_path, given, expected):
    """The bundle's pre-flight (its first ``initialize`` step) refuses it; the line names this command's flag."""
    with pytest.raises(ValidationError) as info:
        predict(BUNDLE, ct, tmp_path / "out", checkpoint=student, **given)
    assert info.value.lines == [expected.format(ckpt=student)]
    assert not (tmp_path / "out").exists()  # nothing ran


def test_a_plain_state_dict_runs_at_the_bundles_settings_with_a_warning(ct, tmp_path, monkeypatch):
    torch.save(get_network("tiny_unet").state_dict(), tmp_path / "old.pt")
    captured = {}
    run = Bundle.run
    monkeypatch.setattr(
        Bundle, "run", lambda self, files, **kwargs: captured.update(kwargs) or run(self, files, **kwargs)
    )
    with pytest.warns(UndescribedCheckpointWarning, match="this run's image_size cannot be checked"):
        [written] = predict(BUNDLE, ct, tmp_path / "out", checkpoint=tmp_path / "old.pt")
    assert not {"student", "student_kwargs", "image_size"} & set(captured)  # inference.json's own
    assert nib.load(written).shape == (20, 18, 4)


def test_predict_runs_the_checkpoints_network_at_its_size(ct, student, tmp_path):
    [written] = predict(BUNDLE, ct, tmp_path / "out", checkpoint=student)
    assert written == tmp_path / "out" / "ct_seg.nii.gz"
    seg = nib.load(written)
    assert seg.shape == (20, 18, 4) and set(np.unique(np.asarray(seg.dataobj))) <= set(range(9))
