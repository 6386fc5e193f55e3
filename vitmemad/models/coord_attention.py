"""Coordinate attention (Hou et al., CVPR 2021; paper sec. 3.3), shape-preserving.

Pools along each spatial axis separately so the channel attention keeps positional information:
a shared 1x1 conv encodes the concatenated (H + W) descriptors, then two 1x1 convs give the
per-row and per-column gates that re-weight the input.

Hou et al. use CA inside residual blocks, where the block's skip connection keeps the input; here CA
stands alone between the memory and the decoder, so gates near 0 delete information for good.
``residual=True`` returns x + x * gates instead (an identity path around the re-weighting).
"""
from __future__ import annotations

import torch
from torch import nn


class CoordinateAttention(nn.Module):
    def __init__(self, channels: int, reduction: int = 32, min_hidden: int = 8, residual: bool = False) -> None:
        super().__init__()
        self.residual = residual
        self.channels = channels
        if reduction < 1:
            raise ValueError(f"coord_attention.reduction must be >= 1, got {reduction}")
        hidden = max(min_hidden, channels // reduction)
        self.encode = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1),
            nn.BatchNorm2d(hidden),
            nn.Hardswish(),
        )
        self.gate_h = nn.Conv2d(hidden, channels, kernel_size=1)
        self.gate_w = nn.Conv2d(hidden, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        pooled_h = x.mean(dim=3, keepdim=True)  # (B, C, H, 1): average over the width
        pooled_w = x.mean(dim=2, keepdim=True).transpose(2, 3)  # (B, C, W, 1)
        y = self.encode(torch.cat([pooled_h, pooled_w], dim=2))
        y_h, y_w = torch.split(y, [h, w], dim=2)
        a_h = torch.sigmoid(self.gate_h(y_h))  # (B, C, H, 1)
        a_w = torch.sigmoid(self.gate_w(y_w.transpose(2, 3)))  # (B, C, 1, W)
        out = x * a_h * a_w
        return x + out if self.residual else out
