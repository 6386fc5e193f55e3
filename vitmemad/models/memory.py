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
- ``euclidean``: minus the squared distance ||z - m_i||^2, scaled by ``temperature`` (which then carries the
  features' scale); with ``readout="topk", top_k=1`` it reads out the nearest item, as a PatchCore bank does.

Initialisation: items start small and random (``init="random"``, MemAE's default), with
``init="features"`` as a random sample of the encoder's first training queries, or with ``init="coreset"`` as a
greedy k-center coreset of the queries of every training image (``vitmemad.models.coreset``), which keeps the
rare normal patterns a random sample misses. From a random start
the rich get richer: on the demo textures only 3-8 of 100-500 items were ever the best match after
training, and normal patterns outside those few (short horizontal brick joints) were not
reconstructed. Starting from real queries keeps the items spread over the data, and
``restart_dead_items`` (the codebook-restart remedy of vector quantisation) moves items that stay
unused back onto current queries during training.

Read-out and item updates (vector quantisation's remedies for a memory that blends instead of recalling):
- ``readout="soft"`` is the paper's (softmax, shrinkage, eq. 9); ``readout="topk"`` keeps only the ``top_k``
  largest softmax weights of each query, renormalised, so a query is rebuilt from at most k items
  (``top_k=1``: the nearest item, as a PatchCore bank reads out). ``straight_through`` then passes the read-out's
  gradient to the queries unchanged (VQ-VAE's estimator), so an encoder in front keeps learning.
- ``update="gradient"`` learns the items by back-propagation (the paper); ``update="ema"`` moves each item
  towards the mean of the training queries it was assigned (VQ-VAE's EMA codebook), so items stay on the data
  instead of drifting to wherever the decoder likes them; ``update="frozen"`` keeps them where ``init`` put them.
- ``groups=G`` splits each token's C channels into G parts of C/G that are read out one by one from the same N
  items of width C/G (product quantisation with a shared codebook). A token read out as its nearest item is then
  one of N^G combinations of normal parts instead of one of N items: G log2 N bits instead of log2 N. Every part
  still passes through the memory; the usage, EMA and restart statistics count each part as one query.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .coreset import greedy_coreset
from .precision import float32_region

ADDRESSING = ("cosine", "dot", "euclidean")
INITS = ("random", "features", "coreset")
READOUTS = ("soft", "topk")
UPDATES = ("gradient", "ema", "frozen")
#: random projection for the coreset's distances (PatchCore's speed-up), used when the items are wider
CORESET_PROJECTION = 128


def hard_shrink_relu(weights: torch.Tensor, threshold: float, eps: float = 1e-12) -> torch.Tensor:
    """Eq. 10 followed by L1 renormalisation: zero weights below ``threshold``, keep the rest."""
    shrunk = F.relu(weights - threshold) * weights / (torch.abs(weights - threshold) + eps)
    return F.normalize(shrunk, p=1, dim=-1)


def keep_top_k(weights: torch.Tensor, k: int) -> torch.Tensor:
    """Zero all but the ``k`` largest weights of each row and L1-renormalise (``k=1``: a one-hot nearest item)."""
    top = weights.topk(k, dim=-1)
    return F.normalize(torch.zeros_like(weights).scatter(-1, top.indices, top.values), p=1, dim=-1)


def encoder_queries(encode: Callable[[torch.Tensor], torch.Tensor],
                    images: torch.Tensor | Iterable[torch.Tensor]) -> torch.Tensor:
    """The (M, C) memory queries of one batch of images or of every batch of an iterable; ``encode`` maps a batch
    to the (B, C, h, w) feature map the memory reads."""
    def flat(feature_map: torch.Tensor) -> torch.Tensor:  # each map is freed once flattened
        return feature_map.flatten(2).transpose(1, 2).reshape(-1, feature_map.shape[1])

    batches = [images] if isinstance(images, torch.Tensor) else images
    return torch.cat([flat(encode(x)) for x in batches])


class MemoryModule(nn.Module):
    def __init__(
        self,
        size: int,
        dim: int,
        temperature: float = 1.0,
        addressing: str = "cosine",
        shrink_threshold: float | None = None,
        eps: float = 1e-12,
        init: str = "random",
        readout: str = "soft",
        top_k: int = 1,
        straight_through: bool = False,
        update: str = "gradient",
        ema_decay: float = 0.99,
        groups: int = 1,
    ) -> None:
        super().__init__()
        options = (("init", init, INITS), ("addressing", addressing, ADDRESSING), ("readout", readout, READOUTS),
                   ("update", update, UPDATES))
        for key, value, choices in options:
            if value not in choices:
                raise ValueError(f"memory.{key} must be one of {choices}, got {value!r}")
        if size < 1:
            raise ValueError(f"memory.size must be >= 1, got {size}")
        if not 1 <= top_k <= size:
            raise ValueError(f"memory.top_k must be in [1, memory.size={size}], got {top_k}")
        if not 0 <= ema_decay < 1:
            raise ValueError(f"memory.ema_decay must be in [0, 1), got {ema_decay}")
        if groups < 1 or dim % groups:
            raise ValueError(f"memory.groups must be >= 1 and divide memory.dim={dim}, got {groups}")
        num_items = int(size)
        if temperature <= 0:
            raise ValueError(f"memory.temperature must be > 0, got {temperature}")
        self.num_items = num_items
        self.dim = dim
        self.groups = int(groups)
        self.item_dim = dim // self.groups  # the width of an item and of a query (one part of a token)
        self.temperature = temperature
        self.addressing = addressing
        self.shrink_threshold = 1.0 / num_items if shrink_threshold is None else shrink_threshold
        self.eps = eps
        self.init = init
        self.readout = readout
        self.top_k = int(top_k)
        self.straight_through = bool(straight_through)
        self.update = update
        self.ema_decay = float(ema_decay)
        self.items = nn.Parameter(torch.empty(num_items, self.item_dim), requires_grad=update == "gradient")
        stdv = 1.0 / math.sqrt(self.item_dim)
        nn.init.uniform_(self.items, -stdv, stdv)
        # Saved with the weights, so a resumed run does not re-initialise from data.
        self.register_buffer("initialized", torch.tensor(init == "random"))
        # Running share of the addressing mass each item receives in training (for dead-item restarts).
        self.register_buffer("usage", torch.full((num_items,), 1.0 / num_items))
        self.usage_momentum = 0.9  # ~20 steps of memory: an item unused for that long counts as dead
        self._last_queries: torch.Tensor | None = None

    @torch.no_grad()
    def initialize_from(self, queries: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Set the items to a random sample (``init="features"``) or a k-center coreset (``init="coreset"``) of
        ``queries`` (..., C), each row split into ``groups`` parts; a random sample with replacement if there are
        fewer queries than items."""
        flat = queries.detach().reshape(-1, self.item_dim).to(self.items.dtype)
        n = flat.shape[0]
        if n >= self.num_items and self.init == "coreset":
            projection = CORESET_PROJECTION if self.item_dim > CORESET_PROJECTION else None
            idx = greedy_coreset(flat, self.num_items, projection, generator).cpu()
        elif n >= self.num_items:
            idx = torch.randperm(n, generator=generator, device="cpu")[: self.num_items]
        else:
            idx = torch.randint(n, (self.num_items,), generator=generator, device="cpu")
        self.items.copy_(flat[idx.to(flat.device)])
        self.initialized.fill_(True)

    def address(self, queries: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """Softmax addressing weights (..., N) for queries (..., C / groups), before shrinkage."""
        items = self.items if items is None else items
        if self.addressing == "cosine":
            logits = F.normalize(queries, dim=-1) @ F.normalize(items, dim=-1).t()
        elif self.addressing == "dot":
            logits = queries @ items.t()
        else:  # the nearest item by squared distance has the largest logit, as in a PatchCore bank
            logits = 2 * queries @ items.t() - queries.square().sum(-1, keepdim=True) - items.square().sum(-1)
        return torch.softmax(logits.float() / self.temperature, dim=-1).to(queries.dtype)

    def forward(self, feature_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) -> (the decoder's input (B, C, H, W), weights (B, H*W*groups, N)): the read-out, with
        ``straight_through`` carrying the queries' gradient."""
        readout, weights = self.read(feature_map)
        if self.straight_through:
            readout = readout + feature_map - feature_map.detach()
        return readout, weights

    def plain_readout(self, feature_map: torch.Tensor, decoder_input: torch.Tensor) -> torch.Tensor:
        """The read-out w M, with its own gradient only, from ``forward``'s output.

        A loss on the read-out (the codebook term) must see this: through the straight-through path its gradient
        would push the queries away from their items."""
        if not self.straight_through:
            return decoder_input
        return decoder_input - feature_map + feature_map.detach()

    def read(self, feature_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) -> (read-out w M (B, C, H, W), weights (B, H*W*groups, N)); in training also the usage and EMA
        updates."""
        b, c, h, w = feature_map.shape
        with float32_region(feature_map) as (feature_map,):  # weights ~1/N: below bfloat16's resolution
            # (B, HW * groups, C / groups): the parts of a token are consecutive queries
            queries = feature_map.flatten(2).transpose(1, 2).reshape(b, h * w * self.groups, self.item_dim)
            # EMA items change in place after this read-out while backward still needs the values used here: a copy
            items = self.items.detach().clone() if self.update == "ema" and self.training else self.items
            weights = self.address(queries, items)
            if self.readout == "topk":
                weights = keep_top_k(weights, self.top_k)
            elif self.shrink_threshold > 0:
                weights = hard_shrink_relu(weights, self.shrink_threshold, self.eps)
            out = (weights @ items).reshape(b, h * w, c)  # eq. 9, the parts joined again
        if self.training:
            with torch.no_grad():
                share = weights.detach().float().reshape(-1, self.num_items).mean(dim=0)
                self.usage.mul_(self.usage_momentum).add_(share.to(self.usage.dtype), alpha=1 - self.usage_momentum)
                self._last_queries = queries.detach()
                if self.update == "ema":
                    self._ema_step(queries.detach().float(), weights.detach().float())
        return out.transpose(1, 2).reshape(b, c, h, w), weights

    @torch.no_grad()
    def _ema_step(self, queries: torch.Tensor, weights: torch.Tensor) -> None:
        """Move each item towards the weighted mean of the queries that addressed it in this batch; items no query
        addressed stay put. Sums are reduced over DDP ranks, so every rank keeps the same items."""
        flat_w = weights.reshape(-1, self.num_items)
        mass, sums = flat_w.sum(dim=0), flat_w.t() @ queries.reshape(-1, self.item_dim)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(mass)
            torch.distributed.all_reduce(sums)
        hit = mass > self.eps
        target = sums[hit] / mass[hit, None]
        moved = self.ema_decay * self.items[hit].float() + (1 - self.ema_decay) * target
        self.items[hit] = moved.to(self.items.dtype)

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
        flat = self._last_queries.reshape(-1, self.item_dim).to(self.items.dtype)
        idx = torch.randint(flat.shape[0], (dead.numel(),), generator=generator, device="cpu").to(flat.device)
        self.items[dead] = flat[idx]
        self.usage[dead] = 1.0 / self.num_items
        return int(dead.numel())

    def extra_repr(self) -> str:
        return (
            f"num_items={self.num_items}, dim={self.dim}, addressing={self.addressing}, "
            f"temperature={self.temperature}, shrink_threshold={self.shrink_threshold:.4g}, readout={self.readout}"
            + (f", top_k={self.top_k}" if self.readout == "topk" else "")
            + (", straight_through" if self.straight_through else "") + f", update={self.update}"
            + (f", groups={self.groups}" if self.groups > 1 else "")
        )

