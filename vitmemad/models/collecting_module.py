"""The LightningModule of the models fitted by collecting statistics of the normal training images, not by
gradients: PatchCore (a memory bank of patch features) and the mean-image floor (``model=mean_image``).

Its net has ``collect(images)`` (one training batch), ``has_pending_features``, ``pending_features()`` (a tensor
whose rows are concatenated over DDP ranks) and ``fit_collected(features)``. One training epoch collects every
normal training image (the presets set ``data.drop_last: false``); the fit runs on every rank alike, from the
features of all ranks, before validation (or at the end of the epoch when there is none). The run then stops:
more epochs would only collect the same images again, so a shared ``trainer.max_epochs`` (``experiment=cpu_real``)
does not multiply the work, and the settings of gradient training that such an experiment brings (optimizer,
scheduler, loss, corruption) are ignored with one log line.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .anomaly_map import AnomalyMapGenerator
from .module import AnomalyModule

log = logging.getLogger(__name__)


class CollectingModule(AnomalyModule):
    def __init__(self, net: nn.Module, anomaly_map: AnomalyMapGenerator, pro_fpr_limit: float = 0.3,
                 optimizer: Any = None, scheduler: Any = None, loss: Any = None, corruption: Any = None) -> None:
        super().__init__(net, anomaly_map, pro_fpr_limit)
        ignored = [name for name, value in (("optimizer", optimizer), ("scheduler", scheduler), ("loss", loss),
                                            ("corruption", corruption)) if value is not None]
        if ignored:
            log.info("%s is fitted without gradients: %s do not apply and are ignored", type(net).__name__,
                     ", ".join(f"model.{name}" for name in ignored))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.net.collect(batch["image"])
        return None  # no optimisation step

    def configure_optimizers(self) -> None:
        return None  # nothing to optimise (Lightning runs the epoch without an optimizer)

    def validation_terms(self, images: torch.Tensor, out: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The mean squared error of the validation images: per pixel against the reconstruction, or per
        feature channel against the nearest bank entry (PatchCore's ``feature_error``)."""
        if out.get("reconstruction") is not None:
            error = (images.float() - out["reconstruction"].float()).square().mean()
        else:
            error = out["feature_error"].float().mean()
        return {"loss": error, "l2": error, "entropy": torch.zeros_like(error)}

    def fit_collected(self) -> None:
        """Fit the net on what this epoch collected (on all ranks)."""
        if not self.net.has_pending_features:
            return
        features = self.net.pending_features()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            parts: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(parts, features)
            features = torch.cat(parts)  # every rank fits the same net on the same features
        self.net.fit_collected(features)
        max_epochs = self.trainer.max_epochs
        if max_epochs is not None and max_epochs > self.current_epoch + 1:
            log.info("fitted in one epoch: the other %d of trainer.max_epochs=%d are skipped",
                     max_epochs - self.current_epoch - 1, max_epochs)
        self.trainer.should_stop = True  # set before the epoch ends, so the progress line knows it is the last

    def on_validation_epoch_start(self) -> None:
        self.fit_collected()  # validation runs before on_train_epoch_end

    def on_train_epoch_end(self) -> None:
        self.fit_collected()  # when there is no validation run
