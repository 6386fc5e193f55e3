"""Binned PRO (O(K) state) and the per-image region labelling it shares with the exact PRO in ``pro.py``."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from ._validate import check_fpr_limit
from .reference import EIGHT_CONNECTED, trapezoid


def label_regions(mask: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
    """8-connected labels of one image, the region count and each region's weight 1/size (index 0: 0)."""
    labeled, n = ndimage.label(mask, structure=EIGHT_CONNECTED)
    sizes = np.bincount(labeled.ravel(), minlength=n + 1)
    weights = np.zeros(n + 1)
    weights[1:] = 1.0 / sizes[1:]
    return labeled, n, weights


def check_counts(n_ok: int, n_anomalous: int) -> None:
    if n_anomalous == 0:
        raise ValueError("PRO is undefined: no anomalous pixel in the masks")
    if n_ok == 0:
        raise ValueError("PRO is undefined: no normal pixel in the masks (the FPR has no denominator)")


def binned_counts(maps: np.ndarray, masks: np.ndarray, thresholds: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Histograms over threshold bins for one batch: normal-pixel counts and region-overlap weights.

    Bin b(s) = number of thresholds <= s, in 0..K; a pixel counts as positive at threshold k iff b(s) > k.
    """
    k1 = len(thresholds) + 1
    fp_hist = np.zeros(k1, dtype=np.int64)
    pro_hist = np.zeros(k1, dtype=np.float64)
    n_ok = n_regions = 0
    for scores, mask in zip(maps, masks > 0):
        labeled, n, weights = label_regions(mask)
        bins = np.searchsorted(thresholds, scores.astype(np.float64), side="right")
        fp_hist += np.bincount(bins[~mask], minlength=k1)
        pro_hist += np.bincount(bins[mask], weights=weights[labeled[mask]], minlength=k1)
        n_ok += int(mask.size - np.count_nonzero(mask))
        n_regions += n
    return fp_hist, pro_hist, n_ok, n_regions


def binned_curve(fp_hist: np.ndarray, pro_hist: np.ndarray, n_ok: int, n_regions: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The binned PRO curve (FPR, PRO): one point per threshold (in decreasing order), (0,0) and (1,1)."""
    check_counts(n_ok, n_regions)
    k = len(fp_hist) - 1
    fprs = np.concatenate([[0.0], np.cumsum(fp_hist[::-1])[:k] / n_ok, [1.0]])
    pros = np.concatenate([[0.0], np.cumsum(pro_hist[::-1])[:k] / n_regions, [1.0]])
    np.clip(fprs, None, 1.0, out=fprs)
    np.clip(pros, None, 1.0, out=pros)
    return fprs, pros


def binned_pro(fp_hist: np.ndarray, pro_hist: np.ndarray, n_ok: int, n_regions: int, fpr_limit: float) -> float:
    """PRO from threshold-bin histograms."""
    fpr_limit = check_fpr_limit(fpr_limit)
    return trapezoid(*binned_curve(fp_hist, pro_hist, n_ok, n_regions), x_max=fpr_limit) / fpr_limit


def make_thresholds(num_thresholds: int, min_score: float, max_score: float) -> np.ndarray:
    if int(num_thresholds) < 2:
        raise ValueError(f"num_thresholds must be >= 2, got {num_thresholds}")
    if not (np.isfinite(min_score) and np.isfinite(max_score) and min_score < max_score):
        raise ValueError(f"need finite min_score < max_score, got {min_score}, {max_score}")
    return np.linspace(float(min_score), float(max_score), int(num_thresholds))
