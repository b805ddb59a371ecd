import os

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import SaveImaged

from mskd.data import AtomicNibabelWriter


def _save(tmp_path, value):
    """Save a 4x4x2 label map as inference.json does (SaveImaged, uint8, postfix 'seg')."""
    affine = torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0]))
    pred = MetaTensor(torch.full((1, 4, 4, 2), value), affine=affine, meta={"filename_or_obj": "case_1.nii.gz"})
    saver = SaveImaged(
        keys="pred",
        output_dir=str(tmp_path),
        output_postfix="seg",
        output_dtype=torch.uint8,
        writer="mskd.data.AtomicNibabelWriter",
        resample=False,
        separate_folder=False,
        print_log=False,
    )
    saver({"pred": pred})
    return tmp_path / "case_1_seg.nii.gz"


def test_predictions_are_written_through_the_atomic_writer(tmp_path):
    path = _save(tmp_path, 3)
    image = nib.load(path)
    assert image.shape == (4, 4, 2) and image.get_data_dtype() == np.uint8
    assert np.all(np.asarray(image.dataobj) == 3)
    np.testing.assert_allclose(np.diag(image.affine), [2, 2, 3, 1])
    assert os.listdir(tmp_path) == ["case_1_seg.nii.gz"]


def test_a_failed_write_keeps_the_previous_prediction(tmp_path, monkeypatch):
    path = _save(tmp_path, 3)
    before = path.read_bytes()

    def partial(image, filename):
        with open(filename, "wb") as f:
            f.write(before[:20])
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", partial)
    with pytest.raises(RuntimeError, match="disk full"):  # SaveImage reports the writer's error
        _save(tmp_path, 5)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["case_1_seg.nii.gz"]


def test_the_writer_class_is_monai_nibabel_writer():
    from monai.data import NibabelWriter

    assert issubclass(AtomicNibabelWriter, NibabelWriter)
