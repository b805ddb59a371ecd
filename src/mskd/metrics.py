"""Per-case, per-organ Dice and HD95 on 3D label maps, in two named conventions, with nan-aware summaries and CSVs.

Two conventions are computed side by side for every case and organ (DESIGN §3):

**Spacing-aware (the project's primary numbers)**, keys ``dice`` and ``hd95_mm``:

- Dice = 2|P ∩ G| / (|P| + |G|), a fraction in [0, 1].
- HD95 in millimetres, exactly as MONAI 1.6 ``compute_hausdorff_distance(..., percentile=95, directed=False,
  spacing=spacing)`` defines it: the surface of a mask is ``mask XOR binary_erosion(mask)`` (SciPy's default
  structure, i.e. face connectivity, 6 neighbours in 3D; voxels on the volume border count as surface); for every
  surface voxel of P the Euclidean distance, in mm (voxel coordinates scaled by ``spacing``), to the nearest surface
  voxel of G, and the same from G to P; the 95th percentile (``torch.quantile``, linear interpolation) of **each
  directed set separately**; HD95 = the **larger** of the two percentiles. (MONAI returns NaN when both masks are
  empty and ``inf`` when one is; those cases never reach it here, see the table.)

**TransUNet convention** (to compare with TransUNet-style tables), keys ``dice_transunet`` and
``hd95_transunet_vox``: voxel units (spacing ignored), medpy's ``dc`` and ``hd95``. medpy's HD95 uses the same
surfaces (``mask XOR binary_erosion(mask, generate_binary_structure(3, 1))``) and the distances from each surface to
the other one (``distance_transform_edt`` of the other surface's complement, unit spacing), but takes the 95th
percentile (``numpy.percentile``, linear interpolation) of the **concatenation** of both directed sets. It is
re-implemented here with SciPy (medpy is not a dependency): :func:`hd95_medpy`.

Rules when an organ is missing (P prediction, G ground truth; "TransUNet code" is
``calculate_metric_percase`` in ``utils.py`` of github.com/Beckschen/TransUNet, which returns ``(1, 0)`` when
``pred.sum() > 0 and gt.sum() == 0`` and ``(0, 0)`` in every other one-sided or empty case):

=======  ================  =====  =======  ==============  ==================  ===================================
G        P                 dice   hd95_mm  dice_transunet  hd95_transunet_vox  TransUNet columns follow
=======  ================  =====  =======  ==============  ==================  ===================================
present  present           Dice   HD95     Dice            medpy HD95          TransUNet code (medpy dc, hd95)
present  absent (missed)   0      NaN      0               0                   TransUNet code (``else`` branch)
absent   present (spur.)   0      NaN      1               0                   TransUNet code (``elif`` branch)
absent   absent            NaN    NaN      1               0                   our issue / DESIGN §3
=======  ================  =====  =======  ==============  ==================  ===================================

The one-sided TransUNet rules are kept as the real code has them (a spurious organ scores Dice 1 there), so that
our TransUNet-convention numbers reproduce TransUNet-style tables; for an organ absent in both, TransUNet's code
returns ``(0, 0)`` but our issue (DESIGN §3) states ``(1, 0)``, which is what is used.

In the spacing-aware convention NaN means "undefined, left out of the means"; a missed or spurious organ scores Dice 0
(it counts against the model) and has no HD95, so :func:`summarise` reports how many cases were missed and spurious
next to the number of cases each mean is over: nothing is dropped silently. The TransUNet columns are never NaN.
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from scipy import ndimage

from mskd.io import atomic_open

__all__ = [
    "CASE_METRIC_KEYS",
    "CASE_CSV_COLUMNS",
    "SUMMARY_CSV_COLUMNS",
    "case_metrics",
    "format_columns",
    "format_mean_std",
    "format_summary",
    "gap_closed",
    "hd95_medpy",
    "mean_std",
    "summarise",
    "write_case_csv",
    "write_summary_csv",
]

#: The four per-organ metrics of :func:`case_metrics`, in CSV column order.
CASE_METRIC_KEYS: tuple[str, ...] = ("dice", "hd95_mm", "dice_transunet", "hd95_transunet_vox")
#: Columns of the per-case CSV (one row per case and organ).
CASE_CSV_COLUMNS: tuple[str, ...] = ("case", "organ", *CASE_METRIC_KEYS, "gt_voxels", "pred_voxels")
#: Columns of the summary CSV (one row per organ, then the ``mean`` row).
SUMMARY_CSV_COLUMNS: tuple[str, ...] = (
    "organ",
    "n",
    "n_hd95",
    "missed",
    "spurious",
    "dice_mean",
    "dice_std",
    "hd95_mm_mean",
    "hd95_mm_std",
    "dice_transunet_mean",
    "dice_transunet_std",
    "hd95_transunet_vox_mean",
    "hd95_transunet_vox_std",
)

# Face connectivity (6 neighbours in 3D): medpy's ``connectivity=1`` and SciPy's default erosion structure.
_FACE_STRUCTURE = ndimage.generate_binary_structure(3, 1)


def _to_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = x.as_tensor() if hasattr(x, "as_tensor") else x  # MetaTensor -> plain tensor
        return x.numpy()
    return np.asarray(x)


def _as_label_map(x: np.ndarray | torch.Tensor, name: str, num_classes: int) -> np.ndarray:
    """``x`` as an integer array, checking that every value is an integer in ``[0, num_classes)``."""
    arr = _to_numpy(x)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(f"{name} must hold integer class labels, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating):
        bad = arr[~np.isfinite(arr) | (arr != np.round(arr))]
        if bad.size:
            raise ValueError(f"{name} must hold integer class labels, found non-integer values {np.unique(bad)[:10]}")
    bad = arr[(arr < 0) | (arr >= num_classes)]
    if bad.size:
        raise ValueError(
            f"{name} has label values outside [0, {num_classes}) (num_classes={num_classes}): {np.unique(bad)[:10]}"
        )
    return arr.astype(np.int64 if num_classes > 255 else np.uint8, copy=False)


def _check_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    try:
        values = tuple(float(s) for s in np.asarray(spacing, dtype=float).ravel())
    except (TypeError, ValueError) as err:
        raise ValueError(f"spacing must be 3 positive numbers (mm), got {spacing!r}") from err
    if len(values) != 3 or not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing must be 3 positive finite numbers (mm), got {spacing!r}")
    return values  # type: ignore[return-value]


def _surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels: ``mask XOR binary_erosion(mask)`` with face connectivity (outside the array counts as 0)."""
    return mask ^ ndimage.binary_erosion(mask, structure=_FACE_STRUCTURE, iterations=1)


