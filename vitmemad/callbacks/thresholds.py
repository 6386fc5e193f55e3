"""Decision thresholds for predict: high quantiles of the scores of normal validation images.

Every run that writes a checkpoint must carry this callback (``vitmemad.train`` refuses a callbacks config without
it): predict labels images with the thresholds it saves in the module's buffers ``image_threshold`` (image score
= map maximum) and ``pixel_threshold`` (for the binary mask output).
"""
from __future__ import annotations

from typing import Any

import lightning as L
import torch

from vitmemad.errors import ConfigError

MAX_PIXELS_PER_BATCH = 200_000  # keeps torch.quantile's input small (its limit is 16 M elements)


def subsample(values: torch.Tensor, limit: int) -> torch.Tensor:
    """A deterministic, evenly strided subsample: quantiles stay accurate, memory stays bounded."""
    if values.numel() <= limit:
        return values
    step = -(-values.numel() // limit)
    return values[::step]


class ThresholdCalibration(L.Callback):
    def __init__(self, image_quantile: float = 0.99, pixel_quantile: float = 0.999) -> None:
        for key, q in (("image_quantile", image_quantile), ("pixel_quantile", pixel_quantile)):
            if not 0.0 <= float(q) <= 1.0:
                raise ConfigError(f"threshold.{key} must be in [0, 1], got {q!r}")
        self.image_quantile = float(image_quantile)
        self.pixel_quantile = float(pixel_quantile)
        self._image: list[torch.Tensor] = []
        self._pixel: list[torch.Tensor] = []

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        maps = outputs["maps"]
        self._image.append(maps.flatten(1).amax(1))
        self._pixel.append(subsample(maps.flatten(), MAX_PIXELS_PER_BATCH))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._image:
            return
        image_scores = pl_module.all_gather(torch.cat(self._image)).flatten().float()
        pixel_scores = pl_module.all_gather(torch.cat(self._pixel)).flatten().float()
        pl_module.image_threshold.fill_(torch.quantile(image_scores, self.image_quantile).item())
        pl_module.pixel_threshold.fill_(torch.quantile(pixel_scores, self.pixel_quantile).item())
        self._image.clear()
        self._pixel.clear()
