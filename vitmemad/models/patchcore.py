"""PatchCore (Roth et al., CVPR 2022) on frozen ImageNet EfficientNet-Lite0 features.

- Patch features: the stride-8 and stride-16 stages, each averaged over its 3x3 neighbourhood,
  upsampled to stride 8 and concatenated (``pretrained.FeatureExtractor``).
- Memory bank: every patch feature of the normal training images, reduced by greedy k-center
  coreset subsampling (``greedy_coreset``) to ``coreset_ratio`` of them. Distances for the selection
  are taken in a random projection to ``projection_dim`` dimensions, as in PatchCore.
- Score: each test patch's Euclidean distance to its nearest bank entry is the anomaly map (at
  stride 8; ``AnomalyModule`` upsamples and smooths it); the image score is the map's maximum.

There is no gradient training. ``collect`` stores the patch features of a training batch and
``build_bank`` (``fit_collected`` for ``CollectingModule``) turns them into the bank, a buffer saved in
checkpoints (its row count depends on the data, so loading resizes it to the checkpoint's).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .coreset import greedy_coreset
from .precision import float32_region
from .pretrained import FeatureExtractor

log = logging.getLogger(__name__)

#: elements of one (queries x bank) distance block; keeps nearest-neighbour search memory bounded
NN_BLOCK_ELEMENTS = 1 << 24


def nearest_distances(queries: torch.Tensor, bank: torch.Tensor,
                      block_elements: int = NN_BLOCK_ELEMENTS) -> torch.Tensor:
    """Euclidean distance (Q,) from each query (Q, D) to its nearest bank row (M, D), in blocks of queries."""
    if bank.numel() == 0:
        raise RuntimeError("the memory bank is empty")
    with float32_region(queries, bank) as (q, b):  # bf16 distances would merge into ties
        return _nearest_distances(q, b, block_elements)


def _nearest_distances(q: torch.Tensor, b: torch.Tensor, block_elements: int) -> torch.Tensor:
    b_sq = (b * b).sum(1)
    bt = b.t()
    step = max(1, block_elements // max(1, b.shape[0]))
    out = []
    for start in range(0, q.shape[0], step):
        chunk = q[start : start + step]
        # min_j |q - b_j|^2 = |q|^2 + min_j (|b_j|^2 - 2 q.b_j): one fused matmul, one pass for the min
        partial = torch.addmm(b_sq[None], chunk, bt, alpha=-2.0).amin(1)
        out.append((partial + (chunk * chunk).sum(1)).clamp_min(0).sqrt())
    return torch.cat(out)


class PatchCore(nn.Module):
    #: buffers whose shape comes from the data, not the config (checkpoint loading resizes them)
    VARIABLE_SHAPE_BUFFERS = ("memory_bank",)

    def __init__(
        self,
        out_indices: Sequence[int] = (2, 3),
        local_size: int = 3,
        equalize_layers: bool = True,
        coreset_ratio: float = 0.1,
        projection_dim: int | None = 128,
        max_bank: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not 0 < coreset_ratio <= 1:
            raise ValueError(f"model.coreset.ratio must be in (0, 1], got {coreset_ratio}")
        if projection_dim is not None and projection_dim < 1:
            raise ValueError(f"model.coreset.projection_dim must be >= 1 or null, got {projection_dim}")
        if max_bank is not None and max_bank < 1:
            raise ValueError(f"model.coreset.max_bank must be >= 1 or null, got {max_bank}")
        self.backbone = FeatureExtractor(out_indices, local_size, equalize_layers)
        self.coreset_ratio = float(coreset_ratio)
        self.projection_dim = projection_dim
        self.max_bank = max_bank
        self.seed = int(seed)
        self.register_buffer("memory_bank", torch.zeros(0, self.backbone.channels))
        self._collected: list[torch.Tensor] = []

    # ------------------------------------------------------------------ fitting
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> patch features (B, C, h, w)."""
        return self.backbone(images)

    @torch.no_grad()
    def collect(self, images: torch.Tensor) -> None:
        """Store the patch features of a batch of normal training images (on the CPU)."""
        feats = self.embed(images)
        self._collected.append(feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1]).float().cpu())

    @property
    def has_pending_features(self) -> bool:
        return bool(self._collected)

    def pending_features(self) -> torch.Tensor:
        return torch.cat(self._collected) if self._collected else torch.zeros(0, self.backbone.channels)

    @torch.no_grad()
    def build_bank(self, features: torch.Tensor | None = None) -> dict[str, Any]:
        """Coreset-subsample the collected (or given) patch features into ``memory_bank``; returns a summary."""
        features = self.pending_features() if features is None else features
        self._collected = []
        if features.shape[0] == 0:
            raise RuntimeError("PatchCore saw no training images: cannot build its memory bank")
        n = features.shape[0]
        k = max(1, int(round(self.coreset_ratio * n)))
        if self.max_bank is not None:
            k = min(k, int(self.max_bank))
        features = features.to(self.memory_bank.device)  # the selection runs where the model is
        if k >= n:
            bank = features
        else:
            generator = torch.Generator().manual_seed(self.seed)
            idx = greedy_coreset(features, k, self.projection_dim, generator)
            bank = features[idx.to(features.device)]
        self.memory_bank = bank.to(device=self.memory_bank.device, dtype=self.memory_bank.dtype).contiguous()
        log.info("PatchCore memory bank: %d of %d patch features (%.2f %%)", bank.shape[0], n, 100 * bank.shape[0] / n)
        return {"patches": n, "bank": int(bank.shape[0])}

    def fit_collected(self, features: torch.Tensor) -> dict[str, Any]:
        return self.build_bank(features)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        key = prefix + "memory_bank"
        if key in state_dict and state_dict[key].ndim == 2:  # the bank's row count comes from the data
            self.memory_bank = torch.empty_like(state_dict[key], device=self.memory_bank.device,
                                                dtype=self.memory_bank.dtype)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------ scoring
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor | None]:
        if self.memory_bank.shape[0] == 0:
            raise RuntimeError("PatchCore has an empty memory bank: fit it on normal images first (vitmemad.train)")
        feats = self.embed(images)
        b, c, h, w = feats.shape
        dist = nearest_distances(feats.permute(0, 2, 3, 1).reshape(-1, c), self.memory_bank).reshape(b, h, w)
        return {
            "reconstruction": None,
            "memory_weights": None,
            "anomaly_map": dist,
            "feature_error": dist.square() / c,  # mean squared distance per channel: the validation "loss"
        }
