"""CT slices with label overlays: the phantom-versus-real-CT figure now, MLflow overlay images later.

Display conventions (radiological, as on a reading station): an **axial** slice is seen from the feet, the patient's
right on the image left and anterior at the top; a **coronal** slice is seen from the front, the patient's right on the
image left and superior at the top; a **sagittal** slice is seen from the patient's left, anterior on the image left and
superior at the top.  Volumes are handled in RAS+ voxel order (axis 0 toward the patient's Right, 1 toward Anterior,
2 toward Superior; :func:`load_ras` reorients any NIfTI file to it), and :func:`ras_slice` turns a RAS+ volume into
such a display slice.  Axes are drawn in millimetres, so the pixel spacing sets the aspect ratio.

Command line (writes ``docs/figures/phantom_vs_real.png`` from the real CT sample of ``../shared/data/real``)::

    python -m mskd.visualize phantom-vs-real --out docs/figures/phantom_vs_real.png \\
        --real-image ../shared/data/real/totalsegmentator/ct_3mm/example_ct.nii.gz \\
        --real-label ../shared/data/real/totalsegmentator/ct_3mm/example_ct_seg_btcv13.nii.gz

matplotlib is imported inside the functions (a figure is drawn on a :class:`matplotlib.figure.Figure` with the Agg
canvas; no pyplot global state), so importing this module stays cheap.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from monai.utils import look_up_option

from mskd.data.labels import BTCV_TO_SYNAPSE, HU_WINDOWS, SYNAPSE_LABELS, TASK_LABELS
from mskd.io import atomic_path

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.legend import Legend

__all__ = [
    "LABEL_COLOURS",
    "VIEWS",
    "add_legend",
    "btcv_to_synapse",
    "draw_overlay",
    "label_centre",
    "load_ras",
    "main",
    "phantom_vs_real_figure",
    "ras_slice",
]

# One colour per organ, fixed across every figure of a task.  Okabe & Ito's colour-blind-safe set (without black, which
# vanishes on CT) plus Paul Tol's "bright" purple; hues are spread so that neighbouring organs differ clearly.
LABEL_COLOURS: dict[str, dict[int, str]] = {
    "synapse": {
        1: "#56B4E9",  # spleen: sky blue
        2: "#F0E442",  # right kidney: yellow
        3: "#E69F00",  # left kidney: orange
        4: "#009E73",  # gallbladder: bluish green
        5: "#D55E00",  # liver: vermillion
        6: "#CC79A7",  # stomach: reddish purple
        7: "#0072B2",  # aorta: blue
        8: "#AA3377",  # pancreas: purple
    },
    "kits": {
        1: "#56B4E9",  # kidney: sky blue
        2: "#D55E00",  # tumour: vermillion
    },
}
_FALLBACK_COLOURS = ("#56B4E9", "#F0E442", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#0072B2", "#AA3377")

VIEWS = ("axial", "coronal", "sagittal")
_VIEW_AXIS = {"axial": 2, "coronal": 1, "sagittal": 0}  # the RAS+ voxel axis a view slices across
# orientation letters at the (left, right, top, bottom) edges of each view
_VIEW_MARKS = {"axial": ("R", "L", "A", "P"), "coronal": ("R", "L", "S", "I"), "sagittal": ("A", "P", "S", "I")}


# ----------------------------------------------------------------------------------------------------------------------
# volumes and slices
# ----------------------------------------------------------------------------------------------------------------------
def load_ras(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Load a NIfTI file reoriented to RAS+ voxel order (``nibabel.as_closest_canonical``).

    Args:
        path: ``.nii`` or ``.nii.gz`` file.

    Returns:
        ``(array, affine)``: the voxel data (dtype of the file, scaling applied for float data) and the RAS+ affine.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
    """
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (pass an existing NIfTI file)")
    image = nib.as_closest_canonical(nib.load(str(path)))
    return np.asanyarray(image.dataobj), image.affine


