"""Image ↔ tensor conversions shared by the datasets and the predict/visualisation code.

Model inputs are float32 (3, S, S) in [-1, 1] because the decoder ends in tanh. Resizing
uses PIL's BILINEAR filter, which widens its support when shrinking (i.e. antialiases).
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .io import to_rgb


def resize_rgb_uint8(img: Image.Image, size: int) -> torch.Tensor:
    """PIL image (any mode) → uint8 tensor (3, size, size), antialiased bilinear resize."""
    img = to_rgb(img)
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def uint8_to_input(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] → float32 [-1, 1]."""
    return x.float().div_(127.5).sub_(1.0)


def preprocess(img: Image.Image, image_size: int) -> torch.Tensor:
    """PIL image → the model input a dataset item would hold: float32 (3, S, S) in [-1, 1]."""
    return uint8_to_input(resize_rgb_uint8(img, image_size))


def to_display(x: torch.Tensor) -> torch.Tensor:
    """Model-space tensor in [-1, 1] → float in [0, 1] for plotting."""
    return x.add(1.0).div(2.0).clamp(0.0, 1.0)
