"""The docs figure ``docs/figures/phantom_vs_real.png``: a synthetic phantom case next to a real CT.

A docs tool, not part of the ``mskd`` package: ``make figures`` runs it on the real CT sample of ``../shared/data/real``
(outside the repository)::

    python tools/phantom_vs_real.py --out docs/figures/phantom_vs_real.png \\
        --real-image ../shared/data/real/totalsegmentator/ct_3mm/example_ct.nii.gz \\
        --real-label ../shared/data/real/totalsegmentator/ct_3mm/example_ct_seg_btcv13.nii.gz

Slices, overlays, colours and the PNG file are :mod:`mskd.plotting`'s (its display conventions hold here too); this
script adds the panel layout, orientation letters and scale bars.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mskd.data.labels import HU_WINDOWS, SYNAPSE_LABELS
from mskd.data.phantom import make_phantom_case
from mskd.plotting import (
    LABEL_COLOURS,
    VIEW_AXIS,
    VIEWS,
    add_legend,
    btcv_to_synapse,
    draw_overlay,
    label_centre,
    load_ras,
    ras_slice,
    save_figure,
)

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes

# orientation letters at the (left, right, top, bottom) edges of each view
_VIEW_MARKS = {"axial": ("R", "L", "A", "P"), "coronal": ("R", "L", "S", "I"), "sagittal": ("A", "P", "S", "I")}


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
            axis = VIEW_AXIS[view]
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
    save_figure(fig, out_path, dpi, colours=["white", *LABEL_COLOURS["synapse"].values()])
    return out_path


def _size(text: str) -> tuple[int, int, int]:
    parts = text.replace("x", ",").split(",")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"size must look like 128,128,64, got {text!r}")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


def main(argv: Sequence[str] | None = None) -> int:
    """``python tools/phantom_vs_real.py --out PNG --real-image CT --real-label SEG`` (see the module doc)."""
    parser = argparse.ArgumentParser(
        prog="python tools/phantom_vs_real.py",
        description="A synthetic phantom case next to a real CT: a 2 x 3 grid PNG of slices with label outlines.",
    )
    parser.add_argument("--out", required=True, help="PNG to write, e.g. docs/figures/phantom_vs_real.png")
    parser.add_argument("--real-image", required=True, help="real CT NIfTI (HU), e.g. .../ct_3mm/example_ct.nii.gz")
    parser.add_argument(
        "--real-label", required=True, help="its BTCV-13 label map, e.g. .../ct_3mm/example_ct_seg_btcv13.nii.gz"
    )
    parser.add_argument("--seed", type=int, default=0, help="phantom seed (default 0)")
    parser.add_argument("--size", type=_size, default=(128, 128, 64), help="phantom size nx,ny,nz (default 128,128,64)")
    parser.add_argument("--difficulty", type=float, default=1.0, help="phantom difficulty (default 1)")
    parser.add_argument("--dpi", type=float, default=110.0, help="PNG resolution (default 110)")
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