def hd95_medpy(result: np.ndarray, reference: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """medpy's ``hd95``: 95th percentile of the concatenated directed surface distances of two binary masks.

    Surfaces are ``mask XOR binary_erosion(mask, generate_binary_structure(ndim, 1))``; the distances of one
    surface's voxels to the other surface are read from ``distance_transform_edt(~other_surface, sampling=spacing)``;
    the result is ``numpy.percentile(concatenate([d(result→reference), d(reference→result)]), 95)``.

    Args:
        result: binary mask (any shape; nonzero is foreground).
        reference: binary mask of the same shape.
        spacing: voxel size per axis; ``None`` for unit spacing (medpy's default and the TransUNet convention).

    Returns:
        the HD95 in the units of ``spacing`` (voxels when ``None``).

    Raises:
        ValueError: when the shapes differ or either mask is empty (medpy raises ``RuntimeError`` there).
    """
    result = np.asarray(result).astype(bool, copy=False)
    reference = np.asarray(reference).astype(bool, copy=False)
    if result.shape != reference.shape:
        raise ValueError(f"result and reference shapes differ: {result.shape} vs {reference.shape}")
    if not result.any() or not reference.any():
        raise ValueError("hd95_medpy needs two non-empty masks (the distance to an empty surface is undefined)")
    # Exact crop to the union's bounding box: every surface voxel lies inside it and outside it both masks are 0,
    # so erosion (border value 0) and the nearest-surface distances are the same as on the full volume.
    box = ndimage.find_objects((result | reference).astype(np.uint8))[0]
    result, reference = result[box], reference[box]
    structure = ndimage.generate_binary_structure(result.ndim, 1)
    s_res = result ^ ndimage.binary_erosion(result, structure=structure, iterations=1)
    s_ref = reference ^ ndimage.binary_erosion(reference, structure=structure, iterations=1)
    d_res_ref = ndimage.distance_transform_edt(~s_ref, sampling=spacing)[s_res]
    d_ref_res = ndimage.distance_transform_edt(~s_res, sampling=spacing)[s_ref]
    return float(np.percentile(np.concatenate([d_res_ref, d_ref_res]), 95))


def _hd95_monai(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """MONAI's symmetric HD95 (max of the two directed 95th percentiles) in mm, for two non-empty masks."""
    from monai.metrics import compute_hausdorff_distance

    # Cropping to the union's bounding box is exact (see hd95_medpy) and keeps memory per organ small.
    box = ndimage.find_objects((pred | gt).astype(np.uint8))[0]
    y_pred = torch.from_numpy(np.ascontiguousarray(pred[box]))[None, None]
    y = torch.from_numpy(np.ascontiguousarray(gt[box]))[None, None]
    with warnings.catch_warnings():
        # MONAI 1.6 passes its own deprecated ``always_return_as_numpy`` argument internally.
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        hd = compute_hausdorff_distance(
            y_pred, y, include_background=True, percentile=95, directed=False, spacing=[list(spacing)]
        )
    return float(hd[0, 0])


def case_metrics(
    pred: np.ndarray | torch.Tensor,
    label: np.ndarray | torch.Tensor,
    num_classes: int,
    spacing: Sequence[float],
) -> dict[str, np.ndarray]:
    """Dice and HD95 of every foreground class of one case, in both conventions (see the module docstring).

    Args:
        pred: predicted label map, shape ``H, W, D`` (integers, or integral floats, in ``[0, num_classes)``).
        label: ground-truth label map of the same shape and grid.
        num_classes: number of classes including background (class 0, which is not scored).
        spacing: voxel size in mm along the three array axes (e.g. ``MetaTensor.pixdim``); used by ``hd95_mm`` only.

    Returns:
        arrays of length ``num_classes - 1`` (index ``k - 1`` for class ``k``): ``dice``, ``hd95_mm`` (float64, NaN
        where undefined), ``dice_transunet``, ``hd95_transunet_vox`` (float64, never NaN), ``gt_voxels`` and
        ``pred_voxels`` (int64 voxel counts, from which "missed" and "spurious" follow).

    Raises:
        ValueError: when the shapes differ or are not 3D, a label value is outside ``[0, num_classes)`` or not an
            integer, ``num_classes < 2``, or ``spacing`` is not 3 positive numbers.
        TypeError: when a label map is not numeric.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2 (background + at least one organ), got {num_classes!r}")
    num_classes = int(num_classes)
    pred_shape, label_shape = tuple(pred.shape), tuple(label.shape)
    if pred_shape != label_shape:
        raise ValueError(f"pred and label shapes differ: pred {pred_shape} vs label {label_shape}")
    if len(pred_shape) != 3:
        raise ValueError(f"pred and label must be 3D label maps (H, W, D), got shape {pred_shape}")
    sp = _check_spacing(spacing)
    p = _as_label_map(pred, "pred", num_classes)
    g = _as_label_map(label, "label", num_classes)

    pred_voxels = np.bincount(p.ravel(), minlength=num_classes)[1:].astype(np.int64)
    gt_voxels = np.bincount(g.ravel(), minlength=num_classes)[1:].astype(np.int64)
    agree = p == g
    overlap = np.bincount(g[agree], minlength=num_classes)[1:].astype(np.int64)
    total = pred_voxels + gt_voxels
    gt_in, pred_in = gt_voxels > 0, pred_voxels > 0
    both = gt_in & pred_in

    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(total > 0, 2.0 * overlap / total, np.nan)  # one-sided: overlap 0 -> Dice 0
    hd95_mm = np.full(num_classes - 1, np.nan)
    dice_tu = np.where(both, dice, np.where(gt_in, 0.0, 1.0))  # missed 0; spurious 1; both absent 1
    hd95_tu = np.zeros(num_classes - 1)

    # Per-organ bounding boxes in one pass each; HD95 only where the organ is in both maps.
    boxes_p = ndimage.find_objects(p, max_label=num_classes - 1)
    boxes_g = ndimage.find_objects(g, max_label=num_classes - 1)
    for k in np.flatnonzero(both) + 1:
        bp, bg = boxes_p[k - 1], boxes_g[k - 1]
        box = tuple(slice(min(a.start, b.start), max(a.stop, b.stop)) for a, b in zip(bp, bg, strict=True))
        pk, gk = p[box] == k, g[box] == k
        hd95_mm[k - 1] = _hd95_monai(pk, gk, sp)
        hd95_tu[k - 1] = hd95_medpy(pk, gk)
    return {
        "dice": dice.astype(np.float64),
        "hd95_mm": hd95_mm,
        "dice_transunet": dice_tu.astype(np.float64),
        "hd95_transunet_vox": hd95_tu,
        "gt_voxels": gt_voxels,
        "pred_voxels": pred_voxels,
    }


def _nan_stats(values: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Count of non-NaN values, their mean and population std (ddof 0) along ``axis``; NaN where the count is 0."""
    ok = ~np.isnan(values)
    n = ok.sum(axis=axis)
    filled = np.where(ok, values, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = filled.sum(axis=axis) / n
        dev = np.where(ok, values - np.expand_dims(mean, axis), 0.0)
        std = np.sqrt((dev**2).sum(axis=axis) / n)
    return n, mean, std


def summarise(
    per_case: Sequence[Mapping[str, np.ndarray]], organ_names: Sequence[str]
) -> list[dict[str, str | int | float]]:
    """Per-organ mean ± std over cases (NaN-aware) and the mean over organs.

    Args:
        per_case: one :func:`case_metrics` result per case.
        organ_names: the foreground organ names, one per metric element.

    Returns:
        one row per organ, then a row with ``organ == "mean"``, with the keys of :data:`SUMMARY_CSV_COLUMNS`.
        Organ rows: ``n`` cases with a defined Dice (the organ is in the ground truth or the prediction), ``n_hd95``
        cases with a defined HD95 (in both), ``missed`` (in the ground truth only) and ``spurious`` (in the
        prediction only) case counts; ``*_mean``/``*_std`` over the cases where the metric is not NaN (std with
        ddof 0; NaN when no case defines it). TransUNet columns are over all cases. ``mean`` row: ``n`` is the
        number of cases, ``n_hd95`` empty, ``missed``/``spurious`` the totals over organs, each ``*_mean`` the mean
        over organs of the organ means (organs whose mean is NaN left out, as TransUNet averages per-organ means),
        and ``*_std`` NaN (no single spread of a mean of means).

    Raises:
        ValueError: when ``per_case`` is empty, an organ is named ``mean``, or a metric's length differs from the
            number of organs.
    """
    names = list(organ_names)
    if not per_case:
        raise ValueError("summarise needs at least one case")
    if "mean" in names:
        raise ValueError(f"'mean' names the summary row and cannot be an organ name: {names}")
    stacked: dict[str, np.ndarray] = {}
    for key in (*CASE_METRIC_KEYS, "gt_voxels", "pred_voxels"):
        arr = np.stack([np.asarray(m[key], dtype=np.float64) for m in per_case])
        if arr.shape[1] != len(names):
            raise ValueError(f"metric '{key}' has {arr.shape[1]} values per case but {len(names)} organ names: {names}")
        stacked[key] = arr
    gt_in, pred_in = stacked["gt_voxels"] > 0, stacked["pred_voxels"] > 0
    missed = (gt_in & ~pred_in).sum(axis=0)
    spurious = (~gt_in & pred_in).sum(axis=0)
    stats = {key: _nan_stats(stacked[key]) for key in CASE_METRIC_KEYS}

    rows: list[dict[str, str | int | float]] = []
    for i, name in enumerate(names):
        row: dict[str, str | int | float] = {
            "organ": name,
            "n": int(stats["dice"][0][i]),
            "n_hd95": int(stats["hd95_mm"][0][i]),
            "missed": int(missed[i]),
            "spurious": int(spurious[i]),
        }
        for key in CASE_METRIC_KEYS:
            row[f"{key}_mean"] = float(stats[key][1][i])
            row[f"{key}_std"] = float(stats[key][2][i])
        rows.append(row)
    mean_row: dict[str, str | int | float] = {
        "organ": "mean",
        "n": len(per_case),
        "n_hd95": "",
        "missed": int(missed.sum()),
        "spurious": int(spurious.sum()),
    }
    for key in CASE_METRIC_KEYS:
        organ_means = stats[key][1]
        mean_row[f"{key}_mean"] = float(np.nanmean(organ_means)) if np.any(~np.isnan(organ_means)) else math.nan
        mean_row[f"{key}_std"] = math.nan
    rows.append(mean_row)
    return rows


def _fmt(value: object) -> str:
    if isinstance(value, (float, np.floating)):
        return "nan" if math.isnan(value) else repr(float(value))
    return str(value)


def _write_csv_atomic(path: str | os.PathLike, columns: Sequence[str], rows: Sequence[Mapping[str, object]]) -> str:
    """Write ``rows`` as CSV through :func:`mskd.io.atomic_open` (a temporary file in the folder, then a rename)."""
    with atomic_open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_fmt(row[c]) for c in columns])
    return str(path)


def write_case_csv(
    path: str | os.PathLike,
    cases: Sequence[str],
    organ_names: Sequence[str],
    per_case_metrics: Sequence[Mapping[str, np.ndarray]],
) -> str:
    """Write the per-case metrics as a tidy CSV, one row per case and organ (columns :data:`CASE_CSV_COLUMNS`).

    Floats are written with full precision (``repr``), undefined values as ``nan``. The file is written atomically
    (a temporary file in the same folder, then ``os.replace``), so a reader never sees half a file.

    Args:
        path: the CSV file (its folder is created).
        cases: one case name per element of ``per_case_metrics``.
        organ_names: the foreground organ names.
        per_case_metrics: one :func:`case_metrics` result per case.

    Returns:
        ``path`` as a string.

    Raises:
        ValueError: when ``cases`` and ``per_case_metrics`` differ in length, or a metric's length differs from the
            number of organs.
    """
    names = list(organ_names)
    if len(cases) != len(per_case_metrics):
        raise ValueError(f"{len(cases)} case names for {len(per_case_metrics)} cases of metrics")
    rows = []
    for case, metrics in zip(cases, per_case_metrics, strict=True):
        for key in (*CASE_METRIC_KEYS, "gt_voxels", "pred_voxels"):
            if len(metrics[key]) != len(names):
                raise ValueError(
                    f"case '{case}': metric '{key}' has {len(metrics[key])} values but {len(names)} organ names"
                )
        for i, organ in enumerate(names):
            row: dict[str, object] = {"case": case, "organ": organ}
            row.update({key: float(metrics[key][i]) for key in CASE_METRIC_KEYS})
            row.update({key: int(metrics[key][i]) for key in ("gt_voxels", "pred_voxels")})
            rows.append(row)
    return _write_csv_atomic(path, CASE_CSV_COLUMNS, rows)


def write_summary_csv(path: str | os.PathLike, summary: Sequence[Mapping[str, object]]) -> str:
    """Write :func:`summarise`'s rows (columns :data:`SUMMARY_CSV_COLUMNS`) atomically; returns ``path``."""
    return _write_csv_atomic(path, SUMMARY_CSV_COLUMNS, summary)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation of the defined (non-NaN) ``values``.

    Returns:
        ``(mean, std)``; ``std`` is NaN below two defined values, both are NaN without any.
    """
    defined = [float(v) for v in values if not math.isnan(float(v))]
    if not defined:
        return math.nan, math.nan
    mean = sum(defined) / len(defined)
    if len(defined) < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in defined) / (len(defined) - 1))


def gap_closed(distilled: float, alone: float, teacher: float) -> float:
    """``(distilled − alone) ÷ (teacher − alone)``: the share of the teacher–student gap a distilled student closes.

    Example: ``gap_closed(0.70, 0.60, 0.80) == 0.5``; below the student alone it is negative.

    Returns:
        the share; NaN when a value is undefined or the student alone is not below the teacher (no gap to close).
    """
    gap = teacher - alone
    if math.isnan(gap) or math.isnan(distilled) or gap <= 0:
        return math.nan
    return (distilled - alone) / gap


def format_mean_std(mean: float, std: float, scale: float = 1.0, digits: int = 1, missing: str = "–") -> str:
    """``mean ± std`` as text, both multiplied by ``scale`` and written with ``digits`` decimals.

    Args:
        mean: the mean; ``nan`` (no value) gives ``missing``.
        std: the standard deviation; ``nan`` (a single value) leaves out ``± std``.
        scale: factor for both (``100`` writes a Dice fraction in %).
        digits: decimals of both.
        missing: the text for a ``nan`` mean.

    Returns:
        the text, e.g. ``format_mean_std(0.6, 0.1414, scale=100) == "60.0 ± 14.1"``.
    """
    if math.isnan(mean):
        return missing
    text = f"{scale * mean:.{digits}f}"
    return text if math.isnan(std) else f"{text} ± {scale * std:.{digits}f}"


def format_columns(header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "") -> str:
    """A fixed-width text table: every column as wide as its widest cell, two spaces apart, no trailing spaces.

    Args:
        header: the column names.
        rows: the cells, one sequence per row, as many as ``header`` has names.
        indent: text in front of every line.

    Returns:
        the header line and one line per row, joined by newlines.
    """
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(header)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]]
    return "\n".join(indent + line for line in lines)


def format_summary(summary: Sequence[Mapping[str, object]]) -> str:
    """A fixed-width text table of :func:`summarise`'s rows for logs (Dice as fractions, HD95 in mm and voxels)."""

    def pm(row: Mapping[str, object], key: str, digits: int) -> str:
        mean, std = float(row[f"{key}_mean"]), float(row[f"{key}_std"])  # type: ignore[arg-type]
        return format_mean_std(mean, std, digits=digits, missing="nan")

    header = ("organ", "n", "missed", "spurious", "dice", "hd95 (mm)", "dice (TransUNet)", "hd95 (vox, TransUNet)")
    lines = [
        (
            str(r["organ"]),
            str(r["n"]),
            str(r["missed"]),
            str(r["spurious"]),
            pm(r, "dice", 4),
            pm(r, "hd95_mm", 2),
            pm(r, "dice_transunet", 4),
            pm(r, "hd95_transunet_vox", 2),
        )
        for r in summary
    ]
    return format_columns(header, lines)
