"""``last.ckpt`` after every completed epoch, not only after an improvement.

Lightning's ``ModelCheckpoint(save_last=True)`` rewrites ``last`` only in a step where a top-k checkpoint was saved
too (Lightning 2.6), so after a plateau a kill loses every epoch since the last improvement, and extending a finished
run restarts from the wrong epoch. This subclass keeps everything else (top-k, resume state, versioning).
"""
from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint


class EpochEndCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` always holds the latest completed epoch."""

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):  # the epoch-end save point
            self._save_last_if_behind(trainer)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._save_last_if_behind(trainer)  # epochs without validation; a no-op after a save at this step

    def _save_last_if_behind(self, trainer: Any) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):  # skips a step already saved
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
