"""What testing computes from anomaly maps: the exact metrics, the image scores and the per-defect AUROC.

Shared by every LightningModule (``vitmemad.models.module.AnomalyModule``); an ``nn.Module`` so that its
torchmetrics states move with the model and sync across DDP ranks.
"""
from __future__ import annotations

import logging
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn

from vitmemad.metrics import PRO, ImageAUROC, PixelAUROC
from vitmemad.metrics.curves import metric_curves
from vitmemad.models.anomaly_map import resize_maps

log = logging.getLogger(__name__)

Record = tuple[float, int, str]  # (image score, label, defect)


class TestEvaluator(nn.Module):
    def __init__(self, pro_fpr_limit: float = 0.3) -> None:
        super().__init__()
        self.image_auroc = ImageAUROC()
        self.pixel_auroc = PixelAUROC()
        self.pro = PRO(fpr_limit=float(pro_fpr_limit))
        self.has_masks = True
        self.records: list[Record] = []

    def reset(self, has_masks: bool = True) -> None:
        for metric in (self.image_auroc, self.pixel_auroc, self.pro):
            metric.reset()
        self.has_masks = bool(has_masks)
        self.records = []

    def update(self, maps: torch.Tensor, batch: dict[str, Any], scores: torch.Tensor | None = None) -> torch.Tensor:
        """Maps (B, S, S) at the model's size; the batch's masks at native size. Returns the image scores (B,):
        ``scores`` when given (``AnomalyMapGenerator.image_scores``), else the maps' maxima at native size."""
        native_scores = []
        for full, mask in native_maps(maps, batch["mask"]):
            if self.has_masks:
                self.pixel_auroc.update(full, mask[None])
                self.pro.update(full, mask[None])
            native_scores.append(full.amax())
        scores_t = (torch.stack(native_scores) if scores is None else scores).float()
        labels = torch.as_tensor(batch["label"], device=scores_t.device).long()
        self.image_auroc.update_scores(scores_t, labels)
        self.records += [(float(s), int(l), str(d)) for s, l, d in zip(scores_t.cpu(), labels.cpu(), batch["defect"])]
        return scores_t

    def compute(self, image_threshold: float | None = None) -> dict[str, Any]:
        """The metrics, the per-defect AUROC and the curves (``image_threshold`` is marked on the image ROC)."""
        records = gather_records(self.records)
        return {
            "image_AUROC": safe_compute(self.image_auroc, "image_AUROC"),
            "pixel_AUROC": safe_compute(self.pixel_auroc, "pixel_AUROC") if self.has_masks else None,
            "PRO": safe_compute(self.pro, "PRO") if self.has_masks else None,
            "per_defect": per_defect_auroc(records),
            "num_test_images": len(records),
            "curves": metric_curves(self.image_auroc, self.pixel_auroc, self.pro, image_threshold),
        }


def mask_sizes(masks: Any) -> list[tuple[int, int]]:
    """Each image's native (H0, W0), from its mask: where image scores are taken."""
    return [tuple(mask.shape[-2:]) for mask in masks]


def native_maps(maps: torch.Tensor, masks: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Each map (1, H0, W0) at its mask's native resolution, with the mask: where image scores are taken."""
    for i, mask in enumerate(masks):
        yield resize_maps(maps[i : i + 1], tuple(mask.shape[-2:])), mask


def gather_records(records: list[Record]) -> list[Record]:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return records
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, records)
    return [r for part in gathered for r in part]


def safe_compute(metric: Any, name: str) -> float | None:
    """A metric that is undefined for this test set (e.g. one class only) is recorded as null."""
    try:
        return float(metric.compute())
    except ValueError as err:
        log.warning("%s is undefined for this test set: %s", name, err)
        return None


def per_defect_auroc(records: list[Record]) -> dict[str, float]:
    """Image AUROC of each defect type against all normal test images."""
    normal = [s for s, label, _ in records if label == 0]
    defects = sorted({d for _, label, d in records if label == 1})
    result = {}
    for defect in defects:
        anomalous = [s for s, label, d in records if label == 1 and d == defect]
        if not normal or not anomalous:
            continue
        metric = ImageAUROC()
        metric.update_scores(torch.tensor(normal + anomalous, dtype=torch.float32),
                             torch.tensor([0] * len(normal) + [1] * len(anomalous)))
        result[defect] = float(metric.compute())
    return result
