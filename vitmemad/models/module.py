"""The LightningModule every model shares: a net that is handed in, anomaly maps, calibrated thresholds, testing.

Subclasses say how a model is fitted (``ReconstructionModule``: gradients on a loss; ``PatchCoreModule``: a
memory bank) and what its validation loss is. Everything else a run does on the side (threshold calibration,
example grids, memory diagnostics, labelled validation) lives in ``vitmemad.callbacks``.
"""
from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from torch import nn

from vitmemad.evaluation import TestEvaluator, mask_sizes

from .anomaly_map import AnomalyMapGenerator, anomaly_maps
from .recon_stats import ReconstructionFit
from .registration import ShiftRegistration, registered_forward

log = logging.getLogger(__name__)


class AnomalyModule(L.LightningModule):
    def __init__(self, net: nn.Module, anomaly_map: AnomalyMapGenerator, pro_fpr_limit: float = 0.3,
                 registration: ShiftRegistration | None = None) -> None:
        super().__init__()
        self.net = net
        self.anomaly_map = anomaly_map
        self.registration = registration  # test-time alignment onto the normal images (models/registration.py)
        self.evaluator = TestEvaluator(pro_fpr_limit)
        # Decision thresholds (vitmemad.callbacks.ThresholdCalibration), saved in checkpoints for predict.
        self.register_buffer("image_threshold", torch.tensor(float("nan")))
        self.register_buffer("pixel_threshold", torch.tensor(float("nan")))
        self.test_results: dict[str, Any] = {}
        # does the reconstruction follow its image (recon_stats)? on normal validation and normal test images
        self.val_fit, self.test_fit = ReconstructionFit(), ReconstructionFit()

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor | None]:
        return self.net(images)

    def score(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images (B, 3, S, S) in [-1, 1] -> (anomaly maps (B, S, S), reconstructions or None).

        Feature-space models (PatchCore, ``vitmemad_feat``) have no pixel reconstruction: None.
        """
        out = registered_forward(self.net, self.registration, images)
        return anomaly_maps(self.anomaly_map, images, out), out.get("reconstruction")

    @property
    def registers(self) -> bool:
        """Whether scoring shifts each image onto the normal images' mean first (a set registration)."""
        return self.registration is not None and bool(self.registration.ready)

    def on_fit_start(self) -> None:
        if self.registration is not None:
            self.registration.reference_from(getattr(self.trainer, "datamodule", None), self.device, self.all_gather)

    # ------------------------------------------------------------- validation
    def validation_terms(self, images: torch.Tensor, out: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The loss terms logged as ``val/*``; ``loss`` selects the best checkpoint."""
        raise NotImplementedError

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        images = batch["image"]
        out = self.net(images)
        terms = self.validation_terms(images, out)
        # the maps as the test scores them (calibration): registered, which costs a second forward pass
        maps = self.score(images)[0] if self.registers else anomaly_maps(self.anomaly_map, images, out)
        bs = images.shape[0]
        if getattr(self.net, "bypass_memory", False):
            # Without its memory the model is not the one we test: keep warm-up epochs out of `best`.
            terms = {**terms, "loss": torch.full_like(terms["loss"], float("inf"))}
        self.log_dict({f"val/{k}": v for k, v in terms.items()}, on_epoch=True, batch_size=bs, sync_dist=True)
        # the same yardstick whatever the loss weights: what a normal-only lambda search selects on
        recon = terms["l2"] + terms.get("ssim", 0.0)
        self.log("val/recon_unweighted", recon, on_epoch=True, batch_size=bs, sync_dist=True)
        self.log("val/image_score", self.anomaly_map.image_scores(maps).mean(), on_epoch=True, batch_size=bs,
                 sync_dist=True)
        if out.get("reconstruction") is not None:
            self.val_fit.update(images, out["reconstruction"])
        return {"maps": maps.detach()}

    def on_validation_epoch_end(self) -> None:
        fit = self.val_fit.compute()
        self.val_fit.reset()
        if fit is not None:
            self.log("val/recon_r2", fit["r2"], rank_zero_only=True)

    # ---------------------------------------------------------------- testing
    def on_test_epoch_start(self) -> None:
        if hasattr(self.net, "bypass_memory"):
            self.net.bypass_memory = False  # scoring always uses the memory
        self.test_results = {}
        self.test_fit.reset()
        datamodule = getattr(self.trainer, "datamodule", None)
        self.evaluator.reset(has_masks=bool(getattr(datamodule, "has_masks", True)))

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        maps, recon = self.score(batch["image"])
        generator = self.anomaly_map
        own = None if generator.score_is_map_maximum else generator.image_scores(maps, mask_sizes(batch["mask"]))
        scores = self.evaluator.update(maps, batch, own)
        if recon is not None:
            normal = torch.as_tensor(batch["label"], device=recon.device) == 0
            self.test_fit.update(batch["image"][normal], recon[normal])
        return {"maps": maps, "reconstruction": recon, "scores": scores}

    def on_test_epoch_end(self) -> None:
        self.test_results.update(self.evaluator.compute(float(self.image_threshold)))
        fit = self.test_results["reconstruction"] = self.test_fit.compute()
        trained = any(p.requires_grad for p in self.net.parameters())  # not the mean-image floor itself
        if fit is not None and fit["r2"] <= 0 and trained:
            log.warning("the reconstruction is no better than the mean image: R^2 = %.3f on the %d normal test "
                        "images (1 = each image rebuilt, 0 = their per-pixel mean drawn for all): the model has not "
                        "learnt this category's images; compare its metrics with the floor's (model=mean_image)",
                        fit["r2"], fit["num_images"])
        for key in ("image_AUROC", "pixel_AUROC", "PRO"):
            if self.test_results[key] is not None:
                self.log(f"test/{key}", self.test_results[key], rank_zero_only=True)
