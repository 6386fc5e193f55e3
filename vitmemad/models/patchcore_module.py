"""The LightningModule of PatchCore: fitted by collecting patch features, not by gradients.

One training epoch collects the features of every normal training image (the preset sets
``data.drop_last: false``); the memory bank is built from them (on every DDP rank alike) before validation, or at
the end of the epoch when there is none, and is saved in the checkpoint as the buffer ``net.memory_bank``.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from .anomaly_map import AnomalyMapGenerator
from .module import AnomalyModule
from .patchcore import PatchCore


class PatchCoreModule(AnomalyModule):
    def __init__(self, net: PatchCore, anomaly_map: AnomalyMapGenerator, pro_fpr_limit: float = 0.3) -> None:
        super().__init__(net, anomaly_map, pro_fpr_limit)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.net.collect(batch["image"])
        return None  # no optimisation step

    def configure_optimizers(self) -> None:
        return None  # nothing to optimise (Lightning runs the epoch without an optimizer)

    def validation_terms(self, images: torch.Tensor, out: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Mean squared nearest-neighbour distance per channel: how far normal validation patches are from the bank."""
        error = out["feature_error"].float().mean()
        return {"loss": error, "l2": error, "entropy": torch.zeros_like(error)}

    def build_bank(self) -> None:
        """Turn the patch features collected this epoch (all ranks) into the memory bank."""
        if not self.net.has_pending_features:
            return
        features = self.net.pending_features()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            parts: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(parts, features)
            features = torch.cat(parts)  # every rank builds the same bank from the same features
        self.net.build_bank(features)

    def on_validation_epoch_start(self) -> None:
        self.build_bank()  # validation runs before on_train_epoch_end

    def on_train_epoch_end(self) -> None:
        self.build_bank()  # when there is no validation run
