"""Progress as log lines where there is no terminal (nohup, SLURM, CI), where a progress bar shows nothing useful.

When stderr is not a terminal, ``LogProgress`` logs through the ``vitmemad`` logger (so to the console and the
run's log file), every ``every_epochs`` epochs (null: ``max(1, max_epochs // 20)``) or once ``every_seconds``
have passed since the last line, whichever comes first (a long epoch gets lines mid-epoch), and always after the
last epoch::

    epoch 3/30 | loss 0.1432 (l2 0.0213, ssim 0.1201, entropy 1.873) | val/loss 0.1387 | elapsed 2m10s | ETA 19m30s

and it turns Lightning's progress bar off, which without a terminal prints only its last frame. On a terminal
(or in a notebook) the bar shows and no lines are logged. ``enabled: true/false`` forces the lines on or off.
"""
from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any

import lightning as L

from vitmemad.errors import ConfigError
from vitmemad.models.schedule import planned_epochs

log = logging.getLogger(__name__)

#: Validation figures shown when the module logs them (val/image_AUROC: labelled validation).
VAL_KEYS = ("val/loss", "val/image_AUROC")


def stderr_is_terminal() -> bool:
    """A terminal, or a notebook (which renders progress bars although its stderr is no TTY)."""
    if "ipykernel" in sys.modules:
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def epoch_interval(max_epochs: int | None, every_epochs: int | None) -> int:
    if every_epochs is not None:
        return int(every_epochs)
    return max(1, (max_epochs if max_epochs and max_epochs > 0 else 0) // 20)


def duration(seconds: float) -> str:
    """``45s``, ``2m05s``, ``1h02m``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _number(value: Any) -> str:
    value = float(value)
    return f"{value:.4g}" if math.isfinite(value) else str(value)


class LogProgress(L.Callback):
    """Epoch k/E, the training loss terms, val/loss, elapsed time and ETA, as log lines (see the module doc)."""

    def __init__(self, enabled: bool | None = None, every_epochs: int | None = None,
                 every_seconds: float | None = 60.0) -> None:
        if every_epochs is not None and (isinstance(every_epochs, bool) or int(every_epochs) < 1):
            raise ConfigError(f"callbacks.progress.every_epochs must be null or an integer >= 1, got {every_epochs!r}")
        if every_seconds is not None and float(every_seconds) < 0:
            raise ConfigError(f"callbacks.progress.every_seconds must be null or >= 0, got {every_seconds!r}")
        self.enabled = enabled
        self.every_epochs = every_epochs
        self.every_seconds = None if every_seconds is None else float(every_seconds)
        self.active = False
        self._start = self._last_line = 0.0
        self._start_epoch = self._last_epoch = self._reported_epoch = 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        terminal = stderr_is_terminal()
        self.active = trainer.is_global_zero and (not terminal if self.enabled is None else bool(self.enabled))
        bar = trainer.progress_bar_callback
        if not terminal and bar is not None:
            bar.disable()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = self._last_line = time.monotonic()
        self._start_epoch = self._last_epoch = self._reported_epoch = trainer.current_epoch

    def _total(self, trainer: L.Trainer) -> int | None:
        return planned_epochs(trainer)

    def _timing(self, trainer: L.Trainer, done: float) -> str:
        """Elapsed time, and the ETA from this run's mean time per epoch (``done`` epochs, fractions allowed)."""
        elapsed = time.monotonic() - self._start
        total, ran = self._total(trainer), done - self._start_epoch
        if trainer.should_stop:  # early stopping, or a model fitted in one epoch
            eta = duration(0.0)
        else:
            eta = duration(elapsed / ran * (total - done)) if total is not None and ran > 0 else "?"
        return f"elapsed {duration(elapsed)} | ETA {eta}"

    def _epoch(self, trainer: L.Trainer, epoch: int) -> str:
        total = self._total(trainer)
        return f"epoch {epoch}/{total}" if total is not None else f"epoch {epoch}"

    def _time_due(self) -> bool:
        return self.every_seconds is not None and time.monotonic() - self._last_line >= self.every_seconds

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        batches = trainer.num_training_batches
        if not self.active or not self._time_due() or not math.isfinite(batches) or batch_idx + 1 >= batches:
            return  # the epoch's end has its own line
        epoch = trainer.current_epoch
        timing = self._timing(trainer, epoch + (batch_idx + 1) / batches)
        self._log(f"{self._epoch(trainer, epoch + 1)} (batch {batch_idx + 1}/{int(batches)}) | {timing}")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.active:
            return
        self._last_epoch = epoch = trainer.current_epoch + 1  # epochs completed
        last = epoch == self._total(trainer) or trainer.should_stop
        if last or epoch % epoch_interval(self._total(trainer), self.every_epochs) == 0 or self._time_due():
            self._epoch_line(trainer, epoch)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.active and self._last_epoch > self._reported_epoch:  # stopped early (max_steps, max_time, ...)
            self._epoch_line(trainer, self._last_epoch)

    def _epoch_line(self, trainer: L.Trainer, epoch: int) -> None:
        self._reported_epoch = epoch
        metrics = trainer.callback_metrics
        parts = [self._epoch(trainer, epoch)]
        train = {k.removeprefix("train/"): v for k, v in metrics.items() if k.startswith("train/")}
        if train:
            total = train.pop("loss", None)
            terms = ", ".join(f"{k} {_number(v)}" for k, v in train.items())
            head = f"loss {_number(total)}" if total is not None else ""
            parts.append(f"{head} ({terms})" if head and terms else head or terms)
        for key in VAL_KEYS:
            if key in metrics:
                value = _number(metrics[key])
                parts.append(f"{key} {value}" + (" (memory warm-up)" if value == "inf" and key == "val/loss" else ""))
        parts.append(self._timing(trainer, epoch))
        self._log(" | ".join(parts))

    def _log(self, line: str) -> None:
        self._last_line = time.monotonic()
        log.info(line)
