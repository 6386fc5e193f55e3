"""PRO (per-region overlap, "AU-PRO") exactly as MVTec AD's official evaluation code defines it, but fast.

Definition (see ``docs/metrics.md``): 8-connected regions labelled per image; FPR over all normal pixels of all
images; PRO = mean overlap over all regions (each region weighs the same); every distinct score is a threshold
(ties merged); trapezoid up to ``fpr_limit`` with linear interpolation at the limit, divided by the limit.

Why it is fast: only thresholds down to the first curve point beyond the limit matter. With ``n_ok`` normal
pixels, that point is at ``t*``, the (c+1)-th largest normal score, where c is the largest false-positive
count with c / n_ok <= limit. ``np.partition`` finds ``t*`` in linear time. The curve only rises at anomalous
scores, so it is traced exactly by two points per distinct anomalous score >= t*; the normal pixels enter only
through counts, read off their sorted scores >= t* (about ``fpr_limit`` of them). The anomalous pixels are
sorted as ``uint64`` keys (order-preserving score bits << 32 | global region id): a plain sort, no argsort.
The polyline is the official one, so the integral is the official one (oracle: within 1.3e-8).

Memory: the metric keeps 5 bytes/pixel of state (float32 map + uint8 mask, flattened). ``compute()`` adds a
float32 copy of the normal scores (4 bytes/normal pixel) and ~100 bytes per anomalous pixel. Measured with
``experiments/bench_metrics.py --scale`` on 160 maps of 1024x1024 (168 M pixels): see docs/metrics.md.

``num_thresholds=K`` switches to a binned approximation whose state is O(K) (histograms of false positives and
of region-overlap weight per threshold bin), for evaluation that does not fit in memory.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._base import ListStateMetric
from ._binned import (
    binned_counts, binned_curve, binned_pro, check_counts, label_regions, make_thresholds)
from ._validate import check_batch, check_fpr_limit
from .reference import trapezoid

_LOW32 = np.uint64(0xFFFFFFFF)
_BLOCK = 1 << 24


def _images(map_chunks: Sequence[np.ndarray], mask_chunks: Sequence[np.ndarray],
            shapes: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (scores (H,W) float32, mask (H,W) bool) per image from flat chunks that each hold whole images."""
    chunks = iter(zip(map_chunks, mask_chunks))
    cur_map = cur_mask = None
    pos = 0
    for h, w in shapes:
        n = int(h) * int(w)
        while cur_map is None or pos >= cur_map.size:
            cur_map, cur_mask = next(chunks)
            pos = 0
        if pos + n > cur_map.size:
            raise RuntimeError("internal error: stored image shapes do not match the stored pixels")
        yield cur_map[pos:pos + n].reshape(h, w), cur_mask[pos:pos + n].reshape(h, w) > 0
        pos += n


def _ordered_bits(scores: np.ndarray) -> np.ndarray:
    """uint32 whose unsigned order equals the float order of finite float32 scores (-0.0 merged with 0.0)."""
    bits = (scores + np.float32(0.0)).view(np.uint32)  # x + 0.0 turns -0.0 into +0.0
    return np.where(bits >> 31, ~bits, bits | np.uint32(0x80000000))


def _from_ordered_bits(bits: np.ndarray) -> np.ndarray:
    """Inverse of ``_ordered_bits``."""
    bits = bits.astype(np.uint32)
    return np.where(bits >> 31, bits & np.uint32(0x7FFFFFFF), ~bits).view(np.float32)


def _max_false_positives(n_ok: int, fpr_limit: float) -> int:
    """Largest count c in [0, n_ok] with c / n_ok <= fpr_limit, with the same float64 division as the curve."""
    c = min(int(np.floor(fpr_limit * n_ok)), n_ok)
    while c < n_ok and (c + 1) / n_ok <= fpr_limit:
        c += 1
    while c > 0 and c / n_ok > fpr_limit:
        c -= 1
    return c


def exact_pro(map_chunks: Sequence[np.ndarray], mask_chunks: Sequence[np.ndarray], shapes: np.ndarray,
              fpr_limit: float) -> float:
    """Official PRO of the images stored as flat float32 map chunks, 0/1 mask chunks and (N,2) shapes."""
    fpr_limit = check_fpr_limit(fpr_limit)
    return trapezoid(*exact_pro_curve(map_chunks, mask_chunks, shapes, fpr_limit), x_max=fpr_limit) / fpr_limit


