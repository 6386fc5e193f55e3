"""The paper's model: ViT encoder -> memory module -> coordinate attention -> decoder (Figure 2).

The memory module and coordinate attention are switchable so that the four variants of the
paper's Table 6 (Base, +M, +CA, +M+CA) are the same class.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .coord_attention import CoordinateAttention
from .decoder import TransposedConvDecoder, num_upsampling
from .encoder import ViTEncoder
from .memory import MemoryModule


class ViTMemAE(nn.Module):
    def __init__(
        self,
        image_size: int = 384,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        use_memory: bool = True,
        memory_size: int = 100,
        memory_temperature: float = 1.0,
        memory_addressing: str = "cosine",
        memory_shrink_threshold: float | None = None,
        memory_init: str = "random",
        memory_position_weight: float = 0.0,
        memory_position_sigma: float = 1.0,
        use_coord_attention: bool = True,
        ca_reduction: int = 32,
        ca_residual: bool = False,
        decoder_channels: Sequence[int] = (512, 256, 128, 64, 32),
    ) -> None:
        super().__init__()
        num_upsampling(patch_size)  # the decoder's x2 layers must undo the patch embedding exactly
        self.encoder = ViTEncoder(image_size, patch_size, 3, embed_dim, depth, num_heads, mlp_ratio)
        self.memory = (
            MemoryModule(
                memory_size, embed_dim, memory_temperature, memory_addressing, memory_shrink_threshold, init=memory_init,
                position_weight=memory_position_weight, grid=(self.encoder.grid, self.encoder.grid),
                position_sigma=memory_position_sigma,
            )
            if use_memory
            else None
        )
        self.coord_attention = CoordinateAttention(embed_dim, ca_reduction, residual=ca_residual) if use_coord_attention else None
        self.decoder = TransposedConvDecoder(embed_dim, decoder_channels, 3, patch_size)
        # True during a memory warm-up: encoder features go straight to CA/decoder (see lightning_module).
        self.bypass_memory = False

    @torch.no_grad()
    def initialize_memory(self, x: torch.Tensor, generator: torch.Generator | None = None) -> bool:
        """Data-dependent memory initialisation from a batch (no-op unless ``init='features'`` and not done)."""
        if self.memory is None or self.bypass_memory or bool(self.memory.initialized):
            return False
        queries = self.encoder(x).flatten(2).transpose(1, 2)
        self.memory.initialize_from(queries, generator)
        return True

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor | None]:
        features = self.encoder(x)
        weights = None
        if self.memory is not None and not self.bypass_memory:
            features, weights = self.memory(features)
        if self.coord_attention is not None:
            features = self.coord_attention(features)
        return {"reconstruction": self.decoder(features), "memory_weights": weights}
