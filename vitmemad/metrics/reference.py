"""Direct numpy transcription of MVTec AD's official PRO (AU-PRO) computation.

Written from the description in ``shared/oracle/README.md`` (``compute_pro`` + ``trapezoid`` of the official
``mvtec_ad_evaluation`` scripts). It sorts *every* pixel, so it is slow and memory hungry; it exists as the
baseline that tests and ``experiments/bench_metrics.py`` compare the fast implementation in ``pro.py`` against.
"""
from __future__ import annotations

from bisect import bisect

import numpy as np
from scipy import ndimage

EIGHT_CONNECTED = np.ones((3, 3), dtype=int)


def trapezoid(x: np.ndarray, y: np.ndarray, x_max: float | None = None) -> float:
    """Area under the polyline (x, y) up to ``x_max``, as MVTec's ``generic_util.trapezoid``.

    ``x`` must be non-decreasing. If ``x_max`` is not one of the x values, a last partial trapezoid runs to
    ``x_max``, with y linearly interpolated between the last point <= x_max and the first point beyond it.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    finite = np.isfinite(x) & np.isfinite(y)
    x, y = x[finite], y[finite]
    correction = 0.0
    if x_max is not None:
        if x_max not in x:
            ins = bisect(x, x_max)  # first index with x > x_max
            if not 0 < ins < len(x):
                raise ValueError(f"x_max={x_max} lies outside the curve's x range [{x[0]}, {x[-1]}]")
            y_interp = y[ins - 1] + (y[ins] - y[ins - 1]) * (x_max - x[ins - 1]) / (x[ins] - x[ins - 1])
            correction = 0.5 * (y_interp + y[ins - 1]) * (x_max - x[ins - 1])
        keep = x <= x_max
        x, y = x[keep], y[keep]
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])) + correction)


def pro_curve_reference(maps, masks) -> tuple[np.ndarray, np.ndarray]:
    """Full exact PRO curve (FPR, PRO), one point per distinct score, with (0,0) and (1,1) added.

    ``maps``/``masks``: (N,H,W) arrays, or sequences of (H,W) arrays whose sizes may differ.
    """
    fp_changes, pro_changes = [], []
    num_ok = 0
    num_regions = 0
    for gt in masks:
        labeled, n = ndimage.label(np.asarray(gt) > 0, structure=EIGHT_CONNECTED)
        num_regions += n
        ok = labeled == 0
        num_ok += int(ok.sum())
        fp_changes.append(ok.ravel().astype(np.uint32))
        sizes = np.bincount(labeled.ravel())
        weights = np.zeros(n + 1)
        weights[1:] = 1.0 / sizes[1:]
        pro_changes.append(weights[labeled].ravel())
    fp_changes, pro_changes = np.concatenate(fp_changes), np.concatenate(pro_changes)
    scores = np.concatenate([np.asarray(m).ravel() for m in maps])
    order = np.argsort(scores)[::-1]
    scores = scores[order]
    fprs = np.cumsum(fp_changes[order])
    pros = np.cumsum(pro_changes[order])
    del order
    # The official code divides a float32 copy of the false-positive count (float32 FPR).
    fprs = (fprs.astype(np.float32).astype(np.float64) / num_ok).astype(np.float32)
    pros /= num_regions
    # Ties: keep the last point of each run of equal scores.
    keep = np.append(np.diff(scores) != 0, True)
    fprs = np.concatenate([[0.0], fprs[keep], [1.0]])
    pros = np.concatenate([[0.0], pros[keep], [1.0]])
    np.clip(fprs, None, 1.0, out=fprs)
    np.clip(pros, None, 1.0, out=pros)
    return fprs, pros


def pro_reference(maps, masks, fpr_limit: float = 0.3) -> float:
    """Official AU-PRO up to ``fpr_limit``, divided by ``fpr_limit`` (0.3 gives the standard MVTec number)."""
    fprs, pros = pro_curve_reference(maps, masks)
    return trapezoid(fprs, pros, x_max=fpr_limit) / fpr_limit
