"""Per category: the image ROC and PRO curves of every variant, one line each (mean and a +-1 std band over seeds,
interpolated onto a common FPR grid, where there are several)."""
from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from .style import new_figure, plain_style
from .variants import Key, labels, mean_std, styles

GRID_POINTS = 201
PANELS = (("image_roc", "tpr", "image_AUROC", "Image ROC", "TPR", "I-AUROC"),
          ("pro", "pro", "PRO", "PRO curve", "PRO", "PRO"))


def on_grid(curve: dict[str, Any], ykey: str, grid: np.ndarray) -> np.ndarray:
    """The curve's y at ``grid``, linear along its segments; at a vertical jump, the top of the jump."""
    x, y = np.asarray(curve["fpr"], dtype=float), np.asarray(curve[ykey], dtype=float)
    j = np.clip(np.searchsorted(x, grid, side="right") - 1, 0, x.size - 2)  # the segment j -> j+1 holding g
    dx = x[j + 1] - x[j]
    t = np.divide(grid - x[j], dx, out=np.ones_like(grid), where=dx > 0)
    return y[j] + np.clip(t, 0.0, 1.0) * (y[j + 1] - y[j])


def mean_curve(curves: list[dict[str, Any]], ykey: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(x, mean y, std y or None): one curve as stored, several on a grid up to their smallest FPR end."""
    if len(curves) == 1:
        return np.asarray(curves[0]["fpr"]), np.asarray(curves[0][ykey]), None
    grid = np.linspace(0.0, min(c["fpr"][-1] for c in curves), GRID_POINTS)
    ys = np.stack([on_grid(c, ykey, grid) for c in curves])
    return grid, ys.mean(axis=0), ys.std(axis=0, ddof=1)


def _legend(label: str, runs: list[dict[str, Any]], metric: str, short: str) -> str:
    mean, std = mean_std(r[metric] for r in runs)
    value = "" if mean is None else f": {short} {100 * mean:.1f}" + ("" if std is None else f" ± {100 * std:.1f}")
    return f"{label}{value}" + (f" ({len(runs)} seeds)" if len(runs) > 1 else "")


def category_curves_figure(variants: dict[Key, list[dict[str, Any]]], title: str) -> Figure | None:
    """Image ROC | PRO of the variants' runs of one category; None when no run stored a curve."""
    panels = [p for p in PANELS if any((r.get("curves") or {}).get(p[0]) for runs in variants.values() for r in runs)]
    if not panels:
        return None
    names, look = labels(variants), styles(variants)
    with plain_style():
        fig, axes = new_figure(4.4 * len(panels), 3.6 + 0.2 * len(variants), 1, len(panels))
        axes = [axes] if len(panels) == 1 else list(axes)
        for ax, (key, ykey, metric, name, ylabel, short) in zip(axes, panels):
            limit = 1.0
            for variant, runs in variants.items():
                with_curve = [r for r in runs if (r.get("curves") or {}).get(key)]
                if not with_curve:
                    continue
                x, y, std = mean_curve([r["curves"][key] for r in with_curve], ykey)
                limit = float(x[-1])
                st = look[variant]
                ax.plot(x, y, color=st["colour"], linestyle=st["linestyle"],
                        label=_legend(names[variant], with_curve, metric, short))
                if std is not None:
                    ax.fill_between(x, np.clip(y - std, 0, 1), np.clip(y + std, 0, 1), color=st["colour"],
                                    alpha=0.15, linewidth=0, label="_band")
            ax.plot([0, limit], [0, 1] if key == "image_roc" else [0, limit], ":", color="#999999", label="_chance")
            xlabel = "FPR" if key == "image_roc" else f"FPR (up to {limit:g})"
            ax.set(title=name, xlabel=xlabel, ylabel=ylabel, xlim=(0, limit), ylim=(0, 1.02))
            ax.legend(loc="upper left", bbox_to_anchor=(0.0, -0.16))  # below: never over the curves
        fig.suptitle(title)
    return fig
