"""Models: pure ``nn.Module`` parts and nets, and the LightningModules that train and test them.

Configs (``conf/model/*.yaml``) instantiate everything here by ``_target_``: a net from its parts (encoder,
memory, coordinate attention, decoder), handed with its loss, anomaly map, optimizer and scheduler to a
LightningModule.
"""
from .anomaly_map import AnomalyMapGenerator
from .cae import ConvAutoencoder
from .coord_attention import CoordinateAttention
from .corruption import PatchSwap
from .decoder import TransposedConvDecoder
from .encoder import ViTEncoder
from .feature_ae import FeatureMemAE
from .loss import ReconstructionLoss
from .mean_image import MeanImage
from .memory import MemoryModule
from .patchcore import PatchCore
from .registration import ShiftRegistration
from .vitmemad import ViTMemAE

#: the LightningModules, imported on first use: the nn.Modules above need neither Lightning nor the metrics
_LIGHTNING = {"AnomalyModule": ".module", "CollectingModule": ".collecting_module",
              "PatchCoreModule": ".patchcore_module", "ReconstructionModule": ".reconstruction_module"}


def __getattr__(name: str):
    if name in _LIGHTNING:
        import importlib

        return getattr(importlib.import_module(_LIGHTNING[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "AnomalyMapGenerator", "AnomalyModule", "CollectingModule", "ConvAutoencoder", "CoordinateAttention",
    "FeatureMemAE", "MeanImage", "MemoryModule",
    "PatchCore", "PatchCoreModule", "PatchSwap", "ReconstructionLoss", "ReconstructionModule",
    "ShiftRegistration",
    "TransposedConvDecoder", "ViTEncoder", "ViTMemAE",
]
