"""Every checkpoint carries the resolved run config, so eval, predict and export need only ``ckpt_path``."""
from __future__ import annotations

from typing import Any

import lightning as L


class SaveRunConfig(L.Callback):
    """Stores ``cfg`` (plain containers, loadable with ``weights_only=True``) as ``hyper_parameters.cfg``."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint["hyper_parameters"] = {"cfg": self.cfg}
