"""The curves behind the metrics (image ROC, pixel ROC, PRO up to the FPR limit), small enough for metrics.json.

Each curve is first traced exactly from the metric's state (every distinct score a threshold, ties merged: the
same polyline that the metric integrates), then downsampled to at most ``MAX_POINTS`` of its own vertices, chosen
so that the trapezoid area, the metric itself, is kept:

1. Pre-thinning: along a monotone curve from (0,0) the L1 arc length is x + y. Of the vertices in each arc-length
   bucket of width ``PRE_STEP`` only the first and the last are kept. What is dropped lies inside boxes of
   half-perimeter <= PRE_STEP, so the area moves by at most PRE_STEP / 4 in all, whatever the curve.
2. Greedy simplification (Visvalingam-Whyatt with signed areas): removing a vertex changes the trapezoid area by
   exactly the area of the triangle it makes with its neighbours; the vertex whose removal costs least goes first,
   until ``MAX_POINTS`` are left. Straight runs cost nothing, bends are kept; the end points are always kept.

PRO is simplified in the coordinates (FPR / fpr_limit, PRO), where the area is the normalised PRO, and the curve
ends at the exact point at the limit (PRO interpolated as the metric does), so ``pro_area`` needs no interpolation.
"""
from __future__ import annotations

import heapq
import logging
import math
from typing import Any, Callable

import numpy as np

from .reference import trapezoid

log = logging.getLogger(__name__)

MAX_POINTS = 200
PRE_STEP = 2e-4  # pre-thinning: <= 2 * (2 / PRE_STEP + 1) vertices, area error <= 5e-5


