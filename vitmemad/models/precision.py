"""Where mixed precision stops: the parts that must run in float32 under ``trainer.precision=bf16-mixed``.

Lightning's bf16-mixed runs every step under ``torch.autocast``, which computes matmuls and convolutions in
bfloat16 (8 bits of mantissa). That is what makes the encoder and decoder fast, but three things must not be
rounded so coarsely:

- the anomaly maps and image scores: bfloat16 would merge distinct scores into ties and change AUROC and PRO;
- the loss (L2 and SSIM): its small per-pixel differences are what the model learns from;
- the memory's addressing and read-out: softmax weights of ~1/N each and the hard-shrinkage threshold 1/N are
  below bfloat16's resolution for hundreds of items.

``float32_region`` turns autocast off and casts its tensors to float32; it costs a few small kernels.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def float32_region(*tensors: torch.Tensor) -> Iterator[tuple[torch.Tensor, ...]]:
    """Autocast off for the block; yields ``tensors`` as float32 (floating tensors only are cast)."""
    device_type = tensors[0].device.type if tensors else "cpu"
    with torch.autocast(device_type=device_type, enabled=False):
        yield tuple(t.float() if t.is_floating_point() else t for t in tensors)
