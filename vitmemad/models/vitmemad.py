"""The paper's model: ViT encoder -> memory module -> coordinate attention -> decoder (Figure 2).

The model is assembled from its parts (``conf/model/vitmemad_*.yaml`` instantiates each one); the memory module
and coordinate attention may be None, which gives the four variants of the paper's Table 6 (Base, +M, +CA, +M+CA)
with one class.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .coord_attention import CoordinateAttention
from .decoder import TransposedConvDecoder
from .encoder import ViTEncoder
from .memory import MemoryModule, encoder_queries
from .parts import check_widths


class ViTMemAE(nn.Module):
    def __init__(
        self,
        encoder: ViTEncoder,
        decoder: TransposedConvDecoder,
        memory: MemoryModule | None = None,
        coord_attention: CoordinateAttention | None = None,
    ) -> None:
        super().__init__()
        if decoder.patch_size != encoder.patch_size:
            raise ValueError(f"the decoder undoes patches of {decoder.patch_size} px, the encoder makes "
                             f"{encoder.patch_size} px patches")
        check_widths(encoder.embed_dim, memory=memory, coord_attention=coord_attention)
        self.encoder = encoder
        self.memory = memory
        self.coord_attention = coord_attention
        self.decoder = decoder
        # True during a memory warm-up: encoder features go straight to CA/decoder (vitmemad.callbacks.memory).
        self.bypass_memory = False

    @torch.no_grad()
    def initialize_memory(self, images: torch.Tensor | Iterable[torch.Tensor],
                          generator: torch.Generator | None = None) -> bool:
        """Data-dependent memory start from a batch, or every batch of an iterable (``init='coreset'``); a no-op
        unless the memory's ``init`` needs data and it has not started yet."""
        if self.memory is None or self.bypass_memory or bool(self.memory.initialized):
            return False
        self.memory.initialize_from(encoder_queries(self.encoder, images), generator)
        return True

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor | None]:
        features = self.encoder(x)
        weights = queries = readout = None
        if self.memory is not None and not self.bypass_memory:
            queries = features
            features, weights = self.memory(queries)
            readout = self.memory.plain_readout(queries, features)  # what the memory's loss sees
        out = {"memory_weights": weights, "memory_queries": queries, "memory_readout": readout}
        if self.coord_attention is not None:
            features = self.coord_attention(features)
        return {"reconstruction": self.decoder(features), **out}