def roc_curve(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact tie-merged ROC polyline (FPR, TPR) of anomalous scores ``pos`` vs normal scores ``neg`` (both sorted
    in place, as ``auroc_exact`` does: no copy of the pixels).

    Between two consecutive distinct anomalous scores only the FPR moves, so two vertices per distinct anomalous
    score a trace the curve: (#neg > a, #pos > a) and (#neg >= a, #pos >= a). Its area is exactly the AUROC.
    """
    pos.sort()
    neg.sort()
    levels = np.unique(pos)[::-1]
    n_pos, n_neg = pos.size, neg.size
    fp_gt, fp_ge = (n_neg - np.searchsorted(neg, levels, side=side) for side in ("right", "left"))
    tp_gt, tp_ge = (n_pos - np.searchsorted(pos, levels, side=side) for side in ("right", "left"))
    fpr = np.concatenate([[0.0], np.column_stack([fp_gt, fp_ge]).ravel() / n_neg, [1.0]])
    tpr = np.concatenate([[0.0], np.column_stack([tp_gt, tp_ge]).ravel() / n_pos, [1.0]])
    return fpr, tpr


def cut_at(x: np.ndarray, y: np.ndarray, x_max: float) -> tuple[np.ndarray, np.ndarray]:
    """The polyline up to ``x_max``, ending at (x_max, y interpolated as ``trapezoid`` does)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = x <= x_max
    if x_max in x[keep]:
        return x[keep], y[keep]
    ins = int(np.count_nonzero(keep))  # first index beyond x_max (x is non-decreasing)
    y_end = y[ins - 1] + (y[ins] - y[ins - 1]) * (x_max - x[ins - 1]) / (x[ins] - x[ins - 1])
    return np.append(x[keep], x_max), np.append(y[keep], y_end)


def _without_redundant(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices left after dropping repeated vertices and inner vertices of horizontal/vertical runs."""
    idx = np.flatnonzero(np.append(True, (np.diff(x) != 0) | (np.diff(y) != 0)))
    if idx.size < 3:
        return idx
    xs, ys = x[idx], y[idx]
    inner = ((xs[1:-1] == xs[:-2]) & (xs[1:-1] == xs[2:])) | ((ys[1:-1] == ys[:-2]) & (ys[1:-1] == ys[2:]))
    return idx[np.concatenate([[True], ~inner, [True]])]


def _pre_thin(x: np.ndarray, y: np.ndarray, step: float) -> np.ndarray:
    """Indices of the first and last vertex of each L1 arc-length bucket (plus the ends)."""
    bucket = np.floor((x + y) / step)
    first = np.append(True, bucket[1:] != bucket[:-1])
    last = np.append(bucket[1:] != bucket[:-1], True)
    return np.flatnonzero(first | last)


def _removal_cost(x: np.ndarray, y: np.ndarray, p: int, i: int, n: int) -> float:
    """Change of the trapezoid area when vertex i is removed between p and n (the triangle's signed area)."""
    return 0.5 * ((x[i] - x[p]) * (y[n] - y[p]) - (x[n] - x[p]) * (y[i] - y[p]))


def simplify(x: np.ndarray, y: np.ndarray, max_points: int = MAX_POINTS) -> np.ndarray:
    """Indices of at most ``max_points`` vertices of the monotone polyline (x, y) that keep its area (see above)."""
    idx = _without_redundant(x, y)
    if idx.size > 8 * max_points:
        idx = idx[_pre_thin(x[idx], y[idx], PRE_STEP)]
    if idx.size <= max_points:
        return idx
    xs, ys = x[idx], y[idx]
    m = idx.size
    prev, nxt = np.arange(-1, m - 1), np.arange(1, m + 1)
    alive = np.ones(m, dtype=bool)
    heap = [(abs(_removal_cost(xs, ys, i - 1, i, i + 1)), i, i - 1, i + 1) for i in range(1, m - 1)]
    heapq.heapify(heap)
    left = m
    while left > max_points:
        _, i, p, n = heapq.heappop(heap)
        if not alive[i] or prev[i] != p or nxt[i] != n:
            continue  # stale entry: a neighbour was removed since
        alive[i] = False
        nxt[p], prev[n] = n, p
        left -= 1
        for j in (p, n):
            if 0 < j < m - 1:
                heapq.heappush(heap, (abs(_removal_cost(xs, ys, prev[j], j, nxt[j])), j, prev[j], nxt[j]))
    return idx[alive]


def _floats(values: np.ndarray) -> list[float]:
    return [float(v) for v in values]


def roc_record(pos: np.ndarray, neg: np.ndarray, threshold: float | None = None,
               max_points: int = MAX_POINTS) -> dict[str, Any]:
    """{"fpr", "tpr"} of the downsampled ROC; with ``threshold``, also the test FPR/TPR of score > threshold."""
    fpr, tpr = roc_curve(pos, neg)
    keep = simplify(fpr, tpr, max_points)
    record: dict[str, Any] = {"fpr": _floats(fpr[keep]), "tpr": _floats(tpr[keep])}
    if threshold is not None and math.isfinite(threshold):
        record["threshold"] = {"value": float(threshold), "fpr": float(np.mean(neg > threshold)),
                               "tpr": float(np.mean(pos > threshold))}
    return record


def pro_record(fpr: np.ndarray, pro: np.ndarray, fpr_limit: float, max_points: int = MAX_POINTS) -> dict[str, Any]:
    """{"fpr", "pro"} of the downsampled PRO curve up to ``fpr_limit`` (its last point is at the limit)."""
    fpr, pro = cut_at(fpr, pro, fpr_limit)
    keep = simplify(fpr / fpr_limit, pro, max_points)
    return {"fpr": _floats(fpr[keep]), "pro": _floats(pro[keep])}


def roc_area(curve: dict[str, Any]) -> float:
    """Trapezoid area under a stored ROC curve (the AUROC it was taken from, within 1e-3)."""
    return trapezoid(curve["fpr"], curve["tpr"])


def pro_area(curve: dict[str, Any]) -> float:
    """Trapezoid area under a stored PRO curve divided by its FPR limit (its last FPR): the normalised PRO."""
    return trapezoid(curve["fpr"], curve["pro"]) / curve["fpr"][-1]


def _defined(name: str, build: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
    try:
        return build()
    except ValueError as err:  # the metric is undefined for this test set: so is its curve
        log.info("%s curve is undefined for this test set: %s", name, err)
        return None


def metric_curves(image_auroc: Any, pixel_auroc: Any, pro: Any, image_threshold: float | None = None,
                  max_points: int = MAX_POINTS) -> dict[str, dict[str, Any] | None]:
    """metrics.json's ``curves`` from the three metric objects (call before they are reset); None = undefined.

    ``image_threshold`` (calibrated on normal validation images) adds its test FPR/TPR to ``image_roc``.
    """
    def image() -> dict[str, Any]:
        with image_auroc.sync_context():
            return roc_record(*image_auroc.pos_neg(), image_threshold, max_points)

    def pixel() -> dict[str, Any]:
        with pixel_auroc.sync_context():
            return roc_record(*pixel_auroc.pos_neg(), None, max_points)

    def pro_curve() -> dict[str, Any]:
        with pro.sync_context():
            return pro_record(*pro.curve(), pro.fpr_limit, max_points)

    return {"image_roc": _defined("image ROC", image), "pixel_roc": _defined("pixel ROC", pixel),
            "pro": _defined("PRO", pro_curve)}
