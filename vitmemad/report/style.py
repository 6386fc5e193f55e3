"""One plain figure style (white, thin grid, colour-blind-safe colours that stay apart in print) and PNG output.

Figures are built with matplotlib's object API on the Agg canvas: headless, no pyplot state, nothing to close.
"""
from __future__ import annotations

import io
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.container import BarContainer
from matplotlib.figure import Figure

from vitmemad.utils.io import atomic_write_bytes

DPI = 120
STYLE: dict[str, Any] = {
    "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.color": "#dddddd",
    "grid.linewidth": 0.6, "axes.axisbelow": True, "figure.facecolor": "white", "axes.facecolor": "white",
    "savefig.facecolor": "white", "lines.linewidth": 1.6, "legend.frameon": False, "hatch.linewidth": 0.6,
}
#: Okabe-Ito colours; the known variants always get the same one, others take the rest in turn.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
VARIANT_COLOURS = {"base": "#000000", "m": "#0072B2", "ca": "#E69F00", "m_ca": "#009E73",
                   "cae": "#D55E00", "patchcore": "#CC79A7", "mean_image": "#999999"}
LINE_STYLES = ("-", "--", "-.", ":")
PAPER_HATCH = "///"
METRIC_LABELS = {"image_AUROC": "I-AUROC", "pixel_AUROC": "P-AUROC", "PRO": "PRO"}


@contextmanager
def plain_style() -> Iterator[None]:
    with matplotlib.rc_context(STYLE):
        yield


def new_figure(width: float, height: float, nrows: int = 1, ncols: int = 1) -> tuple[Figure, Any]:
    """A Figure on the Agg canvas and its axes (an array when there are several)."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=True)
    return fig, axes


def png_bytes(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def save_png(fig: Figure, path: str | Path) -> Path:
    atomic_write_bytes(path, png_bytes(fig))
    return Path(path)


def colours(keys: list[str]) -> dict[str, str]:
    """A colour per key: the fixed one of a known variant, else the next free palette colour."""
    free = [c for c in PALETTE if c not in {VARIANT_COLOURS.get(k) for k in keys}]
    out = {}
    for key in keys:
        out[key] = VARIANT_COLOURS.get(key) or (free.pop(0) if free else PALETTE[len(out) % len(PALETTE)])
    return out


def labelled_lines(ax: Any) -> list[Any]:
    """The lines that stand for a series (legend entries), not helpers such as the chance diagonal."""
    return [line for line in ax.get_lines() if not line.get_label().startswith("_")]


def bar_series(ax: Any) -> list[BarContainer]:
    """The bar series of an axes (one BarContainer per ``ax.bar`` call)."""
    return [c for c in ax.containers if isinstance(c, BarContainer)]


def grouped_bars(ax: Any, groups: list[str], series: list[dict[str, Any]], width: float = 0.8) -> None:
    """Bars of several series side by side in each group; ``series``: label, values (None = no bar),
    optional errors, colour and ``paper`` (hatched, light: the paper's printed values)."""
    n = max(1, len(series))
    step = width / n
    for k, s in enumerate(series):
        xs = [g + (k - (n - 1) / 2) * step for g in range(len(groups))]
        vals = [float("nan") if v is None else 100 * v for v in s["values"]]
        errs = s.get("errors")
        yerr = None if errs is None else [0.0 if e is None else 100 * e for e in errs]
        paper = s.get("paper", False)
        ax.bar(xs, vals, step * 0.92, label=s["label"], color="white" if paper else s["colour"],
               edgecolor=s["colour"], hatch=PAPER_HATCH if paper else None, linewidth=0.8,
               yerr=yerr, error_kw={"elinewidth": 0.8, "capsize": 2, "ecolor": "#444444"})
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel("%")


def bar_limits(ax: Any, values: list[float | None]) -> None:
    """A y range that shows differences near the top (AUROCs rarely go below 50 %)."""
    vals = [100 * v for v in values if v is not None]
    low = min(vals, default=50.0)
    ax.set_ylim(max(0.0, min(50.0, 10 * (low // 10) - 5)), 101)