def exact_pro_curve(map_chunks: Sequence[np.ndarray], mask_chunks: Sequence[np.ndarray], shapes: np.ndarray,
                    fpr_limit: float) -> tuple[np.ndarray, np.ndarray]:
    """The official PRO polyline (FPR, PRO) up to the first point beyond ``fpr_limit``, then (1,1).

    The official curve has one point per distinct score t: (#normal >= t, PRO(t)). PRO(t) only changes at
    anomalous scores, so between two consecutive distinct anomalous scores a_(j-1) > a_j the curve is flat,
    and the exact polyline is traced by two points per a_j: (#normal > a_j, P_(j-1)) and (#normal >= a_j, P_j).
    Normal pixels therefore enter only through counts, taken from their sorted scores >= t*.
    """
    fpr_limit = check_fpr_limit(fpr_limit)
    n_total = sum(m.size for m in map_chunks)
    n_anomalous = sum(int(np.count_nonzero(m)) for m in mask_chunks)
    n_ok = n_total - n_anomalous
    check_counts(n_ok, n_anomalous)

    # 1) t* = score of the first curve point beyond the limit (a normal pixel's score), in linear time; the
    #    normal scores >= t* end up in normals[kth:] (ties with t* may also sit below kth), then get sorted.
    normals = np.empty(n_ok, dtype=np.float32)
    pos = 0
    for scores, mask in _images(map_chunks, mask_chunks, shapes):
        vals = scores[~mask]
        normals[pos:pos + vals.size] = vals
        pos += vals.size
    rank = min(_max_false_positives(n_ok, fpr_limit) + 1, n_ok)  # 1-based, descending
    kth = n_ok - rank
    normals.partition(kth)
    t_star = normals[kth]
    n_ge_t_star = rank + sum(int(np.count_nonzero(normals[i:min(i + _BLOCK, kth)] == t_star))
                             for i in range(0, kth, _BLOCK))  # blocks: no n_ok-sized temporary
    upper = normals[kth:]  # every normal score > t*, and some == t*
    upper.sort()

    # 2) Anomalous pixels with score >= t*: one sortable key each, score bits << 32 | global region id.
    keys, region_weights, n_regions = [], [np.zeros(1)], 0
    for scores, mask in _images(map_chunks, mask_chunks, shapes):
        if not mask.any():
            continue
        labeled, n, weights = label_regions(mask)
        vals, lab = scores[mask], labeled[mask]
        sel = vals >= t_star
        region_id = lab[sel].astype(np.uint64) + np.uint64(n_regions)
        keys.append((_ordered_bits(vals[sel]).astype(np.uint64) << np.uint64(32)) | region_id)
        region_weights.append(weights[1:])
        n_regions += n
    keys = np.concatenate(keys)
    weight_of = np.concatenate(region_weights)

    # 3) Distinct anomalous scores a_1 > a_2 > ... >= t* and the cumulative region overlap P_j at each.
    keys.sort()
    keys = keys[::-1]
    score_bits = keys >> np.uint64(32)
    last = np.empty(keys.size, dtype=bool)
    np.not_equal(score_bits[1:], score_bits[:-1], out=last[:-1])
    last[-1:] = True
    thresholds = _from_ordered_bits(score_bits[last])
    pro = np.cumsum(weight_of[(keys & _LOW32).astype(np.intp)])[last] / n_regions
    fp_ge = upper.size - np.searchsorted(upper, thresholds, side="left")
    fp_ge[thresholds == t_star] = n_ge_t_star
    fp_gt = upper.size - np.searchsorted(upper, thresholds, side="right")

    # 4) Polyline: (0,0), per a_j the two points above, the first point beyond the limit (at t*), (1,1).
    pro_from = np.concatenate([[0.0], pro])  # P_0 = 0, P_1, ..., P_m
    fprs = np.concatenate([[0.0], np.column_stack([fp_gt, fp_ge]).ravel() / n_ok, [n_ge_t_star / n_ok, 1.0]])
    pros = np.concatenate([[0.0], np.column_stack([pro_from[:-1], pro]).ravel(), pro_from[-1:], [1.0]])
    np.clip(fprs, None, 1.0, out=fprs)
    np.clip(pros, None, 1.0, out=pros)
    # Interior points of vertical runs (equal FPR) add no area and are never the ends of the interpolation
    # at the limit: drop them, so the polyline and trapezoid()'s temporaries stay small.
    inner = np.zeros(fprs.size, dtype=bool)
    inner[1:-1] = (fprs[1:-1] == fprs[:-2]) & (fprs[1:-1] == fprs[2:])
    return fprs[~inner], pros[~inner]


