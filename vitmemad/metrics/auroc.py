"""Exact, tie-aware image and pixel AUROC as torchmetrics ``Metric`` classes.

AUROC = P(score of an anomalous sample > score of a normal one) + 1/2 P(equal) (Mann-Whitney U), which is
the area under the ROC curve with tied scores merged, i.e. sklearn's ``roc_auc_score``. It is computed by
sorting the normal scores and binary-searching every anomalous score, with integer counts, so the result is
exact up to one final division (no float32 accumulation, no binning).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ._base import ListStateMetric
from ._validate import check_batch

_BLOCK = 1 << 22  # anomalous scores searched per step, to bound the temporaries


def auroc_exact(pos: np.ndarray, neg: np.ndarray) -> float:
    """Tie-aware AUROC of anomalous scores ``pos`` vs normal scores ``neg`` (both sorted in place)."""
    neg.sort()
    pos.sort()  # sorted queries make the binary searches cache-friendly
    below = ties = 0
    for start in range(0, pos.size, _BLOCK):
        block = pos[start:start + _BLOCK]
        left = np.searchsorted(neg, block, side="left")
        right = np.searchsorted(neg, block, side="right")
        below += int(left.sum(dtype=np.int64))
        ties += int((right - left).sum(dtype=np.int64))
    return (2 * below + ties) / (2 * pos.size * neg.size)  # python ints: exact, one rounding


def _concat(state: Tensor | list[Tensor], dtype: np.dtype) -> np.ndarray:
    """A list state (or the single tensor left after a distributed sync) as one new numpy array."""
    tensors = [state] if isinstance(state, Tensor) else state
    parts = [t.detach().cpu().reshape(-1).numpy() for t in tensors]
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.empty(0, dtype=dtype)


class ImageAUROC(ListStateMetric):
    """Image-level AUROC: score = max of the map, label = the mask has any positive pixel."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    _list_dtypes = {"scores": torch.float32, "labels": torch.uint8}

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")

    def update(self, anomaly_maps: Tensor, masks: Tensor) -> None:
        maps, gts = check_batch(anomaly_maps, masks)
        if maps.shape[0] == 0:
            return
        self.scores.append(maps.flatten(1).amax(dim=1))
        self.labels.append(gts.flatten(1).amax(dim=1))

    def update_scores(self, scores: Tensor, labels: Tensor) -> None:
        """Image scores (B,) and labels (B,) directly: each is a 1x1 "map" and "mask"."""
        self.update(scores.reshape(-1, 1, 1), labels.reshape(-1, 1, 1))

    def compute(self) -> Tensor:
        return torch.tensor(auroc_exact(*self.pos_neg()), dtype=torch.float64)

    def pos_neg(self) -> tuple[np.ndarray, np.ndarray]:
        """The anomalous and the normal images' scores (new arrays); ValueError where AUROC is undefined."""
        scores = _concat(self.scores, np.float32)
        labels = _concat(self.labels, np.float32) > 0
        n, n_pos = labels.size, int(labels.sum())
        if n == 0:
            raise ValueError("image AUROC has no data: call update() before compute()")
        if n_pos == 0:
            raise ValueError(f"image AUROC is undefined: all {n} images are normal")
        if n_pos == n:
            raise ValueError(f"image AUROC is undefined: all {n} images are anomalous")
        return scores[labels], scores[~labels]


class PixelAUROC(ListStateMetric):
    """Pixel-level AUROC over all pixels of all images pooled (any mask value > 0 is anomalous).

    Stores the anomalous and the normal scores as two float32 lists (4 bytes per pixel, no mask needed).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    _list_dtypes = {"pos": torch.float32, "neg": torch.float32}

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("pos", default=[], dist_reduce_fx="cat")
        self.add_state("neg", default=[], dist_reduce_fx="cat")

    def update(self, anomaly_maps: Tensor, masks: Tensor) -> None:
        maps, gts = check_batch(anomaly_maps, masks)
        if maps.shape[0] == 0:
            return
        anomalous = gts.bool()
        self.pos.append(maps[anomalous])
        self.neg.append(maps[~anomalous])

    def compute(self) -> Tensor:
        return torch.tensor(auroc_exact(*self.pos_neg()), dtype=torch.float64)

    def pos_neg(self) -> tuple[np.ndarray, np.ndarray]:
        """The anomalous and the normal pixels' scores (new arrays); ValueError where AUROC is undefined."""
        pos, neg = _concat(self.pos, np.float32), _concat(self.neg, np.float32)
        if pos.size + neg.size == 0:
            raise ValueError("pixel AUROC has no data: call update() before compute()")
        if pos.size == 0:
            raise ValueError("pixel AUROC is undefined: no anomalous pixel in the masks")
        if neg.size == 0:
            raise ValueError("pixel AUROC is undefined: every pixel is anomalous (no normal pixel)")
        return pos, neg
