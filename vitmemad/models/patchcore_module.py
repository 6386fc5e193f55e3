"""The LightningModule of PatchCore: fitted by collecting patch features, not by gradients
(``CollectingModule``); the memory bank is saved in the checkpoint as the buffer ``net.memory_bank``."""
from __future__ import annotations

from .anomaly_map import AnomalyMapGenerator
from .collecting_module import CollectingModule
from .patchcore import PatchCore


class PatchCoreModule(CollectingModule):
    def __init__(self, net: PatchCore, anomaly_map: AnomalyMapGenerator, pro_fpr_limit: float = 0.3,
                 **training_only) -> None:
        super().__init__(net, anomaly_map, pro_fpr_limit, **training_only)
