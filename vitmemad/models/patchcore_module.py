"""The LightningModule of PatchCore: fitted by collecting patch features, not by gradients
(``CollectingModule``); the memory bank is saved in the checkpoint as the buffer ``net.memory_bank``."""
from __future__ import annotations

from .collecting_module import CollectingModule


class PatchCoreModule(CollectingModule):
    """``CollectingModule`` under the name configs and checkpoints of PatchCore have always used."""
