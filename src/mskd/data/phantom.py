"""Synthetic abdominal CT phantom generator (the project's default demo data).

The phantom is a deliberately *hard-ish* toy problem: organs are deformed ellipsoids and tubes placed from typical adult
anatomy (millimetre sizes), inside a body outline of subcutaneous fat and abdominal-wall muscle, with a vertebral column
(bodies, discs, posterior elements, canal), ribs, psoas and paraspinal muscles, renal sinus fat and bowel gas as
unlabelled context.  CT numbers overlap on purpose (liver ~60, spleen ~55, stomach wall ~50, pancreas ~45 HU, kidneys
~35 HU, bowel ~35 HU, ...), and the image carries smooth texture, partial-volume blur and Gaussian noise.  Two label
sets are available:

* ``"synapse"`` -- the 8 abdominal organs of the Synapse multi-organ (BTCV) benchmark, see :data:`SYNAPSE_LABELS`;
* ``"kits"`` -- kidney and kidney tumour, as in KiTS, see :data:`KITS_LABELS`.

Geometry.  Arrays are in RAS+ voxel order: voxel axis 0 increases toward the patient's Right, axis 1 toward Anterior and
axis 2 toward Superior.  The affine is diagonal with positive spacings (``nibabel.aff2axcodes(affine) == ("R", "A",
"S")``) and centres the volume on the world origin.  The field of view is drawn per case: in-plane (x and y, square)
``FOV_XY_MM * (1 + fov_jitter * u)`` and cranio-caudal ``FOV_Z_MM * (1 + fov_jitter * v)`` with ``u, v`` uniform in
[-1, 1] (:data:`FOV_XY_MM` = 400 mm, :data:`FOV_Z_MM` = 240 mm; ``fov_jitter=0.15`` gives 340-460 mm and 204-276 mm,
``fov_jitter=0`` the fixed 400 x 400 x 240 mm), and the spacing is ``fov / size``.  All anatomy is placed in millimetre
world coordinates (liver at +x, spleen at -x, kidneys at -y, ...), so organs keep their physical size whatever the
spacing, and a small field of view cuts the body as a real scan does.

Determinism.  A case is a pure function of ``(seed entropy, task, size, difficulty, fov_jitter)``: every random draw
comes from one ``numpy.random.Generator``.  The two field-of-view draws come first and are made whatever the task and
``fov_jitter`` (even 0), so the number and order of the later draws never depend on them.
:func:`generate_phantom_dataset` gives case ``i`` the generator ``np.random.default_rng([seed, i])``, so
``make_phantom_case([seed, i], ...)`` rebuilds that case exactly and generating ``n + 1`` cases leaves the first ``n``
unchanged.  For the same entropy, the ``"kits"`` case shares the field of view, anatomy and image of the ``"synapse"``
one: the kidney tumours are drawn last.
"""

import json
from collections.abc import Callable, Iterable, Sequence
from enum import IntEnum
from pathlib import Path

import nibabel as nib
import numpy as np
from monai.utils import look_up_option
from scipy import ndimage

from mskd.io import atomic_open, atomic_path
from mskd.progress import with_progress

from .labels import KITS_LABELS, SYNAPSE_LABELS, TASK_LABELS

__all__ = [
    "FOV_XY_MM",
    "FOV_Z_MM",
    "KITS_LABELS",
    "MAX_FOV_JITTER",
    "MIN_SIZE",
    "SYNAPSE_LABELS",
    "TASK_LABELS",
    "generate_phantom_dataset",
    "make_phantom_case",
    "phantom_affine",
]


FOV_XY_MM = 400.0  # nominal in-plane field of view (x and y), millimetres
FOV_Z_MM = 240.0  # nominal cranio-caudal extent, millimetres (5 mm slices at 48 slices)
MIN_SIZE = 16  # smallest accepted array size along any axis
MAX_FOV_JITTER = 0.5  # largest accepted relative half-range of the field-of-view draw

_MAX_TUMOURS_PER_KIDNEY = 2
# Ribs 12 (lowest) up to 3 of each side; those outside the field of view cost nothing.  Angles are measured around the
# body from the posterior midline (0) to the anterior midline (pi): every rib starts lateral to the paraspinal muscles
# and ends short of the anterior midline, the lowest (floating) ones well short of it.
_N_RIBS = 10
_RIB_THETA_MIN = 0.2 * np.pi
_RIB_THETA_MAX = np.pi * np.array([0.45, 0.6, 0.78, 0.83, 0.86, 0.88, 0.88, 0.88, 0.88, 0.88])
_HU_MIN, _HU_MAX = -1024.0, 3071.0


class _T(IntEnum):
    """Internal tissue ids painted into the structure map (mapped to HU and to labels through look-up tables)."""

    AIR = 0
    FAT = 1
    MUSCLE = 2
    CAVITY = 3  # visceral fat / bowel mixture inside the abdominal wall
    BOWEL_GAS = 4
    BONE = 5
    CANAL = 6
    IVC = 7
    LIVER = 8
    SPLEEN = 9
    STOMACH_WALL = 10
    STOMACH_LUMEN = 11
    STOMACH_AIR = 12
    KIDNEY_R = 13
    KIDNEY_L = 14
    GALLBLADDER = 15
    PANCREAS = 16
    AORTA = 17
    TUMOUR = 18  # first tumour; tumour k uses TUMOUR + k


_N_TISSUES = _T.TUMOUR + 2 * _MAX_TUMOURS_PER_KIDNEY

