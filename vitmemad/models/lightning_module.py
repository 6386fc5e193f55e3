"""One LightningModule around any model: reconstruction models (ViT+M+CA, its ablations, the CAE) and
feature-space models (``vitmemad_feat``, PatchCore) that return an ``anomaly_map`` themselves.

Training minimises the paper's loss on normal images; validation computes the same loss on a
held-out set of normal *training* images (never the test set); testing scores every test image
and accumulates the exact metrics of ``vitmemad.metrics``.
"""
from __future__ import annotations

import logging
import math
from typing import Any

import lightning as L
import torch
import torch.distributed as dist

from vitmemad.metrics import PRO, ImageAUROC, PixelAUROC
from vitmemad.metrics.curves import metric_curves

from .anomaly_map import AnomalyMapGenerator, anomaly_maps, resize_maps
from .corruption import build_corruption
from .factory import build_model, has_ablation
from .loss import ReconstructionLoss
from .memory_stats import MemoryUsageHook

log = logging.getLogger(__name__)

NUM_EXAMPLES = 8
MAX_PIXELS_PER_BATCH = 200_000  # keeps torch.quantile's input small (its limit is 16 M elements)


class AnomalyModule(L.LightningModule):
    def __init__(self, cfg: dict[str, Any]) -> None:
        """``cfg`` is the fully resolved run config as plain containers; it is saved in checkpoints."""
        super().__init__()
        self.save_hyperparameters({"cfg": cfg})
        self.cfg = cfg
        model_cfg = cfg["model"]
        self.model = build_model(model_cfg, int(cfg["data"]["image_size"]), cfg.get("ablation"))
        self.uses_ablation = has_ablation(model_cfg)
        self.criterion = ReconstructionLoss(**cfg["loss"])
        self.corruption = build_corruption(cfg.get("corruption"))  # training inputs only
        self.anomaly_map = AnomalyMapGenerator(**cfg["anomaly_map"])
        fpr_limit = float(cfg.get("metrics", {}).get("pro_fpr_limit", 0.3))
        self.image_auroc = ImageAUROC()
        self.pixel_auroc = PixelAUROC()
        self.pro = PRO(fpr_limit=fpr_limit)
        self.test_results: dict[str, Any] = {}
        self._reset_test_buffers()
        # Decision thresholds, calibrated on normal validation images and saved in checkpoints.
        calib = cfg.get("threshold") or {}
        self.image_quantile = float(calib.get("image_quantile", 0.99))
        self.pixel_quantile = float(calib.get("pixel_quantile", 0.999))
        self.register_buffer("image_threshold", torch.tensor(float("nan")))
        self.register_buffer("pixel_threshold", torch.tensor(float("nan")))
        self._val_image_scores: list[torch.Tensor] = []
        self._val_pixel_scores: list[torch.Tensor] = []

    # ---------------------------------------------------------------- training
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor | None]:
        return self.model(images)

    def _loss(
        self, images: torch.Tensor, inputs: torch.Tensor | None = None
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor | None]]:
        """Loss of rebuilding ``images`` from ``inputs`` (default: the images themselves)."""
        out = self.model(images if inputs is None else inputs)
        if out.get("feature_error") is not None:  # feature-space models: their own per-position error
            return self.criterion.feature_terms(out["feature_error"], out["memory_weights"]), out
        return self.criterion(images, out["reconstruction"], out["memory_weights"]), out

    # ------------------------------------------------- models fitted without gradients (PatchCore)
    @property
    def fits_without_gradients(self) -> bool:
        return hasattr(self.model, "collect")

    def _build_bank(self) -> None:
        """Turn the patch features collected this epoch (all ranks) into the model's memory bank."""
        if not self.fits_without_gradients or not self.model.has_pending_features:
            return
        features = self.model.pending_features()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            parts: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(parts, features)
            features = torch.cat(parts)  # every rank builds the same bank from the same features
        self.model.build_bank(features)

    def on_train_epoch_end(self) -> None:
        self._build_bank()  # when there is no validation run (which builds it first)

    def setup(self, stage: str) -> None:
        """PatchCore's bank is built from every training image: no dropped last batch."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        datamodule = getattr(datamodule, "inner", datamodule)  # a labelled-split wrapper forwards to its inner one
        if self.fits_without_gradients and stage == "fit" and hasattr(datamodule, "drop_last"):
            datamodule.drop_last = False

    # ------------------------------------------------------------ memory warm-up
    def memory_warmup_epochs(self) -> int:
        """Epochs that train encoder + decoder with the memory bypassed (``memory.warmup_epochs``).

        At most half of ``max_epochs``, so a short run still trains (and tests) with its memory.
        """
        if getattr(self.model, "memory", None) is None:
            return 0
        warmup = int((self.cfg["model"].get("memory") or {}).get("warmup_epochs", 0) or 0)
        max_epochs = self._trainer.max_epochs if self._trainer is not None else self.cfg["model"]["epochs"]
        return min(warmup, max(0, int(max_epochs or 0) // 2))

    def in_memory_warmup(self) -> bool:
        return self._trainer is not None and self.current_epoch < self.memory_warmup_epochs()

    def on_train_epoch_start(self) -> None:
        if hasattr(self.model, "bypass_memory"):
            self.model.bypass_memory = self.in_memory_warmup()

    def on_validation_epoch_start(self) -> None:
        self._build_bank()  # validation runs before on_train_epoch_end
        self.on_train_epoch_start()

    def on_train_batch_start(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Initialise memory items from the first batch's encoder features (``memory.init=features``)."""
        memory = getattr(self.model, "memory", None)
        if memory is None or self.model.bypass_memory or bool(memory.initialized):
            return  # the common case: nothing to do on this batch
        generator = torch.Generator().manual_seed(int(self.cfg.get("seed") or 0))
        was_training = self.model.training
        self.model.eval()  # no BatchNorm statistics update from this extra pass
        done = self.model.initialize_memory(batch["image"], generator)
        self.model.train(was_training)
        if done and dist.is_available() and dist.is_initialized():
            dist.broadcast(self.model.memory.items.data, src=0)  # every rank starts from rank 0's sample

    def on_train_batch_end(self, outputs: Any, batch: dict[str, Any], batch_idx: int) -> None:
        """Restart dead memory items every ``memory.restart_every`` steps (0 = never, the paper)."""
        memory = getattr(self.model, "memory", None)
        mem_cfg = self.cfg["model"].get("memory") or {}
        every = int(mem_cfg.get("restart_every", 0) or 0)
        if memory is None or every <= 0 or (self.global_step + 1) % every or self.in_memory_warmup():
            return
        if self._trainer is not None and self.trainer.max_epochs and self.current_epoch >= 0.8 * self.trainer.max_epochs:
            return  # let the items settle for the last 20 % of training
        generator = torch.Generator().manual_seed(int(self.cfg.get("seed") or 0) + self.global_step)
        restarted = memory.restart_dead_items(float(mem_cfg.get("restart_min_share", 0.1)), generator)
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(memory.items.data, src=0)
            dist.broadcast(memory.usage, src=0)
        self.log("train/memory_restarts", float(restarted), on_step=True, on_epoch=False)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        if self.fits_without_gradients:  # PatchCore: collect patch features, no optimisation step
            self.model.collect(batch["image"])
            return None
        images = batch["image"]
        terms, _ = self._loss(images, self.corruption(images) if self.corruption is not None else None)
        if not torch.isfinite(terms["loss"]):
            raise FloatingPointError(
                f"training loss is {terms['loss'].item()} at epoch {self.current_epoch}, "
                f"global step {self.global_step}; the last checkpoint is kept in checkpoints/"
            )
        bs = batch["image"].shape[0]
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()}, on_step=False, on_epoch=True, batch_size=bs)
        return terms["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        terms, out = self._loss(batch["image"])
        maps = anomaly_maps(self.anomaly_map, batch["image"], out)
        bs = batch["image"].shape[0]
        if self.in_memory_warmup():
            # Without its memory the model is not the one we test: keep warm-up epochs out of `best`.
            terms = {**terms, "loss": torch.full_like(terms["loss"], float("inf"))}
        self.log_dict({f"val/{k}": v for k, v in terms.items()}, on_epoch=True, batch_size=bs, sync_dist=True)
        # the same yardstick whatever the loss weights: what a normal-only lambda search selects on
        self.log("val/recon_unweighted", terms["l2"] + terms.get("ssim", 0.0), on_epoch=True, batch_size=bs, sync_dist=True)
        self.log("val/image_score", maps.flatten(1).amax(1).mean(), on_epoch=True, batch_size=bs, sync_dist=True)
        self._val_image_scores.append(maps.flatten(1).amax(1).detach())
        self._val_pixel_scores.append(_subsample(maps.detach().flatten(), MAX_PIXELS_PER_BATCH))

    def on_validation_epoch_end(self) -> None:
        """Calibrate the image and pixel thresholds as high quantiles of normal validation scores."""
        if not self._val_image_scores:
            return
        image_scores = self.all_gather(torch.cat(self._val_image_scores)).flatten().float()
        pixel_scores = self.all_gather(torch.cat(self._val_pixel_scores)).flatten().float()
        self.image_threshold.fill_(torch.quantile(image_scores, self.image_quantile).item())
        self.pixel_threshold.fill_(torch.quantile(pixel_scores, self.pixel_quantile).item())
        self._val_image_scores.clear()
        self._val_pixel_scores.clear()

    def configure_optimizers(self) -> Any:
        if self.fits_without_gradients:
            return None  # nothing to optimise (Lightning runs the epoch without an optimizer)
        opt_cfg = self.cfg["model"]["optimizer"]
        optimizer = torch.optim.Adam(
            self.parameters(),
            lr=float(opt_cfg["lr"]),
            betas=tuple(opt_cfg.get("betas", (0.9, 0.999))),
            weight_decay=float(opt_cfg.get("weight_decay", 0.0)),
        )
        schedule = opt_cfg.get("scheduler", "none")
        if schedule not in (None, "none", "cosine"):
            raise ValueError(f"model.optimizer.scheduler must be 'none' or 'cosine', got {schedule!r}")
        warmup_epochs = float(opt_cfg.get("warmup_epochs", 0) or 0)
        if schedule in (None, "none") and warmup_epochs <= 0:
            return optimizer
        total_steps = max(1, int(self.trainer.estimated_stepping_batches)) if self._trainer is not None else 1
        steps_per_epoch = total_steps / max(1, int(self.trainer.max_epochs or 1)) if self._trainer is not None else 1
        factor = WarmupCosine(warmup_steps=int(round(warmup_epochs * steps_per_epoch)), total_steps=total_steps,
                           cosine=schedule == "cosine", final=0.01)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---------------------------------------------------------------- scoring
    def score(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images (B, 3, S, S) in [-1, 1] -> (anomaly maps (B, S, S), reconstructions or None).

        Feature-space models (PatchCore, ``vitmemad_feat``) have no pixel reconstruction: None.
        """
        out = self.model(images)
        return anomaly_maps(self.anomaly_map, images, out), out["reconstruction"]

    def _reset_test_buffers(self) -> None:
        self._records: list[tuple[float, int, str]] = []
        self.examples: dict[str, list[torch.Tensor]] = {"image": [], "reconstruction": [], "map": [], "mask": []}
        self._has_masks = True
        self._memory_hook: MemoryUsageHook | None = None

    def on_test_epoch_start(self) -> None:
        if hasattr(self.model, "bypass_memory"):
            self.model.bypass_memory = False  # scoring always uses the memory
        self._reset_test_buffers()
        self._memory_hook = MemoryUsageHook(self.model)  # addressing diagnostics over the test set
        dm = getattr(self.trainer, "datamodule", None)
        self._has_masks = bool(getattr(dm, "has_masks", True))

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        images = batch["image"]
        maps, recon = self.score(images)
        masks = batch["mask"]
        mask_list = list(masks) if isinstance(masks, (list, tuple)) else [m for m in masks]
        scores = []
        for i, mask in enumerate(mask_list):
            full = resize_maps(maps[i : i + 1], tuple(mask.shape[-2:]))
            if self._has_masks:
                self.pixel_auroc.update(full, mask[None])
                self.pro.update(full, mask[None])
            scores.append(full.amax())
        scores_t = torch.stack(scores).float()
        labels = torch.as_tensor(batch["label"], device=scores_t.device).long()
        # Image AUROC from (score, label) pairs: a 1x1 "map" holding the score, a 1x1 "mask" the label.
        self.image_auroc.update(scores_t[:, None, None], labels[:, None, None])
        self._records += [(float(s), int(l), str(d)) for s, l, d in zip(scores_t.cpu(), labels.cpu(), batch["defect"])]
        self._keep_examples(images, recon, maps, mask_list, labels)

    def _keep_examples(self, images, recon, maps, masks, labels) -> None:
        kept = self.examples["image"]
        for i in range(images.shape[0]):
            if len(kept) >= NUM_EXAMPLES:
                return
            # Prefer anomalous examples, but keep a couple of normal ones for contrast.
            n_normal = sum(1 for m in self.examples["mask"] if m.sum() == 0)
            if labels[i] == 0 and n_normal >= 2:
                continue
            size = tuple(images.shape[-2:])
            mask = torch.nn.functional.interpolate(masks[i][None, None].float(), size=size, mode="nearest")[0, 0]
            self.examples["image"].append(images[i].detach().float().cpu())
            self.examples["reconstruction"].append(recon[i].detach().float().cpu() if recon is not None else None)
            self.examples["map"].append(maps[i].detach().float().cpu())
            self.examples["mask"].append(mask.cpu())

    def on_test_epoch_end(self) -> None:
        records = self._gather_records()
        results: dict[str, Any] = {
            "image_AUROC": _safe_compute(self.image_auroc, "image_AUROC"),
            "pixel_AUROC": _safe_compute(self.pixel_auroc, "pixel_AUROC") if self._has_masks else None,
            "PRO": _safe_compute(self.pro, "PRO") if self._has_masks else None,
            "per_defect": per_defect_auroc(records),
            "num_test_images": len(records),
            "memory": self._memory_hook.detach() if self._memory_hook is not None else None,
            "curves": metric_curves(self.image_auroc, self.pixel_auroc, self.pro, float(self.image_threshold)),
        }
        self._memory_hook = None
        for metric in (self.image_auroc, self.pixel_auroc, self.pro):
            metric.reset()
        self.test_results = results
        for key in ("image_AUROC", "pixel_AUROC", "PRO"):
            if results[key] is not None:
                self.log(f"test/{key}", results[key], rank_zero_only=True)

    def _gather_records(self) -> list[tuple[float, int, str]]:
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self._records
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, self._records)
        return [r for part in gathered for r in part]


def _subsample(values: torch.Tensor, limit: int) -> torch.Tensor:
    """A deterministic, evenly strided subsample: quantiles stay accurate, memory stays bounded."""
    if values.numel() <= limit:
        return values
    step = -(-values.numel() // limit)
    return values[::step]


def _safe_compute(metric: Any, name: str) -> float | None:
    """A metric that is undefined for this test set (e.g. one class only) is recorded as null."""
    try:
        return float(metric.compute())
    except ValueError as err:
        log.warning("%s is undefined for this test set: %s", name, err)
        return None


def per_defect_auroc(records: list[tuple[float, int, str]]) -> dict[str, float]:
    """Image AUROC of each defect type against all normal test images."""
    normal = [s for s, label, _ in records if label == 0]
    defects = sorted({d for _, label, d in records if label == 1})
    result = {}
    for defect in defects:
        anomalous = [s for s, label, d in records if label == 1 and d == defect]
        if not normal or not anomalous:
            continue
        metric = ImageAUROC()
        scores = torch.tensor(normal + anomalous, dtype=torch.float32)
        labels = torch.tensor([0] * len(normal) + [1] * len(anomalous))
        metric.update(scores[:, None, None], labels[:, None, None])
        result[defect] = float(metric.compute())
    return result


class WarmupCosine:
    """Per-step learning-rate factor: linear warm-up to 1, then constant or cosine decay to ``final``.

    Warm-up is common practice for ViTs trained from scratch; every preset leaves it at 0 (on the demo it made no
    difference, README "Demo data"). Cosine decay is per step, so short runs decay smoothly. A class rather than a
    closure so that the scheduler's state pickles into checkpoints.
    """

    def __init__(self, warmup_steps: int, total_steps: int, cosine: bool, final: float) -> None:
        self.warmup_steps, self.total_steps, self.cosine, self.final = warmup_steps, total_steps, cosine, final

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if not self.cosine:
            return 1.0
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.final + (1 - self.final) * 0.5 * (1 + math.cos(math.pi * progress))
