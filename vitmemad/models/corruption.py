"""Training-time input corruption (a denoising objective): the model sees a corrupted image and is asked to
rebuild the clean one.

A reconstruction model that generalises too well also rebuilds defects. On MVTec bottle the ViT rebuilt large
breaks (a dark hole where glass should be) because dark background tokens exist elsewhere in every normal image
and the memory addresses by content, not by place. Pasting rectangles cut from *other places* of normal images
creates exactly that kind of misplaced-but-normal-looking content, and the loss (against the clean image) teaches
the model to replace it with what belongs there. Nothing about a category is assumed: the pasted content is the
category's own normal content, so the same setting applies to textures and objects.
"""
from __future__ import annotations

import torch

class PatchSwap:
    """Paste ``1..max_patches`` rectangles, each cut from a random image of the batch at a random place, into
    a random place of an image; each image is corrupted with probability ``probability``.

    Rectangle sides are drawn uniformly in ``[min_size, max_size]`` times the image side. Uses the global torch
    RNG, so it is as deterministic as the rest of training under a fixed seed.
    """

    def __init__(self, probability: float = 0.5, max_patches: int = 3, min_size: float = 0.05, max_size: float = 0.3):
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"corruption.probability must be in [0, 1], got {probability}")
        if max_patches < 1:
            raise ValueError(f"corruption.max_patches must be >= 1, got {max_patches}")
        if not 0.0 < min_size <= max_size <= 1.0:
            raise ValueError(f"corruption sizes need 0 < min_size <= max_size <= 1, got {min_size}, {max_size}")
        self.probability, self.max_patches = probability, max_patches
        self.min_size, self.max_size = min_size, max_size

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> a corrupted copy; the input is not modified."""
        out = images.clone()
        b, _, h, w = images.shape
        for i in range(b):
            if torch.rand(()) >= self.probability:
                continue
            for _ in range(int(torch.randint(1, self.max_patches + 1, ()))):
                ph = max(1, int(h * float(torch.empty(()).uniform_(self.min_size, self.max_size))))
                pw = max(1, int(w * float(torch.empty(()).uniform_(self.min_size, self.max_size))))
                src = int(torch.randint(b, ()))
                sy, sx = int(torch.randint(h - ph + 1, ())), int(torch.randint(w - pw + 1, ()))
                dy, dx = int(torch.randint(h - ph + 1, ())), int(torch.randint(w - pw + 1, ()))
                out[i, :, dy : dy + ph, dx : dx + pw] = images[src, :, sy : sy + ph, sx : sx + pw]
        return out
