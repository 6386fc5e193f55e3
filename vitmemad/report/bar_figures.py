"""Bar charts: the ablation (per category and as a mean over categories), image AUROC per defect type, and a
category sweep, with the paper's printed values as hatched bars beside the measured ones where it has them.

Measured bars are means over runs (seeds) with +-1 std error bars; values are shown in percent.
"""
from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure

from vitmemad.paper import ABLATION_LABELS, ABLATIONS, ablation_value, paper_ours

from .style import METRIC_LABELS, bar_limits, grouped_bars, new_figure, plain_style
from .variants import Key, labels, mean_std, styles

METRICS = ("image_AUROC", "pixel_AUROC", "PRO")
OURS_TABLES = {"mvtec": {"image_AUROC": "Table 3", "pixel_AUROC": "Table 4", "PRO": "Table 4"},
               "btad": {m: "Table 5" for m in METRICS}}


def _measured(label: str, colour: str, runs: list[dict[str, Any]], keys: list[str], value) -> dict[str, Any]:
    stats = [mean_std(value(r, k) for r in runs) for k in keys]
    return {"label": label, "colour": colour, "values": [s[0] for s in stats], "errors": [s[1] for s in stats]}


def _paper(label: str, colour: str, values: list[float | None]) -> dict[str, Any] | None:
    """A hatched series of the paper's percentages (as fractions); None when it has none of them."""
    if all(v is None for v in values):
        return None
    return {"label": label, "colour": colour, "paper": True, "values": [None if v is None else v / 100 for v in values]}


def _bar_figure(groups: list[str], series: list[dict[str, Any]], title: str, width: float) -> Figure:
    with plain_style():
        fig, ax = new_figure(width, 4.0)
        grouped_bars(ax, groups, series)
        bar_limits(ax, [v for s in series for v in s["values"]])
        ax.set_title(title)
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def ablation_figure(dataset: str, category: str, variants: dict[Key, list[dict[str, Any]]]) -> Figure:
    """One category: every variant's three metrics; the paper's "Ours" (its full model) beside Base + M + CA."""
    names, look = labels(variants), styles(variants)
    series = []
    for key, runs in variants.items():
        series.append(_measured(names[key], look[key]["colour"], runs, list(METRICS), lambda r, m: r[m]))
        if key[1] == "m_ca" and dataset in OURS_TABLES:
            tables = "Tables 3, 4" if dataset == "mvtec" else "Table 5"
            paper = _paper(f"paper, {ABLATION_LABELS['m_ca']} ({tables})", look[key]["colour"],
                           [paper_ours(dataset, category, m) for m in METRICS])
            series += [paper] if paper else []
    return _bar_figure([METRIC_LABELS[m] for m in METRICS], series, f"Ablation: {dataset} / {category}",
                       3.0 + 0.55 * len(series))


def mean_ablation_figure(dataset: str, cats: list[str], variants: dict[Key, list[dict[str, Any]]]) -> Figure:
    """Mean over categories of each variant's per-category means; Table 6 (a 15-category MVTec mean) beside it.

    Only variants run on every one of ``cats`` (a mean over fewer categories is not the same mean).
    """
    variants = {k: runs for k, runs in variants.items() if set(cats) <= {r["category"] for r in runs}}
    names, look = labels(variants), styles(variants)
    series = []
    for key, runs in variants.items():
        per_cat = {c: [r for r in runs if r["category"] == c] for c in cats}
        means = [mean_std(mean_std(r[m] for r in cr)[0] for cr in per_cat.values() if cr)[0] for m in METRICS]
        series.append({"label": names[key], "colour": look[key]["colour"], "values": means})
        if dataset == "mvtec" and key[1] in ABLATIONS:
            paper = _paper(f"paper, {ABLATION_LABELS[key[1]]} (Table 6)", look[key]["colour"],
                           [ablation_value(key[1], m) for m in METRICS])
            series += [paper] if paper else []
    note = "; paper: Table 6, mean over its 15 categories" if dataset == "mvtec" else ""
    return _bar_figure([METRIC_LABELS[m] for m in METRICS], series,
                       f"Ablation: {dataset}, mean over {len(cats)} categories{note}", 3.5 + 0.55 * len(series))


def per_defect_figure(dataset: str, category: str, variants: dict[Key, list[dict[str, Any]]]) -> Figure | None:
    """Image AUROC of each defect type (against the normal test images), one bar per variant."""
    defects = sorted({d for runs in variants.values() for r in runs for d in r["per_defect"]})
    if not defects:
        return None
    names, look = labels(variants), styles(variants)
    series = [_measured(names[k], look[k]["colour"], runs, defects, lambda r, d: r["per_defect"].get(d))
              for k, runs in variants.items() if any(r["per_defect"] for r in runs)]
    width = 3.0 + 0.3 * len(defects) * max(2, len(series))
    return _bar_figure(defects, series, f"Image AUROC per defect type: {dataset} / {category}", min(width, 16.0))


def categories_figure(dataset: str, title: str, cats: list[str], runs: list[dict[str, Any]]) -> Figure:
    """A category sweep: one panel per metric, measured per category beside the paper's "Ours" (Tables 3-5)."""
    with plain_style():
        fig, axes = new_figure(min(max(6.0, 3.0 + 0.8 * len(cats)), 16.0), 8.4, len(METRICS), 1)
        for ax, metric in zip(axes, METRICS):
            series = [_measured("measured", "#0072B2", runs, cats,
                                lambda r, c, m=metric: r[m] if r["category"] == c else None)]
            table = OURS_TABLES.get(dataset, {}).get(metric)
            paper = _paper(f"paper, Ours ({table})", "#0072B2",
                           [paper_ours(dataset, c, metric) for c in cats]) if table else None
            series += [paper] if paper else []
            grouped_bars(ax, cats, series)
            bar_limits(ax, [v for s in series for v in s["values"]])
            ax.set_title(METRIC_LABELS[metric])
            ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
        fig.suptitle(title)
    return fig
