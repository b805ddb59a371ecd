"""CT slices with label overlays, and figure files: the display conventions every mskd figure shares.

Display conventions (radiological, as on a reading station): an **axial** slice is seen from the feet, the patient's
right on the image left and anterior at the top; a **coronal** slice is seen from the front, the patient's right on the
image left and superior at the top; a **sagittal** slice is seen from the patient's left, anterior on the image left and
superior at the top.  Volumes are handled in RAS+ voxel order (axis 0 toward the patient's Right, 1 toward Anterior,
2 toward Superior; :func:`load_ras` reorients any NIfTI file to it), and :func:`ras_slice` turns a RAS+ volume into
such a display slice.  Axes are drawn in millimetres, so the pixel spacing sets the aspect ratio.  Each organ keeps one
colour in every figure of a task (:data:`LABEL_COLOURS`, :func:`default_colours`), and :func:`save_figure` writes a
figure as a PNG atomically.

The MLflow dashboard handlers (:mod:`mskd.handlers`) draw with these helpers, and so does the docs figure of
``tools/phantom_vs_real.py``.  matplotlib is imported inside the functions (a figure is drawn on a
:class:`matplotlib.figure.Figure` with the Agg canvas; no pyplot global state), so importing this module stays cheap.
"""

from __future__ import annotations

import os
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
    "VIEW_AXIS",
    "add_legend",
    "btcv_to_synapse",
    "default_colours",
    "draw_overlay",
    "label_centre",
    "load_ras",
    "ras_slice",
    "save_figure",
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
VIEW_AXIS = {"axial": 2, "coronal": 1, "sagittal": 0}  # the RAS+ voxel axis a view slices across


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
    axis = VIEW_AXIS[view]
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
def default_colours(class_names: Mapping[int, str]) -> dict[int, str]:
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
    palette = {**default_colours(class_names), **(colours or {})}

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

    palette = {**default_colours(class_names), **(colours or {})}
    ids = [k for k in sorted(class_names) if k > 0] if ids is None else list(ids)
    handles = [Patch(facecolor=palette[k], edgecolor=palette[k], label=class_names[k].replace("_", " ")) for k in ids]
    return target.legend(handles=handles, **kwargs)


# ----------------------------------------------------------------------------------------------------------------------
# figure files
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


def save_figure(fig: Figure, out_path: Path, dpi: float, colours: Sequence[str] | None = None) -> None:
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
