"""``val/image_AUROC`` on the labelled validation part of the test set (``data.labelled_val_fraction``).

For hyperparameter search only (``hparams_search=lambda_grid_labelled``, ``lambda_optuna``); a no-op when the
datamodule has no labelled part. Every rank scores the whole (small) part, so the value is the same on all ranks.
The image score is the maximum of the anomaly map at the mask's native resolution, exactly as in ``test``.
"""
from __future__ import annotations

from typing import Any

import lightning as L
import torch

from vitmemad.errors import ConfigError
from vitmemad.evaluation import mask_sizes
from vitmemad.metrics import ImageAUROC

METRIC = "val/image_AUROC"


class LabelledValidation(L.Callback):
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loader_of = getattr(trainer.datamodule, "labelled_val_dataloader", None)
        loader = loader_of() if loader_of is not None and not trainer.sanity_checking else None
        if loader is None:
            return
        metric = ImageAUROC()
        with torch.no_grad(), trainer.precision_plugin.val_step_context():
            for batch in loader:
                maps, _ = pl_module.score(batch["image"].to(pl_module.device))
                scores = pl_module.anomaly_map.image_scores(maps.float(), mask_sizes(batch["mask"]))
                metric.update_scores(scores.float().cpu(), batch["label"].long())
        pl_module.log(METRIC, float(metric.compute()), on_epoch=True, sync_dist=False, rank_zero_only=False)


def check_optimized_metric(metric: str | None, data_cfg: Any) -> None:
    """Fail before training when a search would select on ``val/image_AUROC`` but this run cannot log it."""
    if metric == METRIC and not (data_cfg or {}).get("labelled_val_fraction"):
        raise ConfigError(
            f"optimized_metric={METRIC} needs a labelled validation split: set data.labelled_val_fraction "
            "(e.g. 0.5), or select on a normal-only metric such as val/recon_unweighted"
        )
