"""Memory module of normal patterns (paper sec. 3.2, eqs. 7-10; MemAE, Gong et al. 2019).

Every spatial position of the feature map is a query z. It addresses N learnable items m_i by
similarity, the softmax weights are sparsified by hard shrinkage with threshold lambda = 1/N
(eq. 10), L1-renormalised, and z_hat = w_hat M (eq. 9). An anomalous query can then only be
rebuilt from normal items, which is what makes anomalies reconstruct badly.

Addressing:
- ``cosine`` with ``temperature=1`` is the paper's literal formulation (eqs. 7-8). Cosine
  similarities lie in [-1, 1], so softmax over N items is nearly uniform (max/min weight <= e^2)
  and shrinkage keeps roughly half the items. A temperature < 1 sharpens it.
- ``dot`` is MemAE's addressing: the raw dot product z m_i^T, scaled by ``temperature``.

Initialisation: items start small and random (``init="random"``, MemAE's default) or, with
``init="features"``, as a random sample of the encoder's first training queries. From a random start
the rich get richer: on the demo textures only 3-8 of 100-500 items were ever the best match after
training, and normal patterns outside those few (short horizontal brick joints) were not
reconstructed. Starting from real queries keeps the items spread over the data, and
``restart_dead_items`` (the codebook-restart remedy of vector quantisation) moves items that stay
unused back onto current queries during training.

Position-aware addressing (``position_weight > 0``, not in the paper): each item also has a learned position
code u_i, and a query at grid position p adds ``position_weight * cos(e_p, u_i)`` to its content similarity,
where e_p is a Gaussian bump on the token grid (width ``position_sigma`` tokens), so cos(e_p, e_q) falls off with
the distance between p and q. Content-only addressing lets a defect that looks like normal content found
elsewhere (a dark hole in a bottle where the background is dark) be rebuilt from the items of that other place;
with the position term the items of the query's own place win unless the content is far from them. Items
initialised from features start with the code of the position they were sampled at; an item the data uses
everywhere can learn a flat code (textures), so nothing about alignment is assumed.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ADDRESSING = ("cosine", "dot")
INITS = ("random", "features")


def hard_shrink_relu(weights: torch.Tensor, threshold: float, eps: float = 1e-12) -> torch.Tensor:
    """Eq. 10 followed by L1 renormalisation: zero weights below ``threshold``, keep the rest."""
    shrunk = F.relu(weights - threshold) * weights / (torch.abs(weights - threshold) + eps)
    return F.normalize(shrunk, p=1, dim=-1)


class MemoryModule(nn.Module):
    def __init__(
        self,
        num_items: int,
        dim: int,
        temperature: float = 1.0,
        addressing: str = "cosine",
        shrink_threshold: float | None = None,
        eps: float = 1e-12,
        init: str = "random",
        position_weight: float = 0.0,
        grid: tuple[int, int] | None = None,
        position_sigma: float = 1.0,
    ) -> None:
        super().__init__()
        if init not in INITS:
            raise ValueError(f"memory.init must be one of {INITS}, got {init!r}")
        if addressing not in ADDRESSING:
            raise ValueError(f"memory.addressing must be one of {ADDRESSING}, got {addressing!r}")
        if num_items < 1:
            raise ValueError(f"memory.size must be >= 1, got {num_items}")
        if temperature <= 0:
            raise ValueError(f"memory.temperature must be > 0, got {temperature}")
        if position_weight < 0 or (position_weight > 0 and grid is None):
            raise ValueError(
                f"memory.position_weight must be >= 0 and needs the token grid of the model, got {position_weight}, grid {grid}"
            )
        if position_sigma <= 0:
            raise ValueError(f"memory.position_sigma must be > 0, got {position_sigma}")
        self.num_items = num_items
        self.dim = dim
        self.temperature = temperature
        self.addressing = addressing
        self.shrink_threshold = 1.0 / num_items if shrink_threshold is None else shrink_threshold
        self.eps = eps
        self.init = init
        self.items = nn.Parameter(torch.empty(num_items, dim))
        stdv = 1.0 / math.sqrt(dim)
        nn.init.uniform_(self.items, -stdv, stdv)
        # Saved with the weights, so a resumed run does not re-initialise from data.
        self.register_buffer("initialized", torch.tensor(init == "random"))
        self.position_weight = float(position_weight)
        if self.position_weight > 0:
            codes = gaussian_position_codes(grid, position_sigma)
            self.register_buffer("position_codes", codes)  # (HW, HW), unit rows
            self.item_positions = nn.Parameter(torch.empty(num_items, codes.shape[0]).uniform_(0.0, 1.0))
        # Running share of the addressing mass each item receives in training (for dead-item restarts).
        self.register_buffer("usage", torch.full((num_items,), 1.0 / num_items))
        self.usage_momentum = 0.9  # ~20 steps of memory: an item unused for that long counts as dead
        self._last_queries: torch.Tensor | None = None

    @torch.no_grad()
    def initialize_from(self, queries: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Set the items to a random sample of ``queries`` (..., C) (with replacement if too few)."""
        flat = queries.detach().reshape(-1, self.dim).to(self.items.dtype)
        n = flat.shape[0]
        if n >= self.num_items:
            idx = torch.randperm(n, generator=generator, device="cpu")[: self.num_items]
        else:
            idx = torch.randint(n, (self.num_items,), generator=generator, device="cpu")
        self.items.copy_(flat[idx.to(flat.device)])
        if self.position_weight > 0:  # each item starts at the position its query came from
            self.item_positions.copy_(self._code_of_query(idx.to(flat.device)))
        self.initialized.fill_(True)

    def _code_of_query(self, flat_index: torch.Tensor) -> torch.Tensor:
        """Position codes of queries picked by their index into (B, HW, C) queries flattened to (B*HW, C)."""
        return self.position_codes[flat_index % self.position_codes.shape[0]]

    def address(self, queries: torch.Tensor) -> torch.Tensor:
        """Softmax addressing weights (..., N) for queries (..., C), before shrinkage."""
        if self.addressing == "cosine":
            logits = F.normalize(queries, dim=-1) @ F.normalize(self.items, dim=-1).t()
        else:
            logits = queries @ self.items.t()
        if self.position_weight > 0:
            if queries.shape[-2] != self.position_codes.shape[0]:
                raise ValueError(
                    f"position-aware memory was built for {self.position_codes.shape[0]} token positions, "
                    f"got {queries.shape[-2]}"
                )
            affinity = self.position_codes @ F.normalize(self.item_positions, dim=-1).t()  # (HW, N)
            logits = logits + self.position_weight * affinity
        return torch.softmax(logits.float() / self.temperature, dim=-1).to(queries.dtype)

    def forward(self, feature_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) -> (reconstructed feature map (B, C, H, W), weights (B, H*W, N))."""
        b, c, h, w = feature_map.shape
        queries = feature_map.flatten(2).transpose(1, 2)  # (B, HW, C)
        weights = self.address(queries)
        if self.shrink_threshold > 0:
            weights = hard_shrink_relu(weights, self.shrink_threshold, self.eps)
        out = weights @ self.items  # (B, HW, C), eq. 9
        if self.training:
            with torch.no_grad():
                share = weights.detach().float().reshape(-1, self.num_items).mean(dim=0)
                self.usage.mul_(self.usage_momentum).add_(share.to(self.usage.dtype), alpha=1 - self.usage_momentum)
                self._last_queries = queries.detach()
        return out.transpose(1, 2).reshape(b, c, h, w), weights

    @torch.no_grad()
    def restart_dead_items(self, min_share: float, generator: torch.Generator | None = None) -> int:
        """Move items whose running usage share is below ``min_share / N`` onto recent queries.

        Returns how many items were restarted. Their usage is reset to the uniform share so they get
        time to attract queries before they can be restarted again.
        """
        if self._last_queries is None:
            return 0
        dead = (self.usage < min_share / self.num_items).nonzero().flatten()
        if dead.numel() == 0:
            return 0
        flat = self._last_queries.reshape(-1, self.dim).to(self.items.dtype)
        idx = torch.randint(flat.shape[0], (dead.numel(),), generator=generator, device="cpu").to(flat.device)
        self.items[dead] = flat[idx]
        if self.position_weight > 0:
            self.item_positions[dead] = self._code_of_query(idx)
        self.usage[dead] = 1.0 / self.num_items
        return int(dead.numel())

    def extra_repr(self) -> str:
        return (
            f"num_items={self.num_items}, dim={self.dim}, addressing={self.addressing}, "
            f"temperature={self.temperature}, shrink_threshold={self.shrink_threshold:.4g}, "
            f"position_weight={self.position_weight}"
        )


def gaussian_position_codes(grid: tuple[int, int], sigma: float) -> torch.Tensor:
    """(H*W, H*W) unit vectors, row p a Gaussian bump of width ``sigma`` tokens centred on position p (row-major,
    as ``flatten(2)`` orders tokens): cos(e_p, e_q) = exp(-|p - q|^2 / (4 sigma^2)) away from the border."""
    h, w = grid
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()], dim=1)
    codes = torch.exp(-torch.cdist(coords, coords).pow(2) / (2 * sigma**2))
    return F.normalize(codes, dim=-1)
