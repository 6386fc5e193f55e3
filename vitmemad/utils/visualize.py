"""Pictures of anomaly maps that explain themselves: ``examples.png`` (a test run) and predict's overlays.

Every picture says what it shows: the label where it is known, the image score against the threshold and the
colour scale of the map (a colour bar). Colours come from matplotlib's ``jet`` colormap, so tiles, overlays and
colour bars agree; figures are built with matplotlib's object API on the Agg canvas (headless, no pyplot state).

``examples.png``: one row per test example, ``input | reconstruction | anomaly map | ground truth``, with the
ground truth, the score against the threshold and the verdict at its left, and one colour bar for all rows (the
maps share one scale, so rows are comparable). Models without a pixel
reconstruction (PatchCore, vitmemad_feat: ``None`` entries) get an "overlay" column instead: the map blended over
the input.
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from .io import atomic_write_bytes

COLUMNS = ("input", "reconstruction", "anomaly map", "ground truth")
OVERLAY_COLUMNS = ("input", "overlay", "anomaly map", "ground truth")
OVERLAY_ALPHA = 0.5
CMAP = "jet"
ANOMALOUS_COLOUR, NORMAL_COLOUR, WRONG_COLOUR = "#b00020", "#1b5e20", "#b00020"
# examples.png geometry, in inches at DPI: fixed, so the file's size follows from the number of rows.
DPI = 120
TILE_IN, TEXT_IN, CBAR_IN, GAP_IN, HEADER_IN, MARGIN_IN, RIGHT_IN = 1.3, 1.7, 0.14, 0.05, 0.32, 0.06, 0.72


# ---------------------------------------------------------------- words
def fmt(value: float, other: float | None = None) -> str:
    """3 significant digits, more when needed to tell ``value`` from ``other`` (up to 6)."""
    for digits in range(3, 7):
        text = f"{value:.{digits}g}"
        if other is None or text != f"{other:.{digits}g}":
            return text
    return text


def known(threshold: float | None) -> bool:
    return threshold is not None and math.isfinite(float(threshold))


def verdict(score: float, threshold: float | None) -> str:
    """``score 1.17 > thr 0.18 → anomalous``: the image score against the threshold (label = score > thr)."""
    if not known(threshold):
        return f"score {fmt(score)} (no threshold)"
    anomalous = score > threshold
    return f"score {fmt(score, threshold)} {'>' if anomalous else '≤'} thr {fmt(threshold, score)} " \
           f"→ {'anomalous' if anomalous else 'normal'}"


def truth(label: int | None, defect: str | None = None) -> str | None:
    """The ground truth in words: ``normal``, ``anomalous (scratch)``; None where unknown."""
    if label is None:
        return None
    if int(label) == 0:
        return "normal"
    return f"anomalous ({defect})" if defect and defect != "good" else "anomalous"


# ---------------------------------------------------------------- pixels
def to_uint8_image(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W, 3) uint8."""
    return ((image.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()


def colorize(maps: torch.Tensor | np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """(H, W) float -> (H, W, 3) uint8 jet colours, scaled with a shared [vmin, vmax] (clipped outside it)."""
    values = maps.detach().float().cpu().numpy() if isinstance(maps, torch.Tensor) else np.asarray(maps, np.float32)
    scaled = np.clip((values - vmin) / max(vmax - vmin, 1e-12), 0.0, 1.0)
    return matplotlib.colormaps[CMAP](scaled, bytes=True)[..., :3]


def render_overlay(original: np.ndarray, amap: torch.Tensor, vmin: float, vmax: float,
                   alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """uint8 (H, W, 3) image and float (H, W) map -> uint8 (H, W, 3) jet heatmap blended over it."""
    if tuple(original.shape[:2]) != tuple(amap.shape):
        raise ValueError(f"overlay: image {original.shape[:2]} and map {tuple(amap.shape)} differ in size")
    heat = colorize(amap, vmin, vmax).astype(np.float32)
    blended = (1.0 - alpha) * original.astype(np.float32) + alpha * heat
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- colour bars
def colour_bar(fig: Figure, cax: Any, vmin: float, vmax: float, threshold: float | None, *, over: bool,
               fontsize: float, label: str | None = None) -> None:
    """A jet colour bar on ``cax`` for [vmin, vmax]; a black line and a ``thr`` tick at the image threshold
    (a pixel above it makes the image anomalous, since the score is the map's maximum); an arrow when the
    maps go above vmax."""
    mappable = matplotlib.cm.ScalarMappable(matplotlib.colors.Normalize(vmin, vmax), CMAP)
    bar = fig.colorbar(mappable, cax=cax, extend="max" if over else "neither")
    ticks = [t for t in bar.get_ticks() if vmin <= t <= vmax]
    labels = [fmt(float(t)) for t in ticks]
    if known(threshold) and vmin <= threshold <= vmax:
        keep = [i for i, t in enumerate(ticks) if abs(t - threshold) > 0.12 * (vmax - vmin)]
        ticks, labels = [ticks[i] for i in keep] + [threshold], [labels[i] for i in keep] + [f"thr {fmt(threshold)}"]
        cax.axhline(threshold, color="black", linewidth=1.6)
    bar.set_ticks(ticks, labels=labels)
    bar.ax.tick_params(labelsize=fontsize, length=2, pad=1.5)
    bar.outline.set_linewidth(0.5)
    if label:
        bar.set_label(label, fontsize=fontsize, labelpad=2)


def shared_scale(maps: torch.Tensor, threshold: float | None) -> tuple[float, float]:
    """[min, 99.9 % quantile] of all maps, widened to include the threshold so its mark is on the bar."""
    vmin, vmax = float(maps.min()), float(torch.quantile(maps.flatten().float()[:16_000_000], 0.999))
    if known(threshold):
        vmin, vmax = min(vmin, threshold), max(vmax, threshold)
    if vmax <= vmin:
        vmax = vmin + 1e-6
    return vmin, vmax


# ---------------------------------------------------------------- examples.png
def examples_figure_size(rows: int) -> tuple[int, int]:
    """(width, height) in pixels of an examples.png with ``rows`` rows."""
    return (round((TEXT_IN + 4 * TILE_IN + 4 * GAP_IN + CBAR_IN + RIGHT_IN + MARGIN_IN) * DPI),
            round((HEADER_IN + rows * (TILE_IN + GAP_IN) + MARGIN_IN) * DPI))


def examples_grid(examples: dict[str, list[Any]], threshold: float | None = None,
                  scale_threshold: float | None = None) -> Figure:
    """The examples.png figure. ``examples``: lists ``image``, ``reconstruction`` (or None), ``map``, ``mask``,
    and optionally ``label``, ``defect``, ``score`` (the image score testing used); ``threshold``: the image
    threshold (None or NaN: not calibrated); ``scale_threshold``: a threshold on the maps' own scale that sets
    the colour scale and is marked on the bar (default ``threshold``: an image score that is the map's maximum)."""
    n = len(examples["image"])
    if n == 0:
        raise ValueError("no test examples to draw")
    threshold = float(threshold) if known(threshold) else None
    mark = threshold if scale_threshold is None else (float(scale_threshold) if known(scale_threshold) else None)
    maps = torch.stack([m.float() for m in examples["map"]])
    vmin, vmax = shared_scale(maps, mark)
    recons = examples.get("reconstruction") or [None] * n
    overlay = any(rec is None for rec in recons)
    width, height = examples_figure_size(n)
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    tile_w, tile_h = TILE_IN * DPI / width, TILE_IN * DPI / height
    x0 = (MARGIN_IN + TEXT_IN) * DPI / width
    for r in range(n):
        top = 1 - (HEADER_IN + r * (TILE_IN + GAP_IN)) * DPI / height
        image = to_uint8_image(examples["image"][r])
        second = render_overlay(image, maps[r], vmin, vmax) if overlay else to_uint8_image(recons[r])
        mask = (examples["mask"][r].numpy() > 0).astype(np.float32)
        for c, (tile, kwargs) in enumerate(((image, {}), (second, {}), (maps[r].numpy(), {"cmap": CMAP, "vmin": vmin,
                                            "vmax": vmax}), (mask, {"cmap": "gray", "vmin": 0, "vmax": 1}))):
            ax = fig.add_axes((x0 + c * (tile_w + GAP_IN * DPI / width), top - tile_h, tile_w, tile_h))
            ax.imshow(tile, interpolation="nearest", **kwargs)
            ax.set_xticks([]), ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_linewidth(0.4)
            if r == 0:
                ax.set_title((OVERLAY_COLUMNS if overlay else COLUMNS)[c], fontsize=9, pad=4)
        _row_text(fig, examples, r, threshold, x=x0 - 0.06 * TILE_IN * DPI / width, y=top - tile_h / 2)
    cbar_x = x0 + 4 * (tile_w + GAP_IN * DPI / width)
    grid_h = n * (TILE_IN + GAP_IN) * DPI / height - GAP_IN * DPI / height
    cax = fig.add_axes((cbar_x, 1 - HEADER_IN * DPI / height - grid_h, CBAR_IN * DPI / width, grid_h))
    colour_bar(fig, cax, vmin, vmax, mark, over=bool(maps.max() > vmax), fontsize=7.5,
               label="anomaly map (all rows)")
    return fig


def _row_text(fig: Figure, examples: dict[str, list[Any]], r: int, threshold: float | None, x: float,
              y: float) -> None:
    """Left of each row: the ground truth, the score against the threshold, and whether the verdict is right."""
    label = examples.get("label", [None] * (r + 1))[r]
    defect = examples.get("defect", [None] * (r + 1))[r]
    score = examples.get("score", [None] * (r + 1))[r]
    lines: list[tuple[str, dict[str, Any]]] = []
    said = truth(label, defect)
    if said:
        lines.append((said, {"fontweight": "bold", "color": ANOMALOUS_COLOUR if label else NORMAL_COLOUR}))
    if score is not None:
        text = verdict(float(score), threshold)
        score_part, _, decided = text.partition(" → ")
        lines.append((score_part, {}))
        if decided:
            wrong = label is not None and int(float(score) > threshold) != int(label)
            note = (" (missed)" if label else " (false alarm)") if wrong else ""
            lines.append((f"→ {decided}{note}", {"color": WRONG_COLOUR if wrong else "black",
                                                 "fontweight": "bold" if wrong else "normal"}))
    step = 0.17 * TILE_IN * DPI / fig.bbox.height
    for i, (text, style) in enumerate(lines):
        fig.text(x, y + (len(lines) / 2 - 0.5 - i) * step, text, ha="right", va="center", fontsize=8, **style)


def figure_png(fig: Figure) -> bytes:
    """An RGB PNG of exactly the figure's size in pixels (no transparency, no cropping)."""
    fig.canvas.draw()
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3]).save(buffer, format="PNG")
    return buffer.getvalue()


def save_examples(examples: dict[str, list[Any]], path: str | Path, threshold: float | None = None,
                  scale_threshold: float | None = None) -> None:
    atomic_write_bytes(path, figure_png(examples_grid(examples, threshold, scale_threshold)))
