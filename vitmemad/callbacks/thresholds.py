"""Decision thresholds for predict: high quantiles of the scores of normal validation images.

Every run that writes a checkpoint must carry this callback (``vitmemad.train`` refuses a callbacks config without
it): predict labels images with the thresholds it saves in the module's buffers ``image_threshold`` (on the image
score, ``anomaly_map.image_score``) and ``pixel_threshold`` (for the binary mask output).

With ``anomaly_map.reference=normal_mean`` or a standardised image score (``normal_z``, ``max_and_z``) it first
sets the map generator's statistics of the same validation images (the per-pixel mean of their raw maps and std of
the maps the image score reads; with ``max_and_z`` also the mean and std of each part's image score; over all DDP
ranks) and takes the thresholds on the maps and image scores as they will be scored.
"""
from __future__ import annotations

from typing import Any, Callable

import lightning as L
import torch

from vitmemad.errors import ConfigError
from vitmemad.models.anomaly_map import AnomalyMapGenerator

MAX_PIXELS_PER_BATCH = 200_000  # keeps torch.quantile's input small (its limit is 16 M elements)


def subsample(values: torch.Tensor, limit: int) -> torch.Tensor:
    """A deterministic, evenly strided subsample: quantiles stay accurate, memory stays bounded."""
    if values.numel() <= limit:
        return values
    step = -(-values.numel() // limit)
    return values[::step]


Gather = Callable[[torch.Tensor], torch.Tensor]  # LightningModule.all_gather, or the identity in one process


def normal_statistics(gather: Gather, batches: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel mean and std (S, S) of raw maps (batches of (B, S, S)) over every DDP rank, in float64 sums."""
    sums = torch.stack([torch.stack([b.double().sum(0), b.double().pow(2).sum(0)]) for b in batches]).sum(0)
    total = gather(sums).reshape(-1, *sums.shape).sum(0)
    count = gather(sums.new_tensor(float(sum(len(b) for b in batches)))).sum()
    mean = total[0] / count
    var = (total[1] - count * mean.pow(2)).clamp_min(0) / (count - 1).clamp_min(1)  # unbiased, as torch.std
    return mean.float(), var.sqrt().float()


def part_maxima(generator: AnomalyMapGenerator, gather: Gather, batches: list[torch.Tensor]) -> torch.Tensor:
    """(P, N) maxima of each of the generator's score parts over the normal maps of every DDP rank."""
    local = torch.cat([torch.stack([p.flatten(1).amax(1) for p in generator.score_parts(b)]) for b in batches], dim=1)
    return gather(local).reshape(-1, *local.shape).transpose(0, 1).reshape(len(local), -1)


def calibrate(generator: AnomalyMapGenerator, raw_batches: list[torch.Tensor],
              gather: Gather = lambda t: t) -> list[torch.Tensor]:
    """Set ``generator``'s statistics of normal validation images from their raw maps (the reference's mean, the
    standardisation's std, ``max_and_z``'s score statistics) and return the maps as the generator returns them."""
    if not generator.needs_normal_maps:
        return raw_batches
    mean, std = normal_statistics(gather, raw_batches)
    if generator.extra_sigma > 0:  # the image score reads the maps smoothed further: their own spread
        _, std = normal_statistics(gather, [generator.image_maps(b) for b in raw_batches])
    generator.set_normal_statistics(mean, std)
    batches = [generator.subtract_reference(b) for b in raw_batches]
    if generator.image_score == "max_and_z":
        generator.set_score_statistics(part_maxima(generator, gather, batches))
    return batches


class ThresholdCalibration(L.Callback):
    def __init__(self, image_quantile: float = 0.99, pixel_quantile: float = 0.999) -> None:
        for key, q in (("image_quantile", image_quantile), ("pixel_quantile", pixel_quantile)):
            if not 0.0 <= float(q) <= 1.0:
                raise ConfigError(f"threshold.{key} must be in [0, 1], got {q!r}")
        self.image_quantile = float(image_quantile)
        self.pixel_quantile = float(pixel_quantile)
        self._maps: list[torch.Tensor] = []

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._maps.append(pl_module.anomaly_map.add_reference(outputs["maps"].float()))  # the raw maps

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._maps:
            return
        generator = pl_module.anomaly_map
        batches, self._maps = self._maps, []
        batches = calibrate(generator, batches, pl_module.all_gather)
        image = torch.cat([generator.image_scores(b) for b in batches])
        pixel = torch.cat([subsample(b.flatten(), MAX_PIXELS_PER_BATCH) for b in batches])
        image_scores = pl_module.all_gather(image).flatten().float()
        pixel_scores = pl_module.all_gather(pixel).flatten().float()
        pl_module.image_threshold.fill_(torch.quantile(image_scores, self.image_quantile).item())
        pl_module.pixel_threshold.fill_(torch.quantile(pixel_scores, self.pixel_quantile).item())
