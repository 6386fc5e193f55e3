"""The memory module's side jobs: its data-dependent start, a warm-up without it, dead-item restarts, and the
diagnostics that tell whether it works (``metrics.json`` ``memory``).

Both callbacks are no-ops for models without a memory module (the CAE, PatchCore).
"""
from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
import torch.distributed as dist

from vitmemad.models.memory_stats import COLLAPSED_BELOW, MemoryUsageHook
from vitmemad.models.schedule import planned_epochs

log = logging.getLogger(__name__)

IN_USE_AGAIN = 2 * COLLAPSED_BELOW  # the share of items in use at which a collapsed memory counts as back


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


class MemoryTraining(L.Callback):
    """- ``warmup_epochs``: the first epochs train encoder + decoder with the memory bypassed (at most half of
      ``max_epochs``, so a short run still trains and tests with its memory);
    - items with ``init=features`` start as a sample of the first training batch's encoder features, with
      ``init=coreset`` as a k-center coreset of the encoder features of every training batch (one extra pass);
    - ``restart_every`` > 0: every that many steps, items whose running usage share is below
      ``restart_min_share / N`` move onto current queries (the codebook-restart remedy of vector quantisation),
      except in the last 20 % of training, which lets the items settle.
    """

    def __init__(self, warmup_epochs: int = 0, restart_every: int = 0, restart_min_share: float = 0.1,
                 seed: int = 0) -> None:
        self.warmup_epochs = int(warmup_epochs)
        self.restart_every = int(restart_every)
        self.restart_min_share = float(restart_min_share)
        self.seed = int(seed or 0)

    def warmup_epochs_for(self, trainer: L.Trainer) -> int:
        return min(self.warmup_epochs, max(0, int(planned_epochs(trainer) or 0) // 2))

    def _bypass(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if getattr(pl_module.net, "memory", None) is not None:
            pl_module.net.bypass_memory = pl_module.current_epoch < self.warmup_epochs_for(trainer)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._bypass(trainer, pl_module)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._bypass(trainer, pl_module)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        net = pl_module.net
        memory = getattr(net, "memory", None)
        if memory is None or net.bypass_memory or bool(memory.initialized):
            return  # the common case: nothing to do on this batch
        was_training = net.training
        net.eval()  # no BatchNorm statistics update from this extra pass
        done = net.initialize_memory(self._start_images(trainer, pl_module, memory, batch),
                                     torch.Generator().manual_seed(self.seed))
        net.train(was_training)
        if done and _distributed():
            dist.broadcast(memory.items.data, src=0)  # every rank starts from rank 0's sample

    @staticmethod
    def _start_images(trainer: L.Trainer, pl_module: L.LightningModule, memory: Any, batch: Any) -> Any:
        """This batch's images, or for ``init=coreset`` every training batch's (the datamodule's loader)."""
        if memory.init != "coreset":
            return batch["image"]
        if trainer.datamodule is None:
            log.warning("memory.init=coreset needs the run's datamodule: the items start from this batch only")
            return batch["image"]
        log.info("memory: the %d items start as a k-center coreset of every training image's features",
                 memory.num_items)
        return (b["image"].to(pl_module.device) for b in trainer.datamodule.train_dataloader())

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        memory = getattr(pl_module.net, "memory", None)
        step = trainer.global_step
        if memory is None or self.restart_every <= 0 or (step + 1) % self.restart_every or pl_module.net.bypass_memory:
            return
        epochs = planned_epochs(trainer)
        if epochs and pl_module.current_epoch >= 0.8 * epochs:
            return
        generator = torch.Generator().manual_seed(self.seed + step)
        restarted = memory.restart_dead_items(self.restart_min_share, generator)
        if _distributed():
            dist.broadcast(memory.items.data, src=0)
            dist.broadcast(memory.usage, src=0)
        pl_module.log("train/memory_restarts", float(restarted), on_step=True, on_epoch=False)


class MemoryDiagnostics(L.Callback):
    """Addressing statistics of the memory module (``vitmemad.models.memory_stats``) over every validation epoch
    (logged as ``val/memory/*``, with a warning when the memory collapses) and over the test set
    (``metrics.json`` ``memory``; null for models without a memory)."""

    def __init__(self) -> None:
        self._hook: MemoryUsageHook | None = None
        self._collapsed = False  # warned, and not in use again since

    def _start(self, pl_module: L.LightningModule) -> None:
        self._hook = MemoryUsageHook(pl_module.net)

    def _stop(self) -> dict[str, Any] | None:
        stats = self._hook.detach() if self._hook is not None else None
        self._hook = None
        return stats

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not getattr(pl_module.net, "bypass_memory", False):
            self._start(pl_module)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        stats = self._stop()
        if stats is None or trainer.sanity_checking:
            return
        for key in ("used_fraction", "mean_active_items", "feature_relative_error", "readout_image_share"):
            if stats.get(key) is not None:
                pl_module.log(f"val/memory/{key}", float(stats[key]), on_epoch=True, rank_zero_only=True)
        self.report(stats, pl_module.current_epoch)

    def report(self, stats: dict[str, Any], epoch: int) -> None:
        """A warning when the memory collapses, a line when it comes back: restarts can revive the items of a
        memory that collapsed when it started, and a warning left alone would read as the state of the run.
        Back means twice the collapse threshold in use, so a memory hovering at the threshold warns once."""
        if stats["collapsed"] and not self._collapsed:
            self._collapsed = True
            log.warning("memory collapsed at epoch %d: only %.1f %% of the %d items get >= 0.1/N of the addressing "
                        "mass (the rest are unused)", epoch, 100 * stats["used_fraction"], stats["num_items"])
        elif self._collapsed and stats["used_fraction"] >= IN_USE_AGAIN:
            self._collapsed = False
            log.warning("memory in use again at epoch %d: %.1f %% of the %d items get >= 0.1/N of the addressing "
                        "mass", epoch, 100 * stats["used_fraction"], stats["num_items"])

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(pl_module)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.test_results["memory"] = self._stop()