def btcv_to_synapse(label: np.ndarray) -> np.ndarray:
    """Remap a BTCV-13 label map to the Synapse-8 ids with a look-up table (:data:`~mskd.data.labels.BTCV_TO_SYNAPSE`).

    Args:
        label: integer array of BTCV ids (0-13).

    Returns:
        uint8 array of the same shape with Synapse ids (the five non-Synapse organs become background).

    Raises:
        ValueError: if ``label`` holds a value outside 0-13.
    """
    label = np.asarray(label)
    lut = np.zeros(max(BTCV_TO_SYNAPSE) + 1, dtype=np.uint8)
    for btcv, synapse in BTCV_TO_SYNAPSE.items():
        lut[btcv] = synapse
    if label.size and (label.min() < 0 or label.max() >= lut.size):
        raise ValueError(f"BTCV labels must lie in 0..{lut.size - 1}, got range {label.min()}..{label.max()}.")
    return lut[label.astype(np.intp, copy=False)]


def ras_slice(
    volume: np.ndarray, view: str, index: int, spacing: Sequence[float] = (1.0, 1.0, 1.0)
) -> tuple[np.ndarray, tuple[float, float]]:
    """One slice of a RAS+ volume in radiological display order (rows top to bottom, columns left to right).

    Args:
        volume: 3D array in RAS+ voxel order ``(x, y, z)``.
        view: ``"axial"`` (slice across z), ``"coronal"`` (across y) or ``"sagittal"`` (across x).
        index: voxel index along the sliced axis.
        spacing: voxel size in mm along ``(x, y, z)``.

    Returns:
        ``(slice2d, (sx, sy))``: the 2D array and its pixel size in mm (``sx`` along columns, ``sy`` along rows).

    Raises:
        ValueError: for an unknown ``view``, a volume that is not 3D, or an ``index`` out of range.
    """
    view = look_up_option(view, VIEWS)
    if volume.ndim != 3:
        raise ValueError(f"volume must be 3D (x, y, z), got shape {volume.shape}.")
    axis = _VIEW_AXIS[view]
    if not 0 <= index < volume.shape[axis]:
        raise ValueError(f"index {index} is out of range for a {view} slice of a volume of shape {volume.shape}.")
    dx, dy, dz = (float(s) for s in spacing)
    if view == "axial":  # columns: x decreasing (patient's right on the left); rows: y decreasing (anterior on top)
        return volume[::-1, ::-1, index].T, (dx, dy)
    if view == "coronal":  # columns: x decreasing; rows: z decreasing (superior on top)
        return volume[::-1, index, ::-1].T, (dx, dz)
    return volume[index, ::-1, ::-1].T, (dy, dz)  # sagittal: columns: y decreasing (anterior on the left)


