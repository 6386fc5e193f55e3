"""The floor a reconstruction model must beat: every image "reconstructed" as the mean normal training image.

It learns nothing about an image, yet on a category whose objects are aligned and lit alike its reconstruction
error already marks much of what differs from the usual (the L2 + SSIM map of ``experiment=cpu_real`` on the mean
bottle gives 0.92 / 0.90 / 0.75 image AUROC / pixel AUROC / PRO), and on a dark background with a bright part it
marks the part. A trained model whose figures or normal-image error are no better than this one's has learnt
nothing from the images (docs/results.md). Fitted in one epoch by ``CollectingModule``; the mean is the buffer
``mean_image``, saved in the checkpoint with the number of images it averages.
"""
from __future__ import annotations

import torch
from torch import nn


class MeanImage(nn.Module):
    def __init__(self, image_size: int) -> None:
        super().__init__()
        self.image_size = int(image_size)
        self.register_buffer("mean_image", torch.zeros(3, self.image_size, self.image_size))
        self.register_buffer("images_seen", torch.tensor(0, dtype=torch.long))
        self._sum: torch.Tensor | None = None
        self._count = 0

    @torch.no_grad()
    def collect(self, images: torch.Tensor) -> None:
        """Add a batch of normal training images (B, 3, S, S) to the running sum (float64, on the CPU)."""
        self._check_size(images)
        batch_sum = images.detach().double().sum(0).cpu()
        self._sum = batch_sum if self._sum is None else self._sum + batch_sum
        self._count += images.shape[0]

    @property
    def has_pending_features(self) -> bool:
        return self._count > 0

    def pending_features(self) -> torch.Tensor:
        """One row: the flattened sum of the collected images, then their count (rows of DDP ranks add up)."""
        if self._sum is None:
            return torch.zeros(0, 3 * self.image_size ** 2 + 1, dtype=torch.float64)
        return torch.cat([self._sum.flatten(), torch.tensor([float(self._count)], dtype=torch.float64)])[None]

    @torch.no_grad()
    def fit_collected(self, features: torch.Tensor) -> dict[str, int]:
        """The mean image of all collected images (``features``: rows of ``pending_features``)."""
        self._sum, self._count = None, 0
        total = features.sum(0)
        count = int(total[-1])
        if count == 0:
            raise RuntimeError("MeanImage saw no training images: cannot compute the mean image")
        mean = (total[:-1] / count).reshape(self.mean_image.shape)
        self.mean_image.copy_(mean.to(self.mean_image))
        self.images_seen.fill_(count)
        return {"images": count}

    def _check_size(self, images: torch.Tensor) -> None:
        if tuple(images.shape[1:]) != tuple(self.mean_image.shape):
            size = self.image_size
            raise ValueError(f"MeanImage of size {size} got images of shape {tuple(images.shape[1:])}; "
                             f"expected (3, {size}, {size}) (model.net.image_size = data.image_size)")

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor | None]:
        if int(self.images_seen) == 0:
            raise RuntimeError("MeanImage has no mean image yet: fit it on normal images first (vitmemad.train)")
        self._check_size(images)
        reconstruction = self.mean_image.to(images.dtype)[None].expand(images.shape[0], -1, -1, -1)
        return {"reconstruction": reconstruction, "memory_weights": None}