# Base CT numbers (HU) and texture amplitudes (HU per unit of the smooth texture field) at difficulty 1.
_BASE_HU: dict[_T, float] = {
    _T.AIR: -1000.0,
    _T.FAT: -100.0,
    _T.MUSCLE: 50.0,
    _T.CAVITY: 0.0,  # replaced by a fat (-95) / bowel (+35) mixture
    _T.BOWEL_GAS: -900.0,
    _T.BONE: 200.0,  # cancellous; the cortical rim (all of a thin rib) gets _CORTEX_HU
    _T.CANAL: 15.0,
    _T.IVC: 40.0,
    _T.LIVER: 60.0,
    _T.SPLEEN: 55.0,
    _T.STOMACH_WALL: 50.0,
    _T.STOMACH_LUMEN: 15.0,
    _T.STOMACH_AIR: -800.0,
    _T.KIDNEY_R: 35.0,
    _T.KIDNEY_L: 35.0,
    _T.GALLBLADDER: 10.0,
    _T.PANCREAS: 45.0,
    _T.AORTA: 45.0,
}
_TEXTURE_HU: dict[_T, float] = {
    _T.FAT: 10.0,
    _T.MUSCLE: 6.0,
    _T.CAVITY: 8.0,
    _T.BOWEL_GAS: 30.0,
    _T.BONE: 40.0,
    _T.CANAL: 3.0,
    _T.IVC: 3.0,
    _T.LIVER: 6.0,
    _T.SPLEEN: 5.0,
    _T.STOMACH_WALL: 5.0,
    _T.STOMACH_LUMEN: 8.0,
    _T.STOMACH_AIR: 30.0,
    _T.KIDNEY_R: 7.0,
    _T.KIDNEY_L: 7.0,
    _T.GALLBLADDER: 3.0,
    _T.PANCREAS: 9.0,
    _T.AORTA: 3.0,
}
_CORTEX_HU = 700.0
_CAVITY_FAT_HU, _CAVITY_BOWEL_HU = -95.0, 35.0
_TUMOUR_TEXTURE_HU = 14.0
_TUMOUR_BLOB_HU = 8.0  # coarse heterogeneity (necrotic / enhancing blobs) inside tumours
# Soft tissues whose mutual HU differences shrink as 1 / difficulty.
_CLOSE_ORGANS = (_T.LIVER, _T.SPLEEN, _T.PANCREAS, _T.STOMACH_WALL)

_SYNAPSE_TISSUE_LABEL: dict[_T, int] = {
    _T.SPLEEN: 1,
    _T.KIDNEY_R: 2,
    _T.KIDNEY_L: 3,
    _T.GALLBLADDER: 4,
    _T.LIVER: 5,
    _T.STOMACH_WALL: 6,
    _T.STOMACH_LUMEN: 6,
    _T.STOMACH_AIR: 6,
    _T.AORTA: 7,
    _T.PANCREAS: 8,
}
_KITS_TISSUE_LABEL: dict[_T, int] = {_T.KIDNEY_R: 1, _T.KIDNEY_L: 1}


def _label_lut(task: str) -> np.ndarray:
    lut = np.zeros(_N_TISSUES, dtype=np.uint8)
    if task == "synapse":
        for tissue, label in _SYNAPSE_TISSUE_LABEL.items():
            lut[tissue] = label
    else:
        for tissue, label in _KITS_TISSUE_LABEL.items():
            lut[tissue] = label
        lut[_T.TUMOUR :] = 2
    return lut


# ----------------------------------------------------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------------------------------------------------
def _check_task(task: str) -> str:
    return look_up_option(task, TASK_LABELS.keys())


def _check_size(size: Sequence[int]) -> tuple[int, int, int]:
    try:
        dims = tuple(size)
    except TypeError:
        raise ValueError(f"size must be a sequence of 3 ints, got {size!r}.") from None
    if len(dims) != 3 or not all(isinstance(d, int | np.integer) and not isinstance(d, bool) for d in dims):
        raise ValueError(f"size must be a sequence of 3 ints, got {size!r}.")
    if min(dims) < MIN_SIZE:
        raise ValueError(f"every dimension of size must be >= {MIN_SIZE}, got {size!r}.")
    return int(dims[0]), int(dims[1]), int(dims[2])


def _check_fov_jitter(fov_jitter: float) -> float:
    if isinstance(fov_jitter, bool) or not isinstance(fov_jitter, int | float | np.number):
        raise ValueError(f"fov_jitter must be a number in [0, {MAX_FOV_JITTER}], got {fov_jitter!r}.")
    if not np.isfinite(fov_jitter) or not 0.0 <= fov_jitter <= MAX_FOV_JITTER:
        raise ValueError(f"fov_jitter must be a number in [0, {MAX_FOV_JITTER}], got {fov_jitter!r}.")
    return float(fov_jitter)


def _check_fov(fov_mm: Sequence[float] | None) -> np.ndarray:
    if fov_mm is None:
        return np.array([FOV_XY_MM, FOV_XY_MM, FOV_Z_MM])
    try:
        fov = np.asarray(fov_mm, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"fov_mm must be 3 finite numbers > 0, got {fov_mm!r}.") from None
    if fov.shape != (3,) or not np.all(np.isfinite(fov)) or not np.all(fov > 0):
        raise ValueError(f"fov_mm must be 3 finite numbers > 0, got {fov_mm!r}.")
    return fov


def _check_difficulty(difficulty: float) -> float:
    if isinstance(difficulty, bool) or not isinstance(difficulty, int | float | np.number):
        raise ValueError(f"difficulty must be a finite number > 0, got {difficulty!r}.")
    if not np.isfinite(difficulty) or difficulty <= 0:
        raise ValueError(f"difficulty must be a finite number > 0, got {difficulty!r}.")
    return float(difficulty)


# ----------------------------------------------------------------------------------------------------------------------
# geometry helpers
# ----------------------------------------------------------------------------------------------------------------------
def phantom_affine(size: Sequence[int], fov_mm: Sequence[float] | None = None) -> np.ndarray:
    """RAS+ voxel-to-world affine of a phantom volume of the given array size and field of view.

    Args:
        size: array shape ``(nx, ny, nz)``, every dimension >= :data:`MIN_SIZE`.
        fov_mm: physical extent ``(fx, fy, fz)`` in mm covered by the array; default the nominal
            ``(FOV_XY_MM, FOV_XY_MM, FOV_Z_MM)`` = ``(400, 400, 240)``. A case's own field of view is
            ``size * spacing``, with the spacing read from its affine's diagonal.

    Returns:
        A 4x4 float64 diagonal affine with spacings ``fov_mm / size`` (``(400/nx, 400/ny, 240/nz)`` by default) and an
        origin that puts the volume centre at world ``(0, 0, 0)``.

    Raises:
        ValueError: if ``size`` is not 3 ints >= :data:`MIN_SIZE` or ``fov_mm`` is not 3 finite numbers > 0.
    """
    dims = np.asarray(_check_size(size), dtype=np.float64)
    spacing = _check_fov(fov_mm) / dims
    affine = np.diag(np.append(spacing, 1.0))
    affine[:3, 3] = -(dims - 1.0) / 2.0 * spacing
    return affine


