"""``examples.png``: a grid of test examples (input | reconstruction | anomaly map | ground truth), each row with
its ground truth, its image score against the image threshold, and one colour bar for the maps' shared scale."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from vitmemad.utils.visualize import save_examples

KEYS = ("image", "reconstruction", "map", "mask", "label", "defect", "score")


class ExampleGrid(L.Callback):
    """Keeps up to ``num_examples`` test images, anomalous ones first but a couple of normal ones for contrast,
    and writes the grid into the trainer's ``default_root_dir`` (the run folder) at the end of testing."""

    def __init__(self, num_examples: int = 8, num_normal: int = 2, filename: str = "examples.png") -> None:
        self.num_examples, self.num_normal, self.filename = int(num_examples), int(num_normal), filename
        self.examples: dict[str, list[Any]] = {}

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.examples = {key: [] for key in KEYS}

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        images, recon, maps = batch["image"], outputs["reconstruction"], outputs["maps"]
        scores = outputs.get("scores")
        for i in range(images.shape[0]):
            if len(self.examples["image"]) >= self.num_examples:
                return
            n_normal = sum(1 for label in self.examples["label"] if label == 0)
            if int(batch["label"][i]) == 0 and n_normal >= self.num_normal:
                continue
            mask = F.interpolate(batch["mask"][i][None, None].float(), size=tuple(images.shape[-2:]), mode="nearest")
            self.examples["image"].append(images[i].detach().float().cpu())
            self.examples["reconstruction"].append(recon[i].detach().float().cpu() if recon is not None else None)
            self.examples["map"].append(maps[i].detach().float().cpu())
            self.examples["mask"].append(mask[0, 0].cpu())
            self.examples["label"].append(int(batch["label"][i]))
            self.examples["defect"].append(batch["defect"][i] if "defect" in batch else None)
            self.examples["score"].append(float(scores[i]) if scores is not None else float(maps[i].max()))

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and self.examples.get("image"):
            threshold, scale = (as_float(getattr(pl_module, name, None)) for name in ("image_threshold",
                                                                                      "pixel_threshold"))
            if getattr(getattr(pl_module, "anomaly_map", None), "score_is_map_maximum", True):
                scale = None  # the image score is the map's maximum: its threshold is on the maps' scale
            save_examples(self.examples, Path(trainer.default_root_dir) / self.filename, threshold, scale)


def as_float(value: Any) -> Any:
    return float(value) if isinstance(value, torch.Tensor) else value
