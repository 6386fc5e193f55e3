"""Transposed-convolution decoder (paper sec. 3.4).

Six transposed convolutions map the (B, D, H/16, W/16) feature map back to the image: four
upsample x2 (kernel 4, stride 2; 2^4 = 16) and two keep the size (kernel 3, stride 1). Every layer
but the last is followed by BatchNorm + ReLU; the last by tanh, matching inputs in [-1, 1].
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

NUM_UPSAMPLING = 4


class TransposedConvDecoder(nn.Module):
    def __init__(self, in_channels: int, channels: Sequence[int] = (512, 256, 128, 64, 32), out_channels: int = 3):
        super().__init__()
        channels = list(channels)
        if len(channels) != 5:
            raise ValueError(f"decoder.channels must list the 5 hidden widths of the 6 layers, got {channels}")
        widths = [in_channels, *channels, out_channels]
        layers: list[nn.Module] = []
        for i in range(6):
            upsample = i < NUM_UPSAMPLING
            conv = (
                nn.ConvTranspose2d(widths[i], widths[i + 1], kernel_size=4, stride=2, padding=1)
                if upsample
                else nn.ConvTranspose2d(widths[i], widths[i + 1], kernel_size=3, stride=1, padding=1)
            )
            layers.append(conv)
            if i < 5:
                layers += [nn.BatchNorm2d(widths[i + 1]), nn.ReLU(inplace=True)]
        layers.append(nn.Tanh())
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
