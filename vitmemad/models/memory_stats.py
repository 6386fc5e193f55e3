"""Diagnostics of the memory module's addressing over a set of images (``vitmemad.callbacks.memory``).

The memory module returns the shrunk, renormalised weights (B, HW * groups, N); every spatial position (each of
its ``groups`` parts) is one query.
Over all queries this accumulates, per memory item:

- ``usage``: its mean addressing weight (the N values sum to 1) -- the usage histogram;
- ``top1_usage``: the fraction of queries for which it has the largest weight;

and overall:

- ``mean_entropy``: mean over queries of -sum_i w_i log w_i (nats; the entropy loss of eq. 14; log N is uniform);
- ``unused_fraction``: the fraction of items whose weight is 0 for every query (never used: hard
  shrinkage zeroes weights below 1/N);
- ``never_top1_fraction``: the fraction of items that are never any query's largest weight;
- ``mean_active_items``: mean number of items with a non-zero weight per query;
- ``used_fraction``: the fraction of items that receive at least 0.1/N of the addressing mass; ``collapsed`` is
  true when that is below 10 % (a few items take nearly all the mass: rich-get-richer addressing);
- ``feature_relative_error``: ||z_hat - z||^2 / ||z||^2 over all queries, how much of the encoder's feature
  map the memory's output loses (0 = passes it unchanged). Blended, nearly uniform addressing shows up here
  as a large loss even when every item is in use;
- ``readout_image_share`` (and ``feature_image_share`` for the encoder's features): the share of the read-out's
  energy that differs between images at the same position and channel, sum Var_images / sum E_images[x^2]. Near 0,
  the decoder gets nearly the same input for every image. A read-out can keep its items in use and match the
  features (a low ``feature_relative_error``) and still carry little of the image, when the encoder's features
  themselves stopped depending on it. Whether the decoder still draws each image is the reconstruction's own
  diagnostic (``metrics.json`` ``reconstruction``, ``vitmemad.models.recon_stats``): a decoder can amplify small
  differences.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .memory import MemoryModule
from .recon_stats import ReconstructionFit

#: an item is in use when it receives at least this share of the uniform 1/N of the addressing mass
USED_SHARE = 0.1
#: the memory has collapsed when fewer than this fraction of its items are in use
COLLAPSED_BELOW = 0.1


class MemoryUsage:
    def __init__(self, num_items: int, eps: float = 1e-12) -> None:
        self.num_items = int(num_items)
        self.eps = eps
        self.reset()

    def reset(self) -> None:
        n = self.num_items
        self.weight_sum = torch.zeros(n, dtype=torch.float64)
        self.nonzero = torch.zeros(n, dtype=torch.float64)
        self.top1 = torch.zeros(n, dtype=torch.float64)
        self.totals = torch.zeros(3, dtype=torch.float64)  # queries, entropy, active items
        self.features = ReconstructionFit()  # the features z against the read-out z_hat, image by image

    def update(self, weights: torch.Tensor, queries: torch.Tensor | None = None,
               output: torch.Tensor | None = None) -> None:
        """``weights`` (B, Q, N); ``queries`` and ``output``: the features and read-out, image first (B, ...)."""
        w = weights.detach().float().reshape(-1, self.num_items)
        if queries is not None and output is not None:
            self.features.update(queries, output)
        self.weight_sum += w.sum(0).double().cpu()
        active = w > 0
        self.nonzero += active.sum(0).double().cpu()
        self.top1 += torch.bincount(w.argmax(-1), minlength=self.num_items).double().cpu()
        entropy = -(w * torch.log(w + self.eps)).sum(-1)
        self.totals += torch.tensor(
            [w.shape[0], float(entropy.double().sum()), float(active.sum())], dtype=torch.float64)

    def _sync(self) -> None:
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            packed = torch.cat([self.weight_sum, self.nonzero, self.top1, self.totals])
            if dist.get_backend() == "nccl":
                packed = packed.cuda()
            dist.all_reduce(packed)
            packed = packed.cpu()
            n = self.num_items
            self.weight_sum, self.nonzero = packed[:n], packed[n : 2 * n]
            self.top1, self.totals = packed[2 * n : 3 * n], packed[3 * n :]

    def compute(self) -> dict[str, Any] | None:
        self._sync()
        queries = float(self.totals[0])
        if queries == 0:
            return None
        usage = self.weight_sum / queries
        used_fraction = float((usage >= USED_SHARE / self.num_items).double().mean())
        f = self.features.figures() or {}  # reduces its own sums over the ranks

        def ratio(num: str, den: str) -> float | None:
            return f[num] / f[den] if f.get(num) is not None and f.get(den) else None

        return {
            "num_items": self.num_items,
            "used_fraction": used_fraction,
            "collapsed": used_fraction < COLLAPSED_BELOW,
            "num_queries": int(queries),
            "mean_entropy": float(self.totals[1]) / queries,
            "max_entropy": math.log(self.num_items),
            "unused_fraction": float((self.nonzero == 0).double().mean()),
            "never_top1_fraction": float((self.top1 == 0).double().mean()),
            "mean_active_items": float(self.totals[2]) / queries,
            "feature_relative_error": ratio("error", "energy"),
            "feature_image_share": ratio("spread", "energy"),
            "readout_image_share": ratio("spread_hat", "energy_hat"),
            "usage": [round(float(v), 8) for v in usage],
            "top1_usage": [round(float(v), 8) for v in self.top1 / queries],
        }


class MemoryUsageHook:
    """Collects ``MemoryUsage`` from every forward of the model's memory module while attached."""

    def __init__(self, model: nn.Module) -> None:
        modules = [m for m in model.modules() if isinstance(m, MemoryModule)]
        self.usage = MemoryUsage(modules[0].num_items) if modules else None
        self._handles = [m.register_forward_hook(self._hook) for m in modules[:1]]

    def _hook(self, module: nn.Module, inputs: Any, output: tuple[torch.Tensor, torch.Tensor]) -> None:
        assert self.usage is not None
        self.usage.update(output[1], inputs[0], output[0])

    def detach(self) -> dict[str, Any] | None:
        for h in self._handles:
            h.remove()
        self._handles = []
        return self.usage.compute() if self.usage is not None else None
