"""Anomaly-detection metrics: exact image/pixel AUROC and MVTec's official PRO (AU-PRO), DDP-safe.

See docs/metrics.md for the definitions, degenerate-input behaviour and measured speed/memory.
"""
from .auroc import ImageAUROC, PixelAUROC
from .pro import PRO, pro_score

__all__ = ["ImageAUROC", "PixelAUROC", "PRO", "pro_score"]