def label_centre(label: np.ndarray, ids: Sequence[int]) -> tuple[int, int, int]:
    """Voxel index of the centroid of the union of the labels ``ids`` (the volume centre when none is present)."""
    voxels = np.argwhere(np.isin(label, np.asarray(ids)))
    if not len(voxels):
        return tuple(int(n) // 2 for n in label.shape)  # type: ignore[return-value]
    return tuple(int(round(v)) for v in voxels.mean(axis=0))  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------------------------------
# drawing
# ----------------------------------------------------------------------------------------------------------------------
def _default_colours(class_names: Mapping[int, str]) -> dict[int, str]:
    """The palette of the task whose label names match ``class_names``, otherwise a cycle of the fallback colours."""
    for task, names in TASK_LABELS.items():
        if all(names.get(k) == v for k, v in class_names.items() if k):
            return dict(LABEL_COLOURS[task])
    return {k: _FALLBACK_COLOURS[(k - 1) % len(_FALLBACK_COLOURS)] for k in class_names if k}


def draw_overlay(
    ax: Axes,
    image2d: np.ndarray,
    label2d: np.ndarray | None = None,
    window: Sequence[float] = HU_WINDOWS["synapse"],
    class_names: Mapping[int, str] | None = None,
    contour: bool = True,
    alpha: float | None = None,
    spacing: Sequence[float] = (1.0, 1.0),
    colours: Mapping[int, str] | None = None,
    linewidth: float = 1.2,
) -> dict[int, Any]:
    """Draw a CT slice in grey through a window, with its label map as coloured contours or a translucent fill.

    The slice is drawn as given (row 0 at the top, column 0 on the left; see :func:`ras_slice` for radiological
    order) with axes in millimetres, so non-square pixels keep their physical aspect ratio.

    Args:
        ax: matplotlib axes to draw on.
        image2d: 2D image in HU.
        label2d: optional 2D integer label map of the same shape.
        window: ``(lo, hi)`` HU mapped to black and white (default: the Synapse window ``[-125, 275]``).
        class_names: label id -> name of the classes to draw (ids <= 0 are ignored). Default: Synapse's labels.
        contour: draw each label's outline (``True``) or fill it with translucent colour (``False``).
        alpha: opacity of the outlines (default 1) or of the fill (default 0.4).
        spacing: pixel size ``(sx, sy)`` in mm: ``sx`` along columns (width), ``sy`` along rows (height).
        colours: label id -> matplotlib colour. Default: :data:`LABEL_COLOURS` of the task whose names match
            ``class_names``.
        linewidth: outline width in points.

    Returns:
        label id -> artist added for it (a ``ContourSet`` per label with ``contour=True``; with ``contour=False`` every
        label maps to the one ``AxesImage`` of the fill), for each label in ``class_names`` present in the slice.

    Raises:
        ValueError: if the arrays are not 2D of the same shape, ``window`` is not ``lo < hi``, a spacing is not > 0, or
            ``alpha`` is outside [0, 1].
    """
    from matplotlib.colors import to_rgba

    image2d = np.asarray(image2d)
    if image2d.ndim != 2:
        raise ValueError(f"image2d must be 2D, got shape {image2d.shape}.")
    if label2d is not None and np.shape(label2d) != image2d.shape:
        raise ValueError(f"label2d shape {np.shape(label2d)} differs from image2d shape {image2d.shape}.")
    lo, hi = (float(v) for v in window)
    if not lo < hi:
        raise ValueError(f"window must be (lo, hi) with lo < hi, got {tuple(window)!r}.")
    sx, sy = (float(v) for v in spacing)
    if not (sx > 0 and sy > 0):
        raise ValueError(f"spacing must be two values > 0, got {tuple(spacing)!r}.")
    if alpha is not None and not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha!r}.")
    class_names = dict(SYNAPSE_LABELS if class_names is None else class_names)
    palette = {**_default_colours(class_names), **(colours or {})}

    rows, cols = image2d.shape
    extent = (0.0, cols * sx, rows * sy, 0.0)
    ax.imshow(image2d, cmap="gray", vmin=lo, vmax=hi, extent=extent, interpolation="bilinear")
    artists: dict[int, Any] = {}
    if label2d is not None:
        label2d = np.asarray(label2d)
        present = [k for k in sorted(class_names) if k > 0 and np.any(label2d == k)]
        if contour:
            # pad with background so outlines touching the border close; coordinates are pixel centres in mm
            xs = (np.arange(-1, cols + 1) + 0.5) * sx
            ys = (np.arange(-1, rows + 1) + 0.5) * sy
            for k in present:
                mask = np.pad((label2d == k).astype(np.float32), 1)
                artists[k] = ax.contour(
                    xs, ys, mask, levels=[0.5], colors=[palette[k]], linewidths=linewidth, alpha=alpha
                )
        elif present:
            rgba = np.zeros((rows, cols, 4), dtype=np.float32)
            fill = 0.4 if alpha is None else alpha
            for k in present:
                rgba[label2d == k] = to_rgba(palette[k], fill)
            fill_image = ax.imshow(rgba, extent=extent, interpolation="nearest")
            artists = dict.fromkeys(present, fill_image)
    ax.set_xlim(0.0, cols * sx)
    ax.set_ylim(rows * sy, 0.0)
    ax.set_aspect("equal")
    return artists


def add_legend(
    target: Axes | Figure,
    class_names: Mapping[int, str],
    colours: Mapping[int, str] | None = None,
    ids: Sequence[int] | None = None,
    **kwargs: Any,
) -> Legend:
    """Legend of coloured patches naming the organs (ids ``> 0``), on an axes or a whole figure.

    Args:
        target: ``Axes`` or ``Figure`` whose ``legend`` method is called.
        class_names: label id -> name (underscores are shown as spaces).
        colours: label id -> colour; default as in :func:`draw_overlay`.
        ids: the ids to list (default: every id > 0 of ``class_names``).
        **kwargs: passed to ``legend`` (``loc``, ``ncol``, ``fontsize``, ...).
    """
    from matplotlib.patches import Patch

    palette = {**_default_colours(class_names), **(colours or {})}
    ids = [k for k in sorted(class_names) if k > 0] if ids is None else list(ids)
    handles = [Patch(facecolor=palette[k], edgecolor=palette[k], label=class_names[k].replace("_", " ")) for k in ids]
    return target.legend(handles=handles, **kwargs)


