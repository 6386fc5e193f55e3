"""Does a reconstruction follow its image? Over a set of images x with reconstructions x_hat:

- ``r2``: 1 - sum |x - x_hat|^2 / sum |x - mean(x)|^2, the coefficient of determination of the reconstruction,
  with mean(x) the per-pixel mean of the same images. At or below 0 the model does no better than drawing that
  mean image for every input: it has learnt nothing the mean image does not know, and its anomaly map is the
  mean-image floor's (``model=mean_image``) or worse, however its memory looks. A reconstruction that copies
  every input gets 1.
- ``image_share``: sum Var_images(x_hat) / sum Var_images(x), how much the reconstructions differ between images
  against how much the images do (0: one image drawn for all of them).

metrics.json ``reconstruction`` gives both over the normal test images; ``val/recon_r2`` is logged at every
validation epoch. Sums only, in float64, reduced over DDP ranks. The memory's diagnostics keep the same sums for
its features and read-out (``memory_stats``).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


class ReconstructionFit:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums: torch.Tensor | None = None  # (2, elements of one image): sum over images of x, of x_hat
        self.totals = torch.zeros(4, dtype=torch.float64)  # images, sum x^2, sum x_hat^2, sum |x - x_hat|^2

    @torch.no_grad()
    def update(self, images: torch.Tensor, reconstructions: torch.Tensor) -> None:
        if images.shape[0] == 0:
            return
        x, x_hat = images.detach().double().flatten(1), reconstructions.detach().double().flatten(1)
        sums = torch.stack([x.sum(0), x_hat.sum(0)])
        self.sums = sums if self.sums is None else self.sums + sums
        self.totals += torch.tensor([x.shape[0], float(x.pow(2).sum()), float(x_hat.pow(2).sum()),
                                     float((x - x_hat).pow(2).sum())], dtype=torch.float64, device=x.device).cpu()

    def _sync(self, device: torch.device) -> None:
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1) or self.sums is None:
            return
        packed = torch.cat([self.totals.to(device), self.sums.flatten()])
        dist.all_reduce(packed)
        self.totals, self.sums = packed[:4].cpu(), packed[4:].reshape(self.sums.shape)

    def figures(self) -> dict[str, Any] | None:
        """The sums behind the figures (reduced over DDP ranks; call once per set): ``count`` images,
        ``energy`` sum x^2 and ``energy_hat`` sum x_hat^2, ``error`` sum |x - x_hat|^2, and ``spread`` /
        ``spread_hat``, sum over elements of the variance between images times their count (None for one image).
        None without images."""
        if self.sums is None:
            return None
        self._sync(self.sums.device)
        n = float(self.totals[0])
        spreads = [max(0.0, float(self.totals[1 + i]) - float(self.sums[i].pow(2).sum()) / n) if n >= 2 else None
                   for i in range(2)]
        return {"count": int(n), "energy": float(self.totals[1]), "energy_hat": float(self.totals[2]),
                "error": float(self.totals[3]), "spread": spreads[0], "spread_hat": spreads[1]}

    def compute(self) -> dict[str, Any] | None:
        """None without images (or with only one, or identical ones: no spread to explain)."""
        f = self.figures()
        if f is None or not f["spread"]:
            return None
        return {"r2": 1.0 - f["error"] / f["spread"], "image_share": f["spread_hat"] / f["spread"],
                "num_images": f["count"]}
