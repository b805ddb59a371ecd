"""OverlayHandler in a tracked training: one PNG per validation, fixed slices, teacher column; slice choice rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from mskd.tracking.overlays import OverlayHandler, OverlaySlice, overlay_figure, select_slice, slice_dice
from tests.tracking.tracked_training import EXPECTED_SLICES, ORGANS, case_volumes, conv_net

PNG = b"\x89PNG\r\n\x1a\n"
CLASS_NAMES = dict(enumerate(ORGANS, start=1))


def test_one_png_per_validation_is_logged(tracked):
    client = MlflowClient(tracking_uri=tracked.uri)
    logged = {a.path for a in client.list_artifacts(tracked.run_id, "overlays")}
    assert logged == {"overlays/epoch_001.png", "overlays/epoch_002.png"}
    for name in ("epoch_001.png", "epoch_002.png"):
        local = client.download_artifacts(tracked.run_id, f"overlays/{name}", str(tracked.root / "download"))
        with open(local, "rb") as f:
            assert f.read(8) == PNG
    assert not list((tracked.root / "overlays").glob(".tmp-*"))  # written under a temporary name, then renamed


def test_slices_are_chosen_once_by_organ_count(tracked):
    assert tracked.slices_after_first_validation == EXPECTED_SLICES
    assert tracked.overlay.slices == EXPECTED_SLICES  # unchanged by the second validation
    assert [r.index for r in tracked.overlay.rows] == [EXPECTED_SLICES[i] for i in range(3)]


def test_rows_hold_the_image_in_hu_and_the_label_maps(tracked):
    row = tracked.overlay.rows[0]
    image, label = case_volumes(0)
    z = EXPECTED_SLICES[0]
    np.testing.assert_array_equal(row.label, label[0, :, :, z].astype(np.int64))
    lo, hi = tracked.overlay.window
    np.testing.assert_allclose(row.image, lo + image[0, :, :, z] * (hi - lo), rtol=1e-5, atol=1e-3)
    assert row.pred.shape == row.label.shape and row.teacher is None
    assert row.case == "validation case 1"


@pytest.mark.parametrize(
    "case, expected",
    [
        (0, 4),  # the only slice showing all three organs
        (1, 2),  # two organs on z=2 and z=5: z=2 has more foreground voxels
        (2, 0),  # one organ of the same size everywhere: the lowest index
    ],
)
def test_select_slice(case, expected):
    _, label = case_volumes(case)
    assert select_slice(label[0]) == expected
    assert select_slice(torch.as_tensor(label[0])) == expected


def test_select_slice_without_foreground_takes_the_middle():
    assert select_slice(np.zeros((4, 4, 7))) == 3


def test_select_slice_rejects_non_3d():
    with pytest.raises(ValueError, match=r"3D label map .* got shape \(4, 4\)"):
        select_slice(np.zeros((4, 4)))


@pytest.mark.parametrize(
    "pred, label, expected",
    [
        ([1, 1, 0, 0], [1, 1, 0, 0], 1.0),
        ([1, 0, 0, 0], [1, 1, 0, 0], 2 / 3),
        ([1, 1, 2, 0], [1, 1, 0, 0], 0.5),  # organ 2 spurious: Dice 0, averaged with organ 1's 1
        ([0, 0, 0, 0], [0, 0, 0, 0], math.nan),
    ],
)
def test_slice_dice(pred, label, expected):
    value = slice_dice(np.array(pred), np.array(label), [1, 2, 3])
    assert (math.isnan(value) and math.isnan(expected)) or value == pytest.approx(expected)


def _rows(teacher: bool) -> list[OverlaySlice]:
    rows = []
    for case in range(2):
        image, label = case_volumes(case)
        z = select_slice(label[0])
        lab = label[0, :, :, z].astype(np.int64)
        rows.append(OverlaySlice(f"c{case}", z, image[0, :, :, z] * 400 - 125, lab, lab, lab if teacher else None))
    return rows


@pytest.mark.parametrize("teacher, columns", [(False, 2), (True, 3)])
def test_figure_has_a_teacher_column_only_with_a_teacher(teacher, columns):
    fig = overlay_figure(_rows(teacher), CLASS_NAMES, title="t", pred_title="student")
    assert len(fig.axes) == 2 * columns
    titles = [ax.get_title() for ax in fig.axes[:columns]]
    assert titles[0] == "ground truth" and titles[1] == "student: slice Dice 1.00"
    assert (titles[-1] == "teacher: slice Dice 1.00") == teacher
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["spleen", "right kidney", "left kidney"]


def test_figure_needs_rows():
    with pytest.raises(ValueError, match="at least one slice"):
        overlay_figure([], CLASS_NAMES)


def test_teacher_column_in_an_evaluator(tmp_path):
    """The teacher is run on the same slices; its prediction is kept per row, and written without MLflow."""
    from monai.data import DataLoader, Dataset
    from monai.engines import SupervisedEvaluator
    from monai.inferers import SliceInferer
    from monai.transforms import AsDiscreted

    teacher = conv_net(seed=1)
    handler = OverlayHandler(ORGANS, tmp_path, num_cases=2, teacher=teacher, filename="cases_{epoch}.png")
    data = [dict(zip(("image", "label"), map(torch.as_tensor, case_volumes(i)), strict=True)) for i in range(3)]
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(Dataset(data), batch_size=2),
        network=conv_net(seed=2),
        inferer=SliceInferer(roi_size=(32, 32), spatial_dim=2),
        postprocessing=AsDiscreted(keys="pred", argmax=True),
    )
    handler.attach(evaluator)
    teacher.train()
    evaluator.run()
    assert teacher.training  # the teacher's mode is restored
    assert [r.index for r in handler.rows] == [EXPECTED_SLICES[0], EXPECTED_SLICES[1]]  # the first two cases only
    image, _ = case_volumes(0)
    with torch.no_grad():
        expected = teacher.eval()(torch.as_tensor(image[None, :, :, :, EXPECTED_SLICES[0]])).argmax(1)[0].numpy()
    np.testing.assert_array_equal(handler.rows[0].teacher, expected)
    assert handler.last_path == tmp_path / "cases_1.png" and handler.last_path.read_bytes()[:8] == PNG


def test_prediction_on_another_grid_than_the_image(tmp_path):
    """Evaluation inverts pred and label to the original grid; the image is resampled to it for display."""
    handler = OverlayHandler(ORGANS, tmp_path, num_cases=1)
    image, label = case_volumes(0)
    big_label = torch.as_tensor(label).repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)  # (1, 64, 64, 8)
    row = handler._row({"image": torch.as_tensor(image), "label": big_label, "pred": big_label}, 0)
    assert row.image.shape == row.label.shape == (64, 64)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"class_names": []}, "at least one foreground class"),
        ({"num_cases": 0}, "num_cases must be >= 1, got 0"),
        ({"window": (300, 100)}, r"lo < hi, got \(300, 100\)"),
        ({"scaled_range": (1.0, 1.0)}, r"b_min < b_max, got \(1.0, 1.0\)"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        OverlayHandler(**{"class_names": ORGANS, "output_dir": tmp_path, **kwargs})


def test_missing_output_key(tmp_path):
    handler = OverlayHandler(ORGANS, tmp_path)
    with pytest.raises(KeyError, match="needs 'pred' in every output item"):
        handler._row({"image": torch.zeros(1, 4, 4, 2), "label": torch.zeros(1, 4, 4, 2)}, 0)


def test_prediction_and_label_shapes_must_match(tmp_path):
    handler = OverlayHandler(ORGANS, tmp_path)
    item = {"image": torch.zeros(1, 4, 4, 2), "label": torch.zeros(1, 4, 4, 2), "pred": torch.zeros(1, 4, 4, 3)}
    with pytest.raises(ValueError, match=r"'pred' shape \(4, 4, 3\) differs from 'label' shape \(4, 4, 2\)"):
        handler._row(item, 0)
