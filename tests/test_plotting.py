"""Tests for the CT slices, label overlays and colours of mskd.plotting."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.colors import to_hex, to_rgb
from matplotlib.contour import ContourSet
from matplotlib.figure import Figure

from mskd.data.labels import KITS_LABELS, SYNAPSE_LABELS
from mskd.plotting import (
    LABEL_COLOURS,
    add_legend,
    btcv_to_synapse,
    draw_overlay,
    label_centre,
    load_ras,
    ras_slice,
)


def _axes() -> Axes:
    return Figure().subplots()


def _slice_with_labels() -> tuple[np.ndarray, np.ndarray]:
    image = np.linspace(-200.0, 300.0, 20 * 30).reshape(20, 30)
    label = np.zeros((20, 30), dtype=np.uint8)
    label[2:6, 3:9] = 1  # spleen
    label[8:15, 0:12] = 5  # liver, touching the left border (the outline must still close)
    label[16:18, 20:22] = 7  # aorta
    label[0, 29] = 12  # not a Synapse class: ignored
    return image, label


# ----------------------------------------------------------------------------------------------------------------------
# palette
# ----------------------------------------------------------------------------------------------------------------------
def test_label_colours_cover_every_class_once() -> None:
    for task, names in (("synapse", SYNAPSE_LABELS), ("kits", KITS_LABELS)):
        colours = LABEL_COLOURS[task]
        assert sorted(colours) == [k for k in sorted(names) if k > 0]
        assert len({to_hex(c) for c in colours.values()}) == len(colours), f"{task}: colours must differ"
        for colour in colours.values():
            assert max(to_rgb(colour)) > 0.3, "no near-black colour: it would vanish on CT"


# ----------------------------------------------------------------------------------------------------------------------
# draw_overlay
# ----------------------------------------------------------------------------------------------------------------------
def test_draw_overlay_contours_each_present_label() -> None:
    ax = _axes()
    image, label = _slice_with_labels()
    artists = draw_overlay(ax, image, label, window=(-125, 275), class_names=SYNAPSE_LABELS, spacing=(2.0, 0.5))
    assert sorted(artists) == [1, 5, 7]
    for k, artist in artists.items():
        assert isinstance(artist, ContourSet)
        assert artist in ax.collections or any(artist is c for c in ax.get_children())
        np.testing.assert_allclose(artist.get_edgecolor()[0][:3], to_rgb(LABEL_COLOURS["synapse"][k]))
    # axes in mm: 30 columns of 2 mm, 20 rows of 0.5 mm, row 0 at the top
    assert ax.get_xlim() == (0.0, 60.0)
    assert ax.get_ylim() == (10.0, 0.0)
    ct = ax.images[0]
    assert ct.get_clim() == (-125.0, 275.0)
    # the liver outline touches the border but is closed: it reaches x = 0 mm
    vertices = np.concatenate([p.vertices for p in artists[5].get_paths()])
    assert vertices[:, 0].min() <= 1.0


def test_draw_overlay_filled_and_custom_colours() -> None:
    ax = _axes()
    image, label = _slice_with_labels()
    artists = draw_overlay(ax, image, label, contour=False, alpha=0.5, colours={5: "#ff00ff"})
    assert sorted(artists) == [1, 5, 7]
    fill = artists[5]
    assert all(a is fill for a in artists.values()) and len(ax.images) == 2
    rgba = fill.get_array()
    np.testing.assert_allclose(rgba[10, 5], (1.0, 0.0, 1.0, 0.5))
    np.testing.assert_allclose(rgba[0, 0], (0.0, 0.0, 0.0, 0.0))


def test_draw_overlay_kits_palette_and_image_only() -> None:
    label = np.zeros((8, 8), dtype=np.uint8)
    label[2:5, 2:5] = 2
    artists = draw_overlay(_axes(), np.zeros((8, 8)), label, class_names=KITS_LABELS)
    np.testing.assert_allclose(artists[2].get_edgecolor()[0][:3], to_rgb(LABEL_COLOURS["kits"][2]))
    assert draw_overlay(_axes(), np.zeros((8, 8))) == {}


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        ({"image2d": np.zeros((4, 4, 4))}, "(4, 4, 4)"),
        ({"label2d": np.zeros((5, 4))}, "(5, 4)"),
        ({"window": (100, -100)}, "(100, -100)"),
        ({"spacing": (1.0, 0.0)}, "(1.0, 0.0)"),
        ({"alpha": 1.5}, "1.5"),
    ],
)
def test_draw_overlay_rejects(kwargs: dict, bad: str) -> None:
    args = {"image2d": np.zeros((4, 4)), "label2d": np.zeros((4, 4), dtype=np.uint8), **kwargs}
    with pytest.raises(ValueError) as err:
        draw_overlay(_axes(), **args)
    assert bad in str(err.value)


def test_add_legend_names_organs() -> None:
    fig = Figure()
    legend = add_legend(fig, SYNAPSE_LABELS, loc="lower center", ncol=8)
    texts = [t.get_text() for t in legend.get_texts()]
    assert texts == ["spleen", "right kidney", "left kidney", "gallbladder", "liver", "stomach", "aorta", "pancreas"]
    assert len(add_legend(_axes(), KITS_LABELS, ids=[2]).get_texts()) == 1


# ----------------------------------------------------------------------------------------------------------------------
# volumes and slices
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "view, marker, expected_pixel, spacing",
    [
        # axial: patient's right (high x) on the image left, anterior (high y) at the top
        ("axial", (4, 2, 1), (0, 0), (2.0, 3.0)),
        ("axial", (0, 0, 1), (2, 4), (2.0, 3.0)),
        # coronal: patient's right on the image left, superior (high z) at the top
        ("coronal", (4, 1, 3), (0, 0), (2.0, 4.0)),
        ("coronal", (0, 1, 0), (3, 4), (2.0, 4.0)),
        # sagittal: anterior (high y) on the image left, superior at the top
        ("sagittal", (1, 2, 3), (0, 0), (3.0, 4.0)),
        ("sagittal", (1, 0, 0), (3, 2), (3.0, 4.0)),
    ],
)
def test_ras_slice_radiological_orientation(
    view: str, marker: tuple, expected_pixel: tuple, spacing: tuple[float, float]
) -> None:
    volume = np.zeros((5, 3, 4))  # x, y, z
    volume[marker] = 1.0
    index = {"axial": marker[2], "coronal": marker[1], "sagittal": marker[0]}[view]
    image, pixel = ras_slice(volume, view, index, spacing=(2.0, 3.0, 4.0))
    assert pixel == spacing
    assert tuple(np.argwhere(image == 1.0)[0]) == expected_pixel


@pytest.mark.parametrize(
    "args, bad",
    [(("oblique", 0), "oblique"), (("axial", 4), "index 4"), (("coronal", -1), "index -1")],
)
def test_ras_slice_rejects(args: tuple, bad: str) -> None:
    with pytest.raises(ValueError) as err:
        ras_slice(np.zeros((5, 3, 4)), *args)
    assert bad in str(err.value)


def test_btcv_to_synapse_lut() -> None:
    btcv = np.arange(14, dtype=np.int16).reshape(2, 7)
    expected = np.array([0, 1, 2, 3, 4, 0, 5, 6, 7, 0, 0, 8, 0, 0], dtype=np.uint8).reshape(2, 7)
    out = btcv_to_synapse(btcv)
    assert out.dtype == np.uint8 and np.array_equal(out, expected)
    with pytest.raises(ValueError, match="0..13"):
        btcv_to_synapse(np.array([0, 14]))


def test_label_centre_and_fallback() -> None:
    label = np.zeros((10, 8, 6), dtype=np.uint8)
    label[2:4, 4:6, 1:3] = 5
    assert label_centre(label, (5,)) == (2, 4, 2)  # 2.5, 4.5, 1.5 round half to even
    assert label_centre(label, (1,)) == (5, 4, 3)


def test_load_ras_reorients(tmp_path: Path) -> None:
    """A file stored LPS (x toward the patient's left) comes back in RAS voxel order with a RAS affine."""
    data = np.zeros((4, 3, 2), dtype=np.int16)
    data[0, 0, 1] = 7  # LPS voxel (0, 0, 1): the patient's most right, most anterior corner
    affine = np.diag([-2.0, -2.0, 3.0, 1.0])
    nib.save(nib.Nifti1Image(data, affine), str(tmp_path / "lps.nii.gz"))
    array, ras_affine = load_ras(tmp_path / "lps.nii.gz")
    assert nib.aff2axcodes(ras_affine) == ("R", "A", "S")
    assert tuple(np.argwhere(array == 7)[0]) == (3, 2, 1)
    np.testing.assert_allclose(
        nib.affines.apply_affine(ras_affine, (3, 2, 1)), nib.affines.apply_affine(affine, (0, 0, 1))
    )
    with pytest.raises(FileNotFoundError, match="missing.nii.gz"):
        load_ras(tmp_path / "missing.nii.gz")
