"""``curves.png`` of a run: image ROC (with the threshold calibrated on normal validation images), pixel ROC and
PRO up to the FPR limit, from metrics.json's ``curves``; a metric without a curve (no masks) has no panel."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from vitmemad.metrics.curves import pro_area, roc_area

from .style import new_figure, plain_style, save_png

PANELS = (("image_roc", "Image ROC", "tpr", "TPR"), ("pixel_roc", "Pixel ROC", "tpr", "TPR"),
          ("pro", "PRO curve", "pro", "PRO (mean region overlap)"))


def curves_figure(curves: dict[str, Any], title: str = "") -> Figure:
    """One panel per defined curve; ValueError when none is defined."""
    panels = [p for p in PANELS if (curves or {}).get(p[0])]
    if not panels:
        raise ValueError("no curve is defined (all of image_roc, pixel_roc and pro are null)")
    with plain_style():
        fig, axes = new_figure(3.6 * len(panels), 3.6, 1, len(panels))
        axes = [axes] if len(panels) == 1 else list(axes)
        for ax, (key, name, ykey, ylabel) in zip(axes, panels):
            curve = curves[key]
            xs, ys = curve["fpr"], curve[ykey]
            limit = xs[-1] if key == "pro" else 1.0
            area = pro_area(curve) if key == "pro" else roc_area(curve)
            ax.plot([0, limit], [0, 1] if key != "pro" else [0, limit], ":", color="#999999", label="_chance")
            ax.plot(xs, ys, color="#0072B2", label=f"{'PRO' if key == 'pro' else 'AUROC'} {100 * area:.1f}")
            point = curve.get("threshold")
            if point:
                ax.plot([point["fpr"]], [point["tpr"]], "o", color="#D55E00", markersize=6,
                        label=f"validation threshold {point['value']:.3g}: FPR {point['fpr']:.2f}, "
                              f"TPR {point['tpr']:.2f}")
            ax.set(title=name, xlabel="FPR" if key != "pro" else f"FPR (up to {limit:g})", ylabel=ylabel,
                   xlim=(0, limit), ylim=(0, 1.02))
            ax.legend(loc="lower right")
        if title:
            fig.suptitle(title)
    return fig


def save_run_curves(curves: dict[str, Any] | None, path: str | Path, title: str = "") -> Path | None:
    """Write ``curves.png``; None (and no file) when no curve is defined."""
    if not curves or not any(curves.get(p[0]) for p in PANELS):
        return None
    return save_png(curves_figure(curves, title), path)
