"""examples.png: a grid of test examples (input | reconstruction | anomaly map | ground truth).

Models without a pixel reconstruction (PatchCore, vitmemad_feat: ``None`` entries) get an
"overlay" column instead: the anomaly map as a jet heatmap blended over the input.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from kornia.color import ApplyColorMap, ColorMap
from PIL import Image, ImageDraw

from .io import atomic_write_bytes

COLUMNS = ("input", "reconstruction", "anomaly map", "ground truth")
OVERLAY_COLUMNS = ("input", "overlay", "anomaly map", "ground truth")
HEADER = 16
OVERLAY_ALPHA = 0.5


def to_uint8_image(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W, 3) uint8."""
    return ((image.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()


def colorize(maps: torch.Tensor, vmin: float, vmax: float) -> np.ndarray:
    """(H, W) float -> (H, W, 3) uint8 jet colours, scaled with a shared [vmin, vmax]."""
    scaled = ((maps.float() - vmin) / max(vmax - vmin, 1e-12)).clamp(0, 1)
    rgb = ApplyColorMap(ColorMap("jet", num_colors=256))(scaled[None, None])[0]
    return (rgb * 255).round().byte().permute(1, 2, 0).numpy()


def examples_grid(examples: dict[str, list[torch.Tensor]]) -> Image.Image:
    """One row per example; anomaly maps share one colour scale so rows are comparable."""
    n = len(examples["image"])
    if n == 0:
        raise ValueError("no test examples to draw")
    maps = torch.stack(examples["map"])
    vmin, vmax = float(maps.min()), float(torch.quantile(maps.flatten(), 0.999))
    h, w = examples["image"][0].shape[-2:]
    recons = examples.get("reconstruction") or [None] * n
    overlay = any(rec is None for rec in recons)
    grid = Image.new("RGB", (4 * w, n * h + HEADER), "white")
    draw = ImageDraw.Draw(grid)
    for c, title in enumerate(OVERLAY_COLUMNS if overlay else COLUMNS):
        draw.text((c * w + 2, 2), title, fill="black")
    for r in range(n):
        image = to_uint8_image(examples["image"][r])
        heat = colorize(examples["map"][r], vmin, vmax)
        second = (
            render_overlay(image, examples["map"][r], vmin, vmax)
            if overlay else to_uint8_image(recons[r])
        )
        tiles = [
            image,
            second,
            heat,
            np.repeat((examples["mask"][r].numpy() > 0).astype(np.uint8)[..., None] * 255, 3, axis=2),
        ]
        for c, tile in enumerate(tiles):
            grid.paste(Image.fromarray(tile), (c * w, HEADER + r * h))
    return grid


def save_examples(examples: dict[str, list[torch.Tensor]], path: str | Path) -> None:
    import io

    buffer = io.BytesIO()
    examples_grid(examples).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def render_overlay(original: np.ndarray, amap: torch.Tensor, vmin: float, vmax: float,
                   alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """uint8 (H, W, 3) image and float (H, W) map -> uint8 (H, W, 3) jet heatmap blended over it."""
    if tuple(original.shape[:2]) != tuple(amap.shape):
        raise ValueError(f"overlay: image {original.shape[:2]} and map {tuple(amap.shape)} differ in size")
    heat = colorize(amap.detach().float().cpu(), vmin, vmax).astype(np.float32)
    blended = (1.0 - alpha) * original.astype(np.float32) + alpha * heat
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)