def _rotation(angles_deg: Sequence[float]) -> np.ndarray:
    """Rotation matrix ``Rz @ Ry @ Rx`` (columns: the local axes expressed in world coordinates)."""
    ax, ay, az = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _linear_upsample_matrix(n: int, c: int) -> np.ndarray:
    """``(n, c)`` matrix of linear interpolation weights from ``c`` coarse to ``n`` fine cells (cell-centre aligned)."""
    pos = np.clip((np.arange(n) + 0.5) * (c / n) - 0.5, 0.0, c - 1.0)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, c - 1)
    w = (pos - lo).astype(np.float32)
    mat = np.zeros((n, c), dtype=np.float32)
    np.add.at(mat, (np.arange(n), lo), 1.0 - w)
    np.add.at(mat, (np.arange(n), hi), w)
    return mat


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int, int], sigma_vox: Sequence[float]) -> np.ndarray:
    """Zero-mean, unit-std Gaussian-filtered white noise (float32).

    Wide kernels are applied on a grid coarsened by an integer factor and then linearly upsampled (separable matrix
    products): same look, a fraction of the cost.
    """
    sigma = np.asarray(sigma_vox, dtype=np.float64)
    factor = max(1, int(sigma.min() // 1.5))
    coarse = tuple(-(-n // factor) for n in shape)
    field = rng.standard_normal(coarse, dtype=np.float32)
    field = ndimage.gaussian_filter(field, sigma=tuple(sigma / factor), mode="reflect", truncate=3.0)
    if factor > 1:
        mx, my, mz = (_linear_upsample_matrix(n, c) for n, c in zip(shape, coarse, strict=True))
        field = (mx @ field.reshape(coarse[0], -1)).reshape(shape[0], coarse[1], coarse[2])
        field = np.matmul(my, field) @ mz.T
    field -= field.mean()
    field /= max(float(field.std()), 1e-6)
    return np.ascontiguousarray(field, dtype=np.float32)


_Region = tuple[tuple[slice, slice, slice], np.ndarray]  # (box in the volume, boolean mask of the box)
_Param = float | Callable[[np.ndarray], np.ndarray]  # constant or function of the (deformed) z coordinate


class _Canvas:
    """Deformed world-coordinate grids plus the structure map that organs are painted into.

    Shapes are evaluated only inside a bounding box that provably contains them (template extent plus the largest
    displacement), which keeps a case well under a second at 96 x 96 x 48.
    """

    def __init__(
        self, rng: np.random.Generator, size: tuple[int, int, int], difficulty: float, fov_mm: np.ndarray
    ) -> None:
        self.rng = rng
        self.size = size
        self.difficulty = difficulty
        self.affine = phantom_affine(size, fov_mm)
        self.spacing = np.diag(self.affine)[:3].copy()
        self.origin = self.affine[:3, 3].copy()
        # organs never get a semi-axis / radius below one (largest) voxel, so small organs survive low resolutions
        self.min_radius = float(self.spacing.max())
        self.min_radius_xy = float(self.spacing[:2].max())

        # smooth random displacement field (pull-back: shapes are evaluated at p + u(p)), ~6 mm rms at difficulty 1
        amp_def = np.float32(6.0 * difficulty)
        self.axes = [self.origin[i] + self.spacing[i] * np.arange(size[i], dtype=np.float32) for i in range(3)]
        shapes = [(-1, 1, 1), (1, -1, 1), (1, 1, -1)]
        self.coords: list[np.ndarray] = []  # deformed X, Y, Z (float32, full size)
        self.max_disp = np.zeros(3)
        for i in range(3):
            disp = amp_def * _smooth_noise(rng, size, 25.0 / self.spacing)
            self.max_disp[i] = float(np.abs(disp).max()) + 1e-3
            self.coords.append(self.axes[i].reshape(shapes[i]) + disp)
        # smooth field that makes organ surfaces lumpy
        self.surface = _smooth_noise(rng, size, 10.0 / self.spacing)
        self.surface_amp = min(0.12 * difficulty, 0.35)
        self.surface_max = float(self.surface.max())
        self.struct = np.full(size, _T.AIR, dtype=np.uint8)
        self.centres: dict[_T, np.ndarray] = {}

    # -- helpers
    def jitter(
        self, centre: Sequence[float], semi: Sequence[float], angles: Sequence[float]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-case random shift (~4 mm), scale (+-12 %) and rotation (~5 deg) of an organ template."""
        rng = self.rng
        c = np.asarray(centre, dtype=np.float64) + rng.normal(0.0, 4.0, 3)
        s = np.maximum(np.asarray(semi, dtype=np.float64) * rng.uniform(0.88, 1.12, 3), self.min_radius)
        rot = _rotation(np.asarray(angles, dtype=np.float64) + rng.normal(0.0, 5.0, 3))
        return c, s, rot

    def _inflation(self, surface_scale: float) -> float:
        """Largest value of ``sqrt(1 + amp * surface)``: how far a perturbed surface can reach, in template units."""
        return float(np.sqrt(max(1.0 + self.surface_amp * surface_scale * self.surface_max, 1.0)))

    def box(self, lo: Sequence[float], hi: Sequence[float]) -> tuple[slice, slice, slice]:
        """Voxel box holding every voxel whose *deformed* position can fall inside the world box ``[lo, hi]``."""
        out = []
        for i in range(3):
            first = int(np.ceil((lo[i] - self.max_disp[i] - self.origin[i]) / self.spacing[i]))
            last = int(np.floor((hi[i] + self.max_disp[i] - self.origin[i]) / self.spacing[i]))
            first, last = max(first, 0), min(last, self.size[i] - 1)
            out.append(slice(first, max(last + 1, first)))
        return out[0], out[1], out[2]

    def crop(self, sl: tuple[slice, slice, slice]) -> list[np.ndarray]:
        return [c[sl] for c in self.coords]

    # -- shapes
    def ellipsoid(
        self, centre: np.ndarray, semi: np.ndarray, rot: np.ndarray, surface_scale: float = 1.0
    ) -> tuple[_Region, np.ndarray]:
        """Rotated, surface-perturbed ellipsoid and its normalised radius ``q`` (1 on the unperturbed surface)."""
        reach = float(semi.max()) * self._inflation(surface_scale)
        sl = self.box(centre - reach, centre + reach)
        d = [c - np.float32(centre[i]) for i, c in enumerate(self.crop(sl))]
        q = np.zeros(d[0].shape, dtype=np.float32)
        for k in range(3):
            u = d[0] * np.float32(rot[0, k]) + d[1] * np.float32(rot[1, k]) + d[2] * np.float32(rot[2, k])
            u /= np.float32(semi[k])
            q += u * u
        mask = q <= 1.0 + np.float32(self.surface_amp * surface_scale) * self.surface[sl]
        return (sl, mask), q

    def tube_z(
        self, cx: _Param, cy: _Param, rx: _Param, ry: _Param, z_range: tuple[float, float], surface_scale: float = 0.5
    ) -> _Region:
        """Tube along z with an elliptic cross-section; parameters are constants or functions of the deformed z."""
        z_lo, z_hi = max(z_range[0], -1e6), min(z_range[1], 1e6)
        z_probe = np.linspace(
            max(z_lo, float(self.axes[2][0]) - self.max_disp[2]),
            min(z_hi, float(self.axes[2][-1]) + self.max_disp[2]),
            64,
        ).astype(np.float32)

        def ev(p: _Param, z: np.ndarray) -> np.ndarray:
            return np.asarray(p(z) if callable(p) else p, dtype=np.float32)

        vals = [ev(p, z_probe) for p in (cx, cy, rx, ry)]
        inflate = self._inflation(surface_scale) + 0.05  # margin for the piecewise evaluation of z-dependent params
        reach = float(max(vals[2].max(), vals[3].max())) * inflate
        lo = (float(vals[0].min()) - reach, float(vals[1].min()) - reach, z_lo)
        hi = (float(vals[0].max()) + reach, float(vals[1].max()) + reach, z_hi)
        sl = self.box(lo, hi)
        x, y, z = self.crop(sl)
        q = ((x - ev(cx, z)) / ev(rx, z)) ** 2 + ((y - ev(cy, z)) / ev(ry, z)) ** 2
        inside = q <= 1.0 + np.float32(self.surface_amp * surface_scale) * self.surface[sl]
        return sl, inside & (z >= z_lo) & (z <= z_hi)

    def polyline_tube(self, points: np.ndarray, radii: np.ndarray) -> _Region:
        """Capsule chain through ``points`` (N x 3, mm) with radii linearly interpolated along each segment."""
        reach = float(radii.max()) * self._inflation(1.0)
        sl = self.box(points.min(axis=0) - reach, points.max(axis=0) + reach)
        coords = self.crop(sl)
        best = np.full(coords[0].shape, np.inf, dtype=np.float32)
        for a, b, ra, rb in zip(points[:-1], points[1:], radii[:-1], radii[1:], strict=True):
            ab = (b - a).astype(np.float32)
            d = [c - np.float32(a[i]) for i, c in enumerate(coords)]
            t = (d[0] * ab[0] + d[1] * ab[1] + d[2] * ab[2]) / np.float32(ab @ ab)
            np.clip(t, 0.0, 1.0, out=t)
            dist2 = sum((d[i] - t * ab[i]) ** 2 for i in range(3))
            radius = np.float32(ra) + t * np.float32(rb - ra)
            np.minimum(best, dist2 / (radius * radius), out=best)
        return sl, best <= 1.0 + np.float32(self.surface_amp) * self.surface[sl]

    def ribs(
        self,
        centre_xy: tuple[float, float],
        semi_xy: tuple[float, float],
        widen: float,
        z_posterior: np.ndarray,
        drop: float,
        half_thickness: float,
        half_height: float,
    ) -> _Region:
        """Rib cage: curved bony bands that follow an ellipse (the inner edge of the body wall) around the body.

        A voxel at angle ``theta`` from the posterior midline (``theta = pi`` at the anterior midline) belongs to rib
        ``k`` of its side when its radial distance to the ellipse is within ``half_thickness``, its height within
        ``half_height`` of the rib's centreline ``z_posterior[side, k] - drop * f(theta)`` (the rib runs down as it goes
        forward; ``f`` grows linearly from 0 at the posterior start to 1 at the anterior midline) and ``theta`` lies
        between :data:`_RIB_THETA_MIN` and ``_RIB_THETA_MAX[k]`` (lower ribs are shorter; a gap stays at the anterior
        midline). Each voxel is tested against the nearest rib only (ribs are much further apart than they are high).

        Args:
            centre_xy: ellipse centre (mm).
            semi_xy: ellipse semi-axes at ``z = 0`` (mm).
            widen: relative growth of the semi-axes per mm of ``z`` (the body is wider superiorly).
            z_posterior: ``(2, n)`` posterior-end heights (mm), row 0 on the patient's right (+x), row 1 on the left,
                each row increasing.
            drop: how far (mm) a rib runs down from its posterior start to the anterior midline.
            half_thickness, half_height: semi-axes (mm) of the rib cross-section, radial and cranio-caudal.
        """
        bx, by = centre_xy
        z_lo = float(z_posterior.min()) - drop - half_height
        z_hi = float(z_posterior.max()) + half_height
        grow = max(1.0 + widen * z_lo, 1.0 + widen * z_hi)
        reach = np.array(semi_xy) * grow + half_thickness
        sl = self.box((bx - reach[0], by - reach[1], z_lo), (bx + reach[0], by + reach[1], z_hi))
        x, y, z = self.crop(sl)
        dx, dy = x - np.float32(bx), y - np.float32(by)
        scale = np.float32(1.0) + np.float32(widen) * z
        rho = np.sqrt((dx / (np.float32(semi_xy[0]) * scale)) ** 2 + (dy / (np.float32(semi_xy[1]) * scale)) ** 2)
        radial = np.sqrt(dx * dx + dy * dy) * (1.0 - 1.0 / np.maximum(rho, np.float32(1e-3)))  # mm outside the ellipse
        ring = np.abs(radial) <= np.float32(half_thickness)
        # the rest only on the thin ring of voxels near the ellipse
        dx, dy, z, radial = dx[ring], dy[ring], z[ring], radial[ring]
        theta = np.arctan2(np.abs(dx), -dy)
        frac = np.clip((theta - np.float32(_RIB_THETA_MIN)) / np.float32(np.pi - _RIB_THETA_MIN), 0.0, 1.0)
        zeta = z + np.float32(drop) * frac  # height at which a rib through this voxel starts, at the back
        right = dx > 0
        n = z_posterior.shape[1]
        nearest, z_rib = np.zeros(zeta.shape, dtype=np.intp), np.zeros_like(zeta)
        for side, where in ((0, right), (1, ~right)):
            heights = z_posterior[side].astype(np.float32)
            i = np.clip(np.searchsorted(heights, zeta[where]), 1, n - 1)
            i -= np.abs(zeta[where] - heights[i - 1]) < np.abs(zeta[where] - heights[i])
            nearest[where], z_rib[where] = i, heights[i]
        inside = (radial / np.float32(half_thickness)) ** 2 + ((zeta - z_rib) / np.float32(half_height)) ** 2 <= 1.0
        span = (theta >= np.float32(_RIB_THETA_MIN)) & (theta <= _RIB_THETA_MAX.astype(np.float32)[nearest])
        ring[ring] = inside & span
        return sl, ring

    # -- painting
    def paint(self, region: _Region, tissue: int, within: np.ndarray | None = None) -> None:
        """Set ``tissue`` on the region's voxels (restricted to the full-size mask ``within`` when given)."""
        sl, mask = region
        if within is not None:
            mask = mask & within[sl]
        self.struct[sl][mask] = tissue

    def ensure_present(self, tissue: _T) -> None:
        """Guarantee at least one voxel of ``tissue`` (the voxel whose deformed position is nearest its centre)."""
        if (self.struct == tissue).any():
            return
        c = self.centres[tissue]
        dist2 = sum((self.coords[i] - np.float32(c[i])) ** 2 for i in range(3))
        self.struct[np.unravel_index(int(np.argmin(dist2)), self.size)] = tissue


_FULL = (slice(None), slice(None), slice(None))


# ----------------------------------------------------------------------------------------------------------------------
# the case generator
# ----------------------------------------------------------------------------------------------------------------------
def _draw_fov(rng: np.random.Generator, fov_jitter: float) -> np.ndarray:
    """Field of view ``(fx, fy, fz)`` in mm of one case (square in-plane).

    The two uniform draws are made whatever ``fov_jitter`` (0 included), so every later draw is the same for every
    ``fov_jitter`` and for both tasks.
    """
    u_xy, u_z = rng.uniform(-1.0, 1.0, 2)
    fov_xy = FOV_XY_MM * (1.0 + fov_jitter * u_xy)
    return np.array([fov_xy, fov_xy, FOV_Z_MM * (1.0 + fov_jitter * u_z)])


def _make_case(
    rng: np.random.Generator, task: str, size: tuple[int, int, int], difficulty: float, fov_jitter: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Build one case from an already-seeded generator (arguments are assumed valid)."""
    cv = _Canvas(rng, size, difficulty, _draw_fov(rng, fov_jitter))
    x, y, z = cv.coords

    # ---- fields and intensity parameters, drawn up front so that the kits tumours (drawn last) change nothing else
    texture = _smooth_noise(rng, size, (0.8, 0.8, 0.8))
    mixture = _smooth_noise(rng, size, 8.0 / cv.spacing)
    gas = _smooth_noise(rng, size, 5.0 / cv.spacing)
    noise = rng.standard_normal(size, dtype=np.float32)
    global_offset = rng.normal(0.0, 3.0)
    organ_offsets = rng.normal(0.0, 3.0, _N_TISSUES)

    # ---- body outline: subcutaneous fat, muscle wall, abdominal cavity (ellipse ~330 x 250 mm)
    a_body = 165.0 * rng.uniform(0.94, 1.06)
    b_body = 125.0 * rng.uniform(0.94, 1.06)
    bx, by = rng.normal(0.0, 3.0, 2)
    fat_mm, wall_mm = rng.uniform(10.0, 25.0), rng.uniform(8.0, 14.0)
    widen = 0.04 / 120.0  # the body is slightly wider superiorly
    z_scale = np.float32(1.0) + np.float32(widen) * z

    def body_ellipse(shrink: float) -> np.ndarray:
        return ((x - bx) / ((a_body - shrink) * z_scale)) ** 2 + ((y - by) / ((b_body - shrink) * z_scale)) ** 2 <= 1.0

    inner = body_ellipse(fat_mm)
    cavity = body_ellipse(fat_mm + wall_mm)
    cv.paint((_FULL, body_ellipse(0.0)), _T.FAT)
    cv.paint((_FULL, inner), _T.MUSCLE)
    cv.paint((_FULL, cavity), _T.CAVITY)

    # vertebral body centre: on the midline, ~80 mm in front of the muscle under the subcutaneous fat of the back
    ys = by - b_body + fat_mm + 80.0
    xs = bx

    # ---- ribs (intensity only): bands along the inner edge of the wall muscle, from behind the kidneys' upper poles
    # upward, ~20-30 mm apart, running down as they go forward; the organs stay inside them
    z_ribs = 22.0 + rng.normal(0.0, 5.0) + np.concatenate([[0.0], np.cumsum(rng.uniform(20.0, 30.0, _N_RIBS - 1))])
    z_ribs = z_ribs[None, :] + rng.normal(0.0, 3.0, (2, 1))  # right / left asymmetry
    rib_drop = rng.uniform(80.0, 120.0)  # ~15-25 degrees down, posterior to anterior
    rib_shrink = fat_mm + wall_mm
    rib_sl, rib_mask = cv.ribs(
        (bx, by),
        (a_body - rib_shrink, b_body - rib_shrink),
        widen,
        z_ribs,
        rib_drop,
        half_thickness=max(3.0, 0.6 * cv.min_radius_xy),
        half_height=max(5.5, 0.6 * float(cv.spacing[2])),
    )
    cv.paint((rib_sl, rib_mask), _T.BONE, inner)

    # ---- musculoskeletal (intensity only): psoas, paraspinal muscles, vertebral column with discs, canal
    def psoas_r(zz: np.ndarray) -> np.ndarray:
        return np.float32(6.0) + np.float32(16.0) * np.clip((np.float32(40.0) - zz) / np.float32(150.0), 0.0, 1.0)

    for side in (1.0, -1.0):

        def psoas_x(zz: np.ndarray, side: float = side) -> np.ndarray:
            return np.float32(xs) + np.float32(side) * (np.float32(24.0) + psoas_r(zz))

        cv.paint(cv.tube_z(psoas_x, ys + 2.0, psoas_r, psoas_r, (-np.inf, 40.0), 0.3), _T.MUSCLE, cavity)
        m_rx, m_ry = 30.0 * rng.uniform(0.9, 1.1), 30.0 * rng.uniform(0.9, 1.1)
        cv.paint(cv.tube_z(xs + side * 40.0, ys - 50.0, m_rx, m_ry, (-np.inf, np.inf), 0.3), _T.MUSCLE, inner)
    vb_x = xs + rng.normal(0.0, 1.5)
    period, disc_phase = rng.uniform(30.0, 36.0), rng.uniform(0.0, 36.0)  # vertebral level height, disc position
    whole = (-np.inf, np.inf)
    # vertebral bodies separated by discs; laminae and spinous processes separated by ligaments (disc-like HU)
    for cx_, cy_, rx_, ry_, half_gap in (
        (vb_x, ys, 22.0, 18.0, 4.5),
        (vb_x, ys - 40.0, 19.0, 7.0, 6.0),
        (vb_x, ys - 56.0, 4.5, 12.0, 8.0),
    ):
        sl, tube = cv.tube_z(cx_, cy_, rx_, ry_, whole, 0.2)
        to_disc = np.abs((cv.coords[2][sl] - np.float32(disc_phase - period / 2)) % np.float32(period) - period / 2)
        cv.paint((sl, tube), _T.MUSCLE, inner)
        cv.paint((sl, tube & (to_disc >= np.float32(half_gap))), _T.BONE, inner)
    cv.paint(cv.tube_z(vb_x, ys - 29.0, 9.0, 8.0, whole, 0.0), _T.CANAL, inner)

    # the organs fill what is left of the cavity (muscles, bones and ribs bound them)
    space = cv.struct == _T.CAVITY

    # ---- inferior vena cava (intensity only), right-anterior of the spine; hidden inside the liver superiorly
    ivc_x, ivc_y = xs + 22.0 + rng.normal(0.0, 2.0), ys + 30.0 + rng.normal(0.0, 2.0)
    cv.paint(cv.tube_z(ivc_x, ivc_y, 13.0, 9.0, (-95.0, 70.0)), _T.IVC, space)

    # ---- organs, painted in an order that keeps every one visible (later wins)
    # liver: large, right (+x), superior; a left lobe reaching across the midline anteriorly, and the inferior tip of
    # the right lobe running down the lateral wall, in front of and lateral to the right kidney
    c, s, r = cv.jitter((70.0, 18.0, 50.0), (82.0, 72.0, 68.0), (0.0, 0.0, -10.0))
    cv.centres[_T.LIVER] = c
    cv.paint(cv.ellipsoid(c, s, r)[0], _T.LIVER, space)
    c, s, r = cv.jitter((5.0, 45.0, 60.0), (55.0, 32.0, 36.0), (0.0, 0.0, 10.0))
    cv.paint(cv.ellipsoid(c, s, r)[0], _T.LIVER, space)
    c, s, r = cv.jitter((95.0, 5.0, -10.0), (36.0, 48.0, 50.0), (0.0, 12.0, 0.0))
    cv.paint(cv.ellipsoid(c, s, r)[0], _T.LIVER, space)

    # spleen: left (-x), posterior-lateral, superior
    c, s, r = cv.jitter((-98.0, -45.0, 45.0), (28.0, 52.0, 48.0), (0.0, 10.0, -30.0))
    cv.centres[_T.SPLEEN] = c
    cv.paint(cv.ellipsoid(c, s, r)[0], _T.SPLEEN, space)

    # stomach: left-anterior; wall, fluid lumen and an anterior (non-dependent, supine) air pocket
    c, s, r = cv.jitter((-55.0, 50.0, 50.0), (50.0, 38.0, 55.0), (0.0, 0.0, 20.0))
    cv.centres[_T.STOMACH_WALL] = c
    (sl, outer), q = cv.ellipsoid(c, s, r)
    wall = max(5.0, float(cv.spacing.min()))
    lumen = outer & (q <= np.float32((1.0 - wall / s.min()) ** 2))
    air = lumen & (y[sl] >= np.float32(c[1] + rng.uniform(0.15, 0.45) * s[1]))
    cv.paint((sl, outer), _T.STOMACH_WALL, space)
    cv.paint((sl, lumen), _T.STOMACH_LUMEN, space)
    cv.paint((sl, air), _T.STOMACH_AIR, space)

    # kidneys: posterior, either side of the spine, right one lower; upper poles tilted medially; a fat-filled renal
    # sinus (unlabelled) opens toward the hilum, medially and slightly anteriorly
    kidneys: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for tissue, side, zc in ((_T.KIDNEY_R, 1.0, -22.0), (_T.KIDNEY_L, -1.0, -6.0)):
        c, s, r = cv.jitter((xs + side * 70.0, ys + 4.0, zc), (30.0, 25.0, 55.0), (0.0, -side * 12.0, side * 25.0))
        cv.centres[tissue] = c
        cv.paint(cv.ellipsoid(c, s, r)[0], tissue, space)
        sinus_c = c + r @ (np.array([-side * 0.55, 0.2, 0.0]) * s)
        sinus_s = s * np.array([0.5, 0.38, 0.5]) * rng.uniform(0.85, 1.15)
        cv.paint(cv.ellipsoid(sinus_c, sinus_s, r, surface_scale=0.5)[0], _T.FAT, cv.struct == tissue)
        kidneys.append((c, s, r))

    # pancreas: elongated tube from the head (right of midline, near the duodenum) across the midline in front of the
    # aorta and left kidney, to the tail at the splenic hilum
    points = np.array(
        [
            [xs + 38.0, ys + 52.0, -5.0],
            [xs + 10.0, ys + 66.0, 2.0],
            [xs - 25.0, ys + 62.0, 8.0],
            [xs - 68.0, ys + 40.0, 15.0],
            [xs - 88.0, ys + 26.0, 20.0],
        ]
    )
    points += rng.normal(0.0, 4.0, points.shape) + rng.normal(0.0, 4.0, 3)
    radii = np.maximum(np.array([15.0, 11.0, 11.0, 10.0, 8.0]) * rng.uniform(0.85, 1.15), cv.min_radius)
    cv.centres[_T.PANCREAS] = points[2]
    cv.paint(cv.polyline_tube(points, radii), _T.PANCREAS, space)

    # gallbladder: under the liver, anterior-right
    c, s, r = cv.jitter((55.0, 50.0, 0.0), (14.0, 14.0, 30.0), (20.0, 0.0, 0.0))
    cv.centres[_T.GALLBLADDER] = c
    cv.paint(cv.ellipsoid(c, s, r, surface_scale=0.5)[0], _T.GALLBLADDER, space)

    # aorta: tube just anterior-left of the vertebral body, along z, bifurcating below z ~ -95 mm
    ax0, ay0 = xs - 18.0 + rng.normal(0.0, 2.0), ys + 31.0 + rng.normal(0.0, 2.0)
    phase = np.float32(rng.uniform(0.0, 2.0 * np.pi))
    min_r = np.float32(cv.min_radius_xy)

    def aorta_x(zz: np.ndarray) -> np.ndarray:
        return np.float32(ax0) + np.float32(3.0) * np.sin(zz / np.float32(60.0) + phase)

    def aorta_r(zz: np.ndarray) -> np.ndarray:
        return np.maximum(np.float32(10.5) + np.float32(1.5 / 120.0) * zz, min_r)

    cv.centres[_T.AORTA] = np.array([ax0, ay0, 0.0])
    cv.paint(cv.tube_z(aorta_x, ay0, aorta_r, aorta_r, (-95.0, np.inf)), _T.AORTA, space)

    # ---- bowel gas pockets in the remaining visceral space; none behind the kidneys (retroperitoneal fat, no bowel)
    retro = np.clip((np.float32(ys + 40.0) - y) / np.float32(30.0), 0.0, 1.0)  # 1 behind the kidneys' centres
    cv.paint((_FULL, (gas > 2.3) & (retro < 0.5)), _T.BOWEL_GAS, cv.struct == _T.CAVITY)

    # ---- every organ present, whatever the resolution / deformation (in both tasks, which keeps their images equal)
    for tissue in cv.centres:
        cv.ensure_present(tissue)

    # ---- kits: 0-2 tumours per kidney, centred near the kidney surface so they bulge out of its contour
    tumour_hu: list[float] = []
    if task == "kits":
        soft = cavity & (cv.struct != _T.BONE) & (cv.struct != _T.CANAL)
        for kc, ks, kr in kidneys:
            for _ in range(int(rng.integers(0, _MAX_TUMOURS_PER_KIDNEY + 1))):
                direction = rng.standard_normal(3)
                direction /= np.linalg.norm(direction)
                centre = kc + kr @ (direction * rng.uniform(0.75, 1.05) * ks)
                radius = rng.uniform(4.0, 15.0)  # 8-30 mm diameter
                semi = np.maximum(radius * rng.uniform(0.8, 1.2, 3), cv.min_radius)
                rot = _rotation(rng.uniform(-30.0, 30.0, 3))
                tissue = _T.TUMOUR + len(tumour_hu)
                tumour_hu.append(rng.uniform(-5.0, 10.0) / difficulty)  # relative to kidney HU: ~30-45 HU
                cv.paint(cv.ellipsoid(centre, semi, rot, surface_scale=0.5)[0], tissue, soft)
        for tissue in _KITS_TISSUE_LABEL:  # a tumour may cover a whole (small, low-resolution) kidney
            cv.ensure_present(tissue)

    label = _label_lut(task)[cv.struct]

    # ---- intensities
    close_mean = float(np.mean([_BASE_HU[t] for t in _CLOSE_ORGANS]))
    hu_lut = np.zeros(_N_TISSUES, dtype=np.float32)
    tex_lut = np.zeros(_N_TISSUES, dtype=np.float32)
    for tissue, hu in _BASE_HU.items():
        if tissue in _CLOSE_ORGANS:
            hu = close_mean + (hu - close_mean) / difficulty
        if tissue not in (_T.AIR, _T.CAVITY):
            hu += organ_offsets[tissue]
        hu_lut[tissue] = hu
        tex_lut[tissue] = _TEXTURE_HU.get(tissue, 0.0)
    kidney_hu = 0.5 * (hu_lut[_T.KIDNEY_R] + hu_lut[_T.KIDNEY_L])
    for k, delta in enumerate(tumour_hu):
        hu_lut[_T.TUMOUR + k] = kidney_hu + delta
        tex_lut[_T.TUMOUR + k] = _TEXTURE_HU[_T.KIDNEY_R] + _TUMOUR_TEXTURE_HU

    image = hu_lut[cv.struct]
    image += tex_lut[cv.struct] * texture
    cav = cv.struct == _T.CAVITY
    # fairly sharp fat / bowel-loop boundaries, fat around and behind the kidneys
    weight = 1.0 / (1.0 + np.exp(-5.0 * (mixture[cav] - 1.5 * retro[cav])))
    image[cav] += _CAVITY_FAT_HU + (_CAVITY_BOWEL_HU - _CAVITY_FAT_HU) * weight
    bone = cv.struct == _T.BONE
    # cortical rim, found in-plane (thin-slice endplates would otherwise turn whole slices of a vertebra cortical)
    rim = bone & ~ndimage.binary_erosion(bone, structure=ndimage.generate_binary_structure(2, 1)[:, :, None])
    image[rim] = _CORTEX_HU + organ_offsets[_T.BONE]
    if tumour_hu:
        tumours = cv.struct >= _T.TUMOUR
        image[tumours] += _TUMOUR_BLOB_HU * cv.surface[tumours]
    image[cv.struct != _T.AIR] += global_offset

    # partial-volume blur, then acquisition noise
    image = ndimage.gaussian_filter(image, sigma=0.8, mode="nearest", truncate=3.0)
    image += np.float32(20.0 * difficulty) * noise
    np.clip(image, _HU_MIN, _HU_MAX, out=image)
    return np.rint(image).astype(np.int16), label, cv.affine


def make_phantom_case(
    seed: int | Sequence[int],
    task: str = "synapse",
    size: tuple[int, int, int] = (96, 96, 48),
    difficulty: float = 1.0,
    fov_jitter: float = 0.15,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generate one synthetic abdominal CT case.

    Args:
        seed: entropy for ``np.random.default_rng`` -- a non-negative int or a sequence of them.
            :func:`generate_phantom_dataset` uses ``[seed, case_index]``, so ``make_phantom_case([seed, i], ...)``
            reproduces case ``i`` of a dataset generated with ``seed``.
        task: ``"synapse"`` (8 abdominal organs, :data:`SYNAPSE_LABELS`) or ``"kits"`` (kidney and tumour,
            :data:`KITS_LABELS`).
        size: array shape ``(nx, ny, nz)``; each dimension >= :data:`MIN_SIZE`. The spacing is the case's field of
            view divided by the size.
        difficulty: > 0. Scales the deformation amplitude and the noise (sigma = 20 * difficulty HU) and divides the HU
            differences between liver, spleen, pancreas and stomach wall (and between kidney and tumour).
        fov_jitter: relative half-range of the per-case field of view, in ``[0, MAX_FOV_JITTER]``: in-plane
            ``400 * (1 + fov_jitter * u)`` mm and cranio-caudal ``240 * (1 + fov_jitter * v)`` mm, ``u, v`` uniform in
            [-1, 1] drawn from the case's generator (0.15: 340-460 mm and 204-276 mm; 0: fixed 400 x 400 x 240 mm).
            Organs keep their physical size; a small field of view cuts the body.

    Returns:
        ``(image, label, affine)``: the image as an int16 HU array of shape ``size``, the label map as a uint8 array of
        shape ``size``, both in RAS+ voxel order, and the 4x4 float64 RAS+ affine (see :func:`phantom_affine`; its
        diagonal holds the case's spacing).

    Raises:
        ValueError: if ``task`` is unknown, ``size`` is not 3 ints >= :data:`MIN_SIZE`, ``difficulty`` <= 0,
            ``fov_jitter`` is outside ``[0, MAX_FOV_JITTER]``, or ``seed`` is not valid generator entropy (e.g.
            negative).
    """
    task = _check_task(task)
    dims = _check_size(size)
    difficulty = _check_difficulty(difficulty)
    fov_jitter = _check_fov_jitter(fov_jitter)
    try:
        rng = np.random.default_rng(seed)
    except (TypeError, ValueError) as err:
        raise ValueError(f"seed must be a non-negative int or a sequence of them, got {seed!r}.") from err
    return _make_case(rng, task, dims, difficulty, fov_jitter)


# ----------------------------------------------------------------------------------------------------------------------
# dataset writer
# ----------------------------------------------------------------------------------------------------------------------
def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write ``array`` atomically as NIfTI-1 with sform/qform code 1 and millimetre units."""
    image = nib.Nifti1Image(array, affine)
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
    image.header.set_zooms(tuple(float(v) for v in np.abs(np.diag(affine)[:3])))
    image.header.set_xyzt_units(xyz="mm")
    with atomic_path(path) as tmp:
        nib.save(image, str(tmp))


def _save_json(obj: dict, path: Path) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(obj, indent=2) + "\n")


def generate_phantom_dataset(
    out_dir: str | Path,
    task: str = "synapse",
    cases: int = 12,
    seed: int = 0,
    size: tuple[int, int, int] = (96, 96, 48),
    difficulty: float = 1.0,
    test_cases: int | None = None,
    progress: bool = False,
    fov_jitter: float = 0.15,
) -> Path:
    """Write a synthetic phantom dataset in the Medical Segmentation Decathlon layout.

    Files: ``out_dir/imagesTr/<task>_phantom_XXXX.nii.gz`` (int16 HU), ``out_dir/labelsTr/<task>_phantom_XXXX.nii.gz``
    (uint8) and ``out_dir/dataset.json`` (readable with ``monai.data.load_decathlon_datalist`` using the
    ``"training"`` or ``"test"`` key; test entries keep their labels since they are the held-out evaluation cases).
    Case ``i`` is ``make_phantom_case([seed, i], task, size, difficulty, fov_jitter)``; the last ``test_cases`` cases
    form the test split. Each case has its own field of view, hence spacing, recorded in its NIfTI affine. Every file
    is written under a temporary name and then renamed, ``dataset.json`` last.

    Args:
        out_dir: output folder (created if needed; existing files with the same names are replaced).
        task: ``"synapse"`` or ``"kits"``.
        cases: total number of cases (>= 1).
        seed: dataset seed (non-negative int).
        size: array shape of every case, each dimension >= :data:`MIN_SIZE`.
        difficulty: > 0, see :func:`make_phantom_case`.
        test_cases: number of held-out cases, ``0 <= test_cases < cases``. Default ``max(1, round(0.25 * cases))``,
            capped at ``cases - 1`` (so a single case gives no test split).
        progress: show progress over cases: a bar on a terminal, a few plain lines otherwise
            (:func:`mskd.progress.with_progress`).
        fov_jitter: relative half-range of the per-case field of view, see :func:`make_phantom_case` (0 gives every
            case the fixed 400 x 400 x 240 mm field of view).

    Returns:
        The path of the written ``dataset.json``.

    Raises:
        ValueError: for an unknown ``task``, ``cases`` < 1, ``test_cases`` out of range, an invalid ``size`` or
            ``seed``, ``difficulty`` <= 0, or ``fov_jitter`` outside ``[0, MAX_FOV_JITTER]``.
    """
    task = _check_task(task)
    dims = _check_size(size)
    difficulty = _check_difficulty(difficulty)
    fov_jitter = _check_fov_jitter(fov_jitter)
    if isinstance(cases, bool) or not isinstance(cases, int | np.integer) or cases < 1:
        raise ValueError(f"cases must be an int >= 1, got {cases!r}.")
    cases = int(cases)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}.")
    if test_cases is None:
        test_cases = min(max(1, round(cases * 0.25)), cases - 1)
    elif isinstance(test_cases, bool) or not isinstance(test_cases, int | np.integer):
        raise ValueError(f"test_cases must be an int, got {test_cases!r}.")
    if test_cases < 0 or test_cases >= cases:
        raise ValueError(f"test_cases must satisfy 0 <= test_cases < cases ({cases}), got {test_cases!r}.")
    test_cases = int(test_cases)

    out = Path(out_dir)
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    entries = []
    indices: Iterable[int] = range(cases)
    if progress:
        indices = with_progress(indices, cases, f"{task} phantom", unit="case")
    for i in indices:
        image, label, affine = _make_case(np.random.default_rng([int(seed), i]), task, dims, difficulty, fov_jitter)
        name = f"{task}_phantom_{i:04d}.nii.gz"
        _save_nifti(image, affine, out / "imagesTr" / name)
        _save_nifti(label, affine, out / "labelsTr" / name)
        entries.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})

    n_train = cases - test_cases
    if fov_jitter == 0.0:
        spacing = [round(float(v), 4) for v in np.diag(phantom_affine(dims))[:3]]
        geometry = f"spacing_mm={spacing} (field of view {FOV_XY_MM:g} x {FOV_XY_MM:g} x {FOV_Z_MM:g} mm)"
    else:
        lo, hi = 1.0 - fov_jitter, 1.0 + fov_jitter
        geometry = (
            f"field of view drawn per case (fov_jitter={fov_jitter:g}): {FOV_XY_MM * lo:g}-{FOV_XY_MM * hi:g} mm "
            f"in-plane, {FOV_Z_MM * lo:g}-{FOV_Z_MM * hi:g} mm cranio-caudal, so spacing_mm ranges "
            f"{FOV_XY_MM * lo / dims[0]:.4g}-{FOV_XY_MM * hi / dims[0]:.4g} (x), "
            f"{FOV_XY_MM * lo / dims[1]:.4g}-{FOV_XY_MM * hi / dims[1]:.4g} (y), "
            f"{FOV_Z_MM * lo / dims[2]:.4g}-{FOV_Z_MM * hi / dims[2]:.4g} (z); each case's spacing is in its affine"
        )
    description = (
        f"Synthetic abdominal CT phantom generated by mskd ({task} labels): deformed ellipsoid/tube organs with "
        f"overlapping HU, ribs and spine, texture, partial-volume blur and noise. seed={int(seed)}, "
        f"difficulty={difficulty:g}, size={list(dims)}, {geometry}. Not real patient data."
    )
    dataset = {
        "name": f"{task}_phantom",
        "description": description,
        "reference": "mskd.data.phantom (synthetic)",
        "licence": "CC0-1.0",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {str(k): v for k, v in TASK_LABELS[task].items()},
        "numTraining": n_train,
        "numTest": test_cases,
        "training": entries[:n_train],
        "test": entries[n_train:],
    }
    json_path = out / "dataset.json"
    _save_json(dataset, json_path)
    return json_path
