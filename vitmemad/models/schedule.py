"""Learning-rate schedule: linear warm-up per step, then constant or cosine decay (``model.scheduler``)."""
from __future__ import annotations

import math

import lightning as L
import torch


def steps_per_epoch(trainer: L.Trainer) -> float | None:
    """Optimizer steps per training epoch, or None before the training data is known."""
    batches = trainer.num_training_batches
    if not batches or math.isinf(batches):
        return None
    return batches / max(1, trainer.accumulate_grad_batches)


def planned_epochs(trainer: L.Trainer) -> int | None:
    """The epochs this run trains: ``trainer.max_epochs``, or fewer where ``trainer.max_steps`` ends it first (a
    budget stated in steps); None when neither bounds it."""
    epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
    per_epoch = steps_per_epoch(trainer)
    if trainer.max_steps and trainer.max_steps > 0 and per_epoch:
        by_steps = math.ceil(trainer.max_steps / per_epoch)
        epochs = by_steps if epochs is None else min(epochs, by_steps)
    return epochs


class WarmupCosine:
    """Per-step learning-rate factor: linear warm-up to 1, then constant or cosine decay to ``final``.

    Warm-up is common practice for ViTs trained from scratch (``experiment=cpu_real`` uses 5 epochs). Cosine decay
    is per step, so short runs decay smoothly. A class rather than a closure so that the scheduler's state pickles
    into checkpoints.
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


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int,
    steps_per_epoch: float,
    warmup_epochs: float = 0.0,
    cosine: bool = True,
    final: float = 0.01,
) -> torch.optim.lr_scheduler.LambdaLR | None:
    """The per-step scheduler, or None when it would be constant (no warm-up, no decay)."""
    if warmup_epochs < 0:
        raise ValueError(f"model.scheduler.warmup_epochs must be >= 0, got {warmup_epochs}")
    if not cosine and warmup_epochs <= 0:
        return None
    total_steps = max(1, int(total_steps))
    factor = WarmupCosine(int(round(warmup_epochs * steps_per_epoch)), total_steps, cosine, final)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
