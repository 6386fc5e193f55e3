"""predict's ``overlays/<stem>.png`` with a legend: the overlay, a colour bar at its right, the verdict below.

The overlay's pixels are kept exactly (``figimage``, no resampling) in the top-left corner; small images are
enlarged by a whole factor (nearest neighbour) so that the text stays readable, and the text grows with large
images so that it stays readable in a thumbnail. `legend_canvas_size` gives the file's size.
"""
from __future__ import annotations

import math

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .visualize import ANOMALOUS_COLOUR, colour_bar, figure_png, verdict

MIN_SIDE, MAX_SIDE = 256, 2048  # enlarge until the shorter side reaches MIN_SIDE, never past MAX_SIDE
DPI = 100
CHAR_EM = 0.62  # a generous mean glyph width of DejaVu Sans, in font sizes
CAPTION_CHARS = 38  # "score 0.123 > thr 0.0456 → anomalous"


def display_scale(height: int, width: int) -> int:
    """The whole factor small images are enlarged by."""
    return max(1, min(math.ceil(MIN_SIDE / max(1, min(height, width))), MAX_SIDE // max(1, height, width)))


def font_px(shown_h: int, shown_w: int) -> int:
    return int(min(40, max(13, round(max(shown_h, shown_w) / 28))))


def legend_canvas_size(height: int, width: int) -> tuple[int, int]:
    """(width, height) in pixels of the legend overlay of an image of ``height`` x ``width`` pixels."""
    k = display_scale(height, width)
    hs, ws, f = height * k, width * k, font_px(height * k, width * k)
    bar_w = round(7.5 * f)
    return max(ws + bar_w, round(CAPTION_CHARS * CHAR_EM * f) + f), max(hs, 8 * f) + round(2.2 * f)


def legend_overlay_png(overlay: np.ndarray, vmin: float, vmax: float, score: float, threshold: float | None,
                       over: bool, bar_mark: float | None = None) -> bytes:
    """PNG bytes: ``overlay`` (H, W, 3) uint8, its colour bar for [vmin, vmax] (``over``: the map goes above
    vmax) with ``bar_mark`` marked (default the threshold: an image score that is the map's maximum is on the bar's
    scale), and ``score 1.17 > thr 0.18 → anomalous`` underneath."""
    h, w = overlay.shape[:2]
    k = display_scale(h, w)
    shown = np.repeat(np.repeat(overlay, k, axis=0), k, axis=1) if k > 1 else overlay
    hs, ws, f = h * k, w * k, font_px(h * k, w * k)
    width, height = legend_canvas_size(h, w)
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    fig.figimage(shown, xo=0, yo=height - hs, origin="upper")
    pt = f * 72 / DPI
    bar_h = max(hs, 8 * f) - 1.2 * f
    cax = fig.add_axes(((ws + 0.6 * f) / width, (height - 0.6 * f - bar_h) / height, 0.9 * f / width,
                        bar_h / height))
    colour_bar(fig, cax, vmin, vmax, threshold if bar_mark is None else bar_mark, over=over, fontsize=0.85 * pt)
    text = verdict(score, threshold)
    anomalous = threshold is not None and score > threshold
    fig.text(0.5 * f / width, 1.1 * f / height, text, ha="left", va="center", fontsize=pt,
             color=ANOMALOUS_COLOUR if anomalous else "black", fontweight="bold" if anomalous else "normal")
    return figure_png(fig)
