"""Transposed-convolution decoder (paper sec. 3.4).

Six transposed convolutions map the (B, D, H/16, W/16) feature map back to the image: four
upsample x2 (kernel 4, stride 2; 2^4 = 16) and two keep the size (kernel 3, stride 1). Every layer
but the last is followed by BatchNorm + ReLU; the last by tanh, matching inputs in [-1, 1].

Another patch size (an extension, `model.net.encoder.patch_size`) keeps the six layers and upsamples in
the first log2(patch) of them, so a patch of 8 gives three x2 layers and three that keep the size.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

NUM_LAYERS = 6
PAPER_PATCH_SIZE = 16


def num_upsampling(patch_size: int) -> int:
    """x2 layers that undo a patch embedding of ``patch_size`` (a power of two, 2 to 2^NUM_LAYERS)."""
    steps = patch_size.bit_length() - 1
    if patch_size < 2 or patch_size != 1 << steps or steps > NUM_LAYERS:
        raise ValueError(
            f"model.net.encoder.patch_size must be a power of two from 2 to {1 << NUM_LAYERS}, got {patch_size}"
        )
    return steps


class TransposedConvDecoder(nn.Module):
    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int] = (512, 256, 128, 64, 32),
        out_channels: int = 3,
        patch_size: int = PAPER_PATCH_SIZE,
    ):
        super().__init__()
        upsampling = num_upsampling(patch_size)
        self.patch_size = patch_size
        channels = list(channels)
        if len(channels) != 5:
            raise ValueError(f"decoder.channels must list the 5 hidden widths of the 6 layers, got {channels}")
        widths = [in_channels, *channels, out_channels]
        layers: list[nn.Module] = []
        for i in range(NUM_LAYERS):
            upsample = i < upsampling
            conv = (
                nn.ConvTranspose2d(widths[i], widths[i + 1], kernel_size=4, stride=2, padding=1)
                if upsample
                else nn.ConvTranspose2d(widths[i], widths[i + 1], kernel_size=3, stride=1, padding=1)
            )
            layers.append(conv)
            if i < NUM_LAYERS - 1:
                layers += [nn.BatchNorm2d(widths[i + 1]), nn.ReLU(inplace=True)]
        layers.append(nn.Tanh())
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
