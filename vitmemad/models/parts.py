"""Checks shared by the models that are assembled from parts (``ViTMemAE``, ``FeatureMemAE``)."""
from __future__ import annotations

from torch import nn


def check_widths(expected: int, **parts: nn.Module | None) -> None:
    """Every given part (memory: ``dim``; coordinate attention: ``channels``) works on ``expected`` channels."""
    for name, part in parts.items():
        width = getattr(part, "dim", getattr(part, "channels", None))
        if part is not None and width != expected:
            raise ValueError(f"model.net.{name} works on {width} channels, the encoder gives {expected}")