def _orientation_marks(ax: Axes, view: str) -> None:
    left, right, top, bottom = _VIEW_MARKS[view]
    style = {"color": "white", "fontsize": 8, "fontweight": "bold", "transform": ax.transAxes}
    ax.text(0.02, 0.5, left, ha="left", va="center", **style)
    ax.text(0.98, 0.5, right, ha="right", va="center", **style)
    ax.text(0.5, 0.98, top, ha="center", va="top", **style)
    ax.text(0.5, 0.02, bottom, ha="center", va="bottom", **style)


def _scale_bar(ax: Axes, length_mm: float = 100.0) -> None:
    x0, x1 = ax.get_xlim()
    bottom, top = ax.get_ylim()  # the y axis points down: bottom > top
    x_end, y_bar = x1 - 0.04 * (x1 - x0), bottom - 0.06 * (bottom - top)
    ax.plot([x_end - length_mm, x_end], [y_bar, y_bar], color="white", linewidth=2.0, solid_capstyle="butt")
    ax.text(
        x_end - length_mm / 2,
        y_bar - 0.015 * (bottom - top),
        f"{length_mm:g} mm",
        color="white",
        fontsize=7,
        ha="center",
    )


# ----------------------------------------------------------------------------------------------------------------------
# the phantom versus real CT figure
# ----------------------------------------------------------------------------------------------------------------------
def _palette(colours: Sequence[str]) -> list[int]:
    """A 256-entry RGB palette: each colour plus its 60/40 blends with black, mid-grey and white (anti-aliased edges),
    and a grey ramp for the CT and the text in the remaining entries."""
    from matplotlib.colors import to_rgb

    entries: list[np.ndarray] = []
    for colour in dict.fromkeys(colours):
        rgb = np.asarray(to_rgb(colour)) * 255.0
        entries += [rgb] + [0.6 * rgb + 0.4 * level for level in (0.0, 128.0, 255.0)]
    if len(entries) > 128:
        raise ValueError(f"too many colours for a 256-entry palette: {len(dict.fromkeys(colours))} (at most 32).")
    greys = np.linspace(0.0, 255.0, 256 - len(entries))
    entries += [np.full(3, g) for g in greys]
    return [int(round(v)) for rgb in entries for v in rgb]


def _save_figure(fig: Figure, out_path: Path, dpi: float, colours: Sequence[str] | None = None) -> None:
    """Render ``fig`` to PNG under a temporary sibling name, then rename it (atomic on one filesystem).

    With ``colours`` (the overlay colours of the figure), the rendering is stored as an 8-bit indexed PNG whose palette
    holds those colours exactly (see :func:`_palette`) and a grey ramp, without dithering: about half the size of an
    RGB PNG of a noisy CT, with the organ colours intact.
    """
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    FigureCanvasAgg(fig)
    with atomic_path(out_path) as tmp:
        if colours:
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", dpi=dpi)
            buffer.seek(0)
            palette = Image.new("P", (1, 1))
            palette.putpalette(_palette(colours))
            with Image.open(buffer) as rendered:
                indexed = rendered.convert("RGB").quantize(palette=palette, dither=Image.Dither.NONE)
            indexed.save(tmp, format="PNG", optimize=True)
        else:
            fig.savefig(tmp, format="png", dpi=dpi)


# physical size (width, height) in mm shown by each panel, the same for the phantom and the real CT
_PANEL_MM = {"axial": (380.0, 300.0), "coronal": (380.0, 270.0), "sagittal": (300.0, 270.0)}


def _body_centre(ct: np.ndarray, z_index: int) -> tuple[float, float]:
    """Voxel ``(x, y)`` of the centre of the body's bounding box on an axial slice (largest region above -500 HU)."""
    from scipy import ndimage

    regions, n = ndimage.label(ndimage.binary_fill_holes(ct[:, :, z_index] > -500.0))
    if n == 0:
        return (ct.shape[0] - 1) / 2.0, (ct.shape[1] - 1) / 2.0
    largest = 1 + int(np.argmax(ndimage.sum_labels(np.ones_like(regions), regions, range(1, n + 1))))
    box = ndimage.find_objects((regions == largest).astype(np.int32))[0]
    return (box[0].start + box[0].stop - 1) / 2.0, (box[1].start + box[1].stop - 1) / 2.0