def pro_score(anomaly_maps: Any, masks: Any, fpr_limit: float = 0.3, num_thresholds: int | None = None,
              min_score: float | None = None, max_score: float | None = None) -> float:
    """Official MVTec AU-PRO up to ``fpr_limit`` divided by ``fpr_limit``, of (N,H,W) numpy arrays or tensors.

    With ``num_thresholds=K``: binned approximation with K thresholds evenly spaced over
    [min_score, max_score] (default: the min and max of ``anomaly_maps``).
    """
    fpr_limit = check_fpr_limit(fpr_limit)
    maps_t, masks_t = check_batch(anomaly_maps, masks)
    maps, gts = maps_t.cpu().numpy(), masks_t.cpu().numpy()
    if num_thresholds is None:
        shapes = np.array([maps.shape[1:]] * maps.shape[0], dtype=np.int64).reshape(-1, 2)
        return exact_pro([maps.reshape(-1)], [gts.reshape(-1)], shapes, fpr_limit)
    lo = float(maps.min()) if min_score is None and maps.size else min_score
    hi = float(maps.max()) if max_score is None and maps.size else max_score
    if lo is not None and hi is not None and lo == hi:
        hi = lo + 1.0  # constant maps: any range containing the single score is exact
    thresholds = make_thresholds(num_thresholds, lo, hi)
    return binned_pro(*binned_counts(maps, gts, thresholds), fpr_limit)


class PRO(ListStateMetric):
    """Official MVTec AU-PRO as a torchmetrics ``Metric`` (exact by default; binned with ``num_thresholds``).

    Exact mode keeps every map (float32, flattened) and mask (uint8) plus each image's (H,W), as "cat" list
    states; regions are labelled per image in ``compute()``, so images from different ranks or ``update()``
    calls never share a region and region ids are assigned only after gathering. Binned mode needs a score
    range known in advance (``min_score``, ``max_score``) so that every rank uses the same thresholds; its
    states are summed histograms of size K+1.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    _list_dtypes = {"maps": torch.float32, "masks": torch.uint8, "shapes": torch.int64}

    def __init__(self, fpr_limit: float = 0.3, num_thresholds: int | None = None,
                 min_score: float | None = None, max_score: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fpr_limit = check_fpr_limit(fpr_limit)
        self.num_thresholds = num_thresholds
        if num_thresholds is None:
            self.add_state("maps", default=[], dist_reduce_fx="cat")
            self.add_state("masks", default=[], dist_reduce_fx="cat")
            self.add_state("shapes", default=[], dist_reduce_fx="cat")  # flat [h0, w0, h1, w1, ...]
        else:
            if min_score is None or max_score is None:
                raise ValueError("binned PRO (num_thresholds=K) needs min_score and max_score: the thresholds "
                                 "must be fixed before any data is seen so that all ranks agree")
            self._thresholds = make_thresholds(num_thresholds, min_score, max_score)
            k1 = int(num_thresholds) + 1
            self.add_state("fp_hist", default=torch.zeros(k1, dtype=torch.int64), dist_reduce_fx="sum")
            self.add_state("pro_hist", default=torch.zeros(k1, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state("num_ok", default=torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
            self.add_state("num_regions", default=torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, anomaly_maps: Tensor, masks: Tensor) -> None:
        maps, gts = check_batch(anomaly_maps, masks)
        if maps.shape[0] == 0:
            return
        if self.num_thresholds is None:
            self.maps.append(maps.reshape(-1).clone())  # own copy: never a view of the caller's buffer
            self.masks.append(gts.reshape(-1))
            hw = torch.tensor(maps.shape[1:], dtype=torch.int64, device=maps.device)
            self.shapes.append(hw.repeat(maps.shape[0]))
            return
        fp, pro, n_ok, n_reg = binned_counts(maps.cpu().numpy(), gts.cpu().numpy(), self._thresholds)
        self.fp_hist += torch.from_numpy(fp).to(self.fp_hist.device)
        self.pro_hist += torch.from_numpy(pro).to(self.pro_hist.device)
        self.num_ok += n_ok
        self.num_regions += n_reg

    def compute(self) -> Tensor:
        return torch.tensor(trapezoid(*self.curve(), x_max=self.fpr_limit) / self.fpr_limit, dtype=torch.float64)

    def curve(self) -> tuple[np.ndarray, np.ndarray]:
        """The polyline (FPR, PRO) that ``compute()`` integrates: exact up to the first point beyond the limit."""
        if self.num_thresholds is not None:
            return binned_curve(self.fp_hist.cpu().numpy(), self.pro_hist.cpu().numpy(),
                                int(self.num_ok), int(self.num_regions))
        maps, masks, shapes = (_chunks(s) for s in (self.maps, self.masks, self.shapes))
        if not maps:
            raise ValueError("PRO has no data: call update() before compute()")
        shapes_np = np.concatenate(shapes).astype(np.int64).reshape(-1, 2)
        masks = [m if m.dtype == np.uint8 else (m > 0).astype(np.uint8) for m in masks]
        maps = [m.astype(np.float32, copy=False) for m in maps]
        return exact_pro_curve(maps, masks, shapes_np, self.fpr_limit)

def _chunks(state: Tensor | list[Tensor]) -> list[np.ndarray]:
    """A list state (or the single tensor torchmetrics leaves after a distributed sync) as numpy chunks."""
    tensors = [state] if isinstance(state, Tensor) else state
    return [t.detach().cpu().reshape(-1).numpy() for t in tensors if t.numel() > 0]
