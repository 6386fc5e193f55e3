"""The LightningModule of the models trained by gradients on a reconstruction loss: the ViT (+M, +CA), the CAE
and ``vitmemad_feat``. It is handed its parts; it reads no run config.

Training minimises the loss on normal images (optionally corrupted: a denoising objective); validation computes
the same loss on a held-out set of normal *training* images, never the test set.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable

import torch
from torch import nn

from vitmemad.errors import ConfigError

from .anomaly_map import AnomalyMapGenerator
from .feature_ae import FeatureMemAE
from .loss import ReconstructionLoss
from .module import AnomalyModule
from .registration import ShiftRegistration
from .schedule import planned_epochs, steps_per_epoch


class ReconstructionModule(AnomalyModule):
    def __init__(
        self,
        net: nn.Module,
        loss: ReconstructionLoss,
        anomaly_map: AnomalyMapGenerator,
        optimizer: Callable[..., torch.optim.Optimizer] = partial(torch.optim.Adam, lr=1e-3),
        scheduler: Callable[..., Any] | None = None,
        corruption: Callable[[torch.Tensor], torch.Tensor] | None = None,
        pro_fpr_limit: float = 0.3,
        registration: ShiftRegistration | None = None,
    ) -> None:
        if registration is not None and isinstance(net, FeatureMemAE):
            raise ConfigError("registration=shift needs a model that reconstructs pixels; model.net is a "
                              "FeatureMemAE (vitmemad_feat), whose map is in feature space: use registration=none")
        super().__init__(net, anomaly_map, pro_fpr_limit, registration)
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.corruption = corruption  # training inputs only; the loss is against the clean image

    def validation_terms(self, images: torch.Tensor, out: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self.loss.terms(images, out)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        images = batch["image"]
        inputs = self.corruption(images) if self.corruption is not None else images
        terms = self.loss.terms(images, self.net(inputs))
        if not torch.isfinite(terms["loss"]):
            raise FloatingPointError(
                f"training loss is {terms['loss'].item()} at epoch {self.current_epoch}, "
                f"global step {self.global_step}; the last checkpoint is kept in checkpoints/"
            )
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()}, on_step=False, on_epoch=True,
                      batch_size=images.shape[0])
        return terms["loss"]

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        total = self.trainer.estimated_stepping_batches
        if steps_per_epoch(self.trainer) is None:  # with max_epochs=-1 Lightning answers from max_steps alone
            self.trainer.fit_loop.setup_data()
        per_epoch = steps_per_epoch(self.trainer) or total / max(1, planned_epochs(self.trainer) or 1)
        scheduler = self.scheduler_factory(optimizer, total_steps=total, steps_per_epoch=per_epoch)
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