def _panel_limits(
    view: str, shape: Sequence[int], spacing: Sequence[float], centre: Sequence[float]
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Axis limits (mm, display coordinates of :func:`draw_overlay`) of a :data:`_PANEL_MM` window around the voxel
    ``centre``, moved inside the volume where the volume is larger than the window."""
    nx, ny, nz = shape
    dx, dy, dz = spacing
    cx, cy, cz = centre
    axes = {  # view -> (length, centre) along the display's horizontal and vertical axes, in mm
        "axial": ((nx * dx, (nx - 0.5 - cx) * dx), (ny * dy, (ny - 0.5 - cy) * dy)),
        "coronal": ((nx * dx, (nx - 0.5 - cx) * dx), (nz * dz, (nz - 0.5 - cz) * dz)),
        "sagittal": ((ny * dy, (ny - 0.5 - cy) * dy), (nz * dz, (nz - 0.5 - cz) * dz)),
    }[view]
    limits = []
    for (length, middle), window in zip(axes, _PANEL_MM[view], strict=True):
        middle = float(np.clip(middle, window / 2, length - window / 2)) if length >= window else length / 2
        limits.append((middle - window / 2, middle + window / 2))
    return limits[0], limits[1]


def _slice_centre(label: np.ndarray) -> tuple[int, int, int]:
    """Slice positions through the liver / kidney region of a Synapse label map: axial through the pancreas' centroid
    (upper kidneys, lower liver; half-way between the liver's and the kidneys' centroids without a pancreas), coronal
    through the kidneys' centroid, sagittal through the right kidney's centroid (the volume centre stands in for a
    missing organ)."""
    x, _, _ = label_centre(label, (2,))
    _, y, z_kidneys = label_centre(label, (2, 3))
    if np.any(label == 8):
        return x, y, label_centre(label, (8,))[2]
    return x, y, int(round((z_kidneys + label_centre(label, (5,))[2]) / 2))


def phantom_vs_real_figure(
    out_path: str | os.PathLike,
    real_image: str | os.PathLike,
    real_label: str | os.PathLike,
    seed: int = 0,
    size: tuple[int, int, int] = (128, 128, 64),
    difficulty: float = 1.0,
    dpi: float = 110.0,
) -> Path:
    """Draw a synthetic phantom case next to a real CT with the same window, colours and orientation.

    A 2 x 3 grid: row 1 the phantom (``make_phantom_case(seed, "synapse", size, difficulty)``), row 2 the real CT;
    columns axial, coronal and sagittal slices through the liver / kidney region of each volume (see
    :func:`_slice_centre`), radiological convention, physical aspect ratio, Synapse window ``[-125, 275]`` HU and
    label outlines in :data:`LABEL_COLOURS` with a legend. Every panel shows the same physical window (axial
    380 x 300 mm, coronal 380 x 270 mm, sagittal 300 x 270 mm) centred on the body in-plane and on the organs
    cranio-caudally, so sizes compare directly. The real label map holds BTCV-13 ids and is remapped to the Synapse-8
    ids. The PNG is written under a temporary name and then renamed.

    Args:
        out_path: PNG file to write (its folder is created).
        real_image: NIfTI CT in HU (any orientation; reoriented to RAS+).
        real_label: NIfTI label map with BTCV-13 ids on the same grid as ``real_image``.
        seed: phantom seed.
        size: phantom array size.
        difficulty: phantom difficulty.
        dpi: resolution of the PNG.

    Returns:
        ``out_path`` as a ``Path``.

    Raises:
        FileNotFoundError: if a real file is missing.
        ValueError: if the real image and label shapes differ, or for invalid phantom arguments.
    """
    import nibabel as nib
    from matplotlib.figure import Figure

    from mskd.data.phantom import make_phantom_case

    out_path = Path(out_path)
    real_ct, real_affine = load_ras(real_image)
    real_lab, _ = load_ras(real_label)
    if real_ct.shape != real_lab.shape:
        raise ValueError(f"real image shape {real_ct.shape} differs from real label shape {real_lab.shape}.")
    ph_ct, ph_lab, ph_affine = make_phantom_case(seed, task="synapse", size=size, difficulty=difficulty)

    real_ct = np.asarray(real_ct, dtype=np.float32)
    rows = [
        ("phantom", ph_ct, ph_lab, ph_affine, f"seed {seed}, difficulty {difficulty:g}"),
        ("real CT", real_ct, btcv_to_synapse(real_lab), real_affine, Path(real_image).name),
    ]
    window = HU_WINDOWS["synapse"]
    fig = Figure(figsize=(12.0, 7.4), layout="constrained")
    axes = fig.subplots(2, 3, width_ratios=[_PANEL_MM[v][0] for v in VIEWS])
    for r, (name, ct, lab, affine, info) in enumerate(rows):
        spacing = nib.affines.voxel_sizes(affine)
        centre = _slice_centre(lab)
        body_x, body_y = _body_centre(ct, centre[2])
        organs_z = float(np.argwhere(lab > 0)[:, 2].mean()) if np.any(lab > 0) else (ct.shape[2] - 1) / 2.0
        extent_mm = " x ".join(f"{n * s:.0f}" for n, s in zip(ct.shape, spacing, strict=True))
        spacing_mm = " x ".join(f"{s:.2f}" for s in spacing)
        axes[r, 0].set_ylabel(f"{name}\n{info}\n{extent_mm} mm, voxel {spacing_mm} mm", fontsize=9)
        for c, view in enumerate(VIEWS):
            ax = axes[r, c]
            axis = _VIEW_AXIS[view]
            image2d, pix = ras_slice(ct, view, centre[axis], spacing)
            label2d, _ = ras_slice(lab, view, centre[axis], spacing)
            draw_overlay(ax, image2d, label2d, window=window, class_names=SYNAPSE_LABELS, spacing=pix)
            xlim, ylim = _panel_limits(view, ct.shape, spacing, (body_x, body_y, organs_z))
            ax.set_xlim(*xlim)
            ax.set_ylim(ylim[1], ylim[0])
            ax.set_facecolor("black")
            world = nib.affines.apply_affine(affine, centre)[axis]
            ax.set_title(f"{name}: {view}, {'xyz'[axis]} = {world:.0f} mm", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            _orientation_marks(ax, view)
            _scale_bar(ax)
    add_legend(fig, SYNAPSE_LABELS, loc="outside lower center", ncol=8, fontsize=9, frameon=False)
    fig.suptitle(
        f"Synthetic phantom vs real CT: window [{window[0]:g}, {window[1]:g}] HU, radiological view "
        "(patient's right on image left), label outlines",
        fontsize=10,
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    _save_figure(fig, out_path, dpi, colours=["white", *LABEL_COLOURS["synapse"].values()])
    return out_path


# ----------------------------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------------------------
def _size(text: str) -> tuple[int, int, int]:
    parts = text.replace("x", ",").split(",")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"size must look like 128,128,64, got {text!r}")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mskd.visualize phantom-vs-real --out PNG --real-image CT --real-label SEG`` (see the module doc)."""
    parser = argparse.ArgumentParser(prog="python -m mskd.visualize", description="Slice figures with label overlays.")
    commands = parser.add_subparsers(dest="command", required=True)
    pvr = commands.add_parser("phantom-vs-real", help="phantom case next to a real CT (2 x 3 grid PNG)")
    pvr.add_argument("--out", required=True, help="PNG to write, e.g. docs/figures/phantom_vs_real.png")
    pvr.add_argument("--real-image", required=True, help="real CT NIfTI (HU), e.g. .../ct_3mm/example_ct.nii.gz")
    pvr.add_argument(
        "--real-label", required=True, help="its BTCV-13 label map, e.g. .../ct_3mm/example_ct_seg_btcv13.nii.gz"
    )
    pvr.add_argument("--seed", type=int, default=0, help="phantom seed (default 0)")
    pvr.add_argument("--size", type=_size, default=(128, 128, 64), help="phantom size nx,ny,nz (default 128,128,64)")
    pvr.add_argument("--difficulty", type=float, default=1.0, help="phantom difficulty (default 1)")
    pvr.add_argument("--dpi", type=float, default=110.0, help="PNG resolution (default 110)")
    args = parser.parse_args(argv)
    try:
        path = phantom_vs_real_figure(
            args.out, args.real_image, args.real_label, args.seed, args.size, args.difficulty, args.dpi
        )
    except FileNotFoundError as err:
        parser.error(f"{err}; check --real-image / --real-label")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
