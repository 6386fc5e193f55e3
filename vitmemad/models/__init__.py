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
from .memory import MemoryModule
from .module import AnomalyModule
from .patchcore import PatchCore
from .patchcore_module import PatchCoreModule
from .reconstruction_module import ReconstructionModule
from .vitmemad import ViTMemAE

__all__ = [
    "AnomalyMapGenerator", "AnomalyModule", "ConvAutoencoder", "CoordinateAttention", "FeatureMemAE", "MemoryModule",
    "PatchCore", "PatchCoreModule", "PatchSwap", "ReconstructionLoss", "ReconstructionModule",
    "TransposedConvDecoder", "ViTEncoder", "ViTMemAE",
]
