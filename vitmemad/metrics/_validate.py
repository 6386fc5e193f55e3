"""Input checks shared by the metrics, so bad input fails in ``update()`` with a message that says why."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor


def _as_tensor(x: Any, name: str) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach()
    try:
        return torch.as_tensor(np.asarray(x))
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a torch tensor or numpy array, got {type(x).__name__}") from err


def _squeeze_channel(x: Tensor) -> Tensor:
    """Accept (B,1,H,W) as well as (B,H,W): models often keep a singleton channel."""
    return x[:, 0] if x.ndim == 4 and x.shape[1] == 1 else x


def check_batch(anomaly_maps: Any, masks: Any) -> tuple[Tensor, Tensor]:
    """Validate one batch; return float32 maps (B,H,W) and uint8 0/1 masks (B,H,W) on the maps' device.

    Maps are kept at float32 or wider precision before the cast: never lower, since rounding merges distinct
    scores into ties and changes PRO. Masks: any value > 0 is anomalous (MVTec stores 0/255).
    """
    maps = _squeeze_channel(_as_tensor(anomaly_maps, "anomaly_maps"))
    gts = _squeeze_channel(_as_tensor(masks, "masks"))
    if maps.shape != gts.shape:
        raise ValueError(
            f"anomaly_maps shape {tuple(maps.shape)} does not match masks shape {tuple(gts.shape)}"
        )
    if maps.ndim != 3:
        raise ValueError(f"expected anomaly_maps and masks of shape (B,H,W), got {tuple(maps.shape)}")
    if maps.shape[0] > 0 and maps.shape[1] * maps.shape[2] == 0:
        raise ValueError(f"images must have at least one pixel, got shape {tuple(maps.shape)}")
    if maps.is_complex() or gts.is_complex():
        raise TypeError("anomaly_maps and masks must be real-valued")
    maps = maps.to(torch.float32)
    # min/max propagate NaN and expose +-inf: one cheap reduction instead of an isfinite mask.
    if maps.numel() and not all(map(math.isfinite, (v.item() for v in torch.aminmax(maps)))):
        raise ValueError("anomaly_maps contain NaN/inf (after conversion to float32); scores must be finite")
    gts = (gts > 0).to(device=maps.device, dtype=torch.uint8)
    return maps, gts


def check_fpr_limit(fpr_limit: float) -> float:
    fpr_limit = float(fpr_limit)
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    return fpr_limit
