"""Convolutional autoencoder baseline in the style of L2-CAE (Bergmann et al., 2018).

Strided convolutions shrink the image 16x, a full-size convolution squeezes it into a latent vector
of ``latent_dim`` (100 in the original), and a mirrored decoder with a tanh output rebuilds it.
Trained by the same pipeline and scored the same way as the ViT model (paper Table 3, "L2-CAE").
"""
from __future__ import annotations

import torch
from torch import nn


def _conv(cin: int, cout: int, k: int, s: int, p: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, s, p), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, inplace=True)]


def _deconv(cin: int, cout: int, k: int, s: int, p: int) -> list[nn.Module]:
    return [nn.ConvTranspose2d(cin, cout, k, s, p), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, inplace=True)]


class ConvAutoencoder(nn.Module):
    def __init__(self, image_size: int = 128, latent_dim: int = 100, width: int = 32) -> None:
        super().__init__()
        if image_size % 16:
            raise ValueError(f"image_size must be a multiple of 16 for the CAE, got {image_size}")
        w = width
        bottom = image_size // 16
        self.encoder = nn.Sequential(
            *_conv(3, w, 4, 2, 1),
            *_conv(w, w, 4, 2, 1),
            *_conv(w, w, 3, 1, 1),
            *_conv(w, 2 * w, 4, 2, 1),
            *_conv(2 * w, 2 * w, 3, 1, 1),
            *_conv(2 * w, 4 * w, 4, 2, 1),
            *_conv(4 * w, 2 * w, 3, 1, 1),
            *_conv(2 * w, w, 3, 1, 1),
            nn.Conv2d(w, latent_dim, bottom, 1, 0),  # whole-map kernel -> (B, latent, 1, 1)
        )
        self.decoder = nn.Sequential(
            *_deconv(latent_dim, w, bottom, 1, 0),
            *_deconv(w, 2 * w, 3, 1, 1),
            *_deconv(2 * w, 4 * w, 3, 1, 1),
            *_deconv(4 * w, 2 * w, 4, 2, 1),
            *_deconv(2 * w, 2 * w, 3, 1, 1),
            *_deconv(2 * w, w, 4, 2, 1),
            *_deconv(w, w, 3, 1, 1),
            *_deconv(w, w, 4, 2, 1),
            nn.ConvTranspose2d(w, 3, 4, 2, 1),
            nn.Tanh(),
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor | None]:
        return {"reconstruction": self.decoder(self.encoder(x)), "memory_weights": None}
