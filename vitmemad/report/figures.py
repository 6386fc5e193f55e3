"""The report's ``figures/`` folder and the Markdown that embeds it in results.md.

From the report's run records (metrics.json as read by the report: dataset, category, model, ablation, seed,
the three metrics, ``per_defect`` and ``curves``), per dataset:

- per category: image ROC and PRO curves of every variant (``<dataset>_<category>_curves.png``), the ablation
  chart when the dataset has an ablation (``..._ablation.png``) and image AUROC per defect (``..._per_defect.png``);
- with an ablation over several categories: the mean chart beside Table 6 (``<dataset>_mean_ablation.png``);
- per model/variant run on several categories: the category sweep beside Tables 3-5 (``..._categories.png``).
"""
from __future__ import annotations

import logging
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

from matplotlib.figure import Figure

from .bar_figures import ablation_figure, categories_figure, mean_ablation_figure, per_defect_figure
from .curve_figures import category_curves_figure
from .style import save_png
from .variants import by_variant, categories, labels

log = logging.getLogger(__name__)

FIGURES_DIR = "figures"


def _slug(*parts: Any) -> str:
    return "_".join(re.sub(r"[^A-Za-z0-9._-]+", "-", str(p)).strip("-") for p in parts if p not in (None, ""))


def _has_ablation(runs: list[dict[str, Any]]) -> bool:
    """Some model has runs of more than one ablation variant (as for the report's ablation table)."""
    per_model = defaultdict(set)
    for r in runs:
        if r["ablation"] is not None:
            per_model[r["model"]].add(r["ablation"])
    return any(len(v) > 1 for v in per_model.values())


def figure_specs(records: list[dict[str, Any]]) -> list[tuple[str, str, str, Callable[[], Figure | None]]]:
    """(dataset, file name, caption, build) of every figure the records call for, in the report's order."""
    specs = []
    order = ("mvtec", "btad", "demo")
    for dataset in sorted({r["dataset"] for r in records}, key=lambda d: (order.index(d) if d in order else 3, d)):
        runs = [r for r in records if r["dataset"] == dataset]
        cats, ablation = categories(dataset, runs), _has_ablation(runs)
        for cat in cats:
            variants = by_variant(r for r in runs if r["category"] == cat)
            specs.append((dataset, _slug(dataset, cat, "curves"), f"{cat}: image ROC and PRO curves of every "
                          "variant (mean and ±1 std band over seeds)",
                          lambda d=dataset, c=cat, v=variants: category_curves_figure(v, f"{d} / {c}")))
            if ablation:
                specs.append((dataset, _slug(dataset, cat, "ablation"), f"{cat}: ablation, measured (± std over "
                              "seeds) beside the paper's per-category values where it has them (hatched)",
                              lambda d=dataset, c=cat, v=variants: ablation_figure(d, c, v)))
            specs.append((dataset, _slug(dataset, cat, "per_defect"), f"{cat}: image AUROC per defect type",
                          lambda d=dataset, c=cat, v=variants: per_defect_figure(d, c, v)))
        if ablation and len(cats) > 1:
            variants = by_variant(runs)
            specs.append((dataset, _slug(dataset, "mean_ablation"), f"ablation, mean over {len(cats)} categories"
                          + (" beside Table 6 (the paper's mean over its 15 categories; hatched)"
                             if dataset == "mvtec" else ""),
                          lambda d=dataset, c=cats, v=variants: mean_ablation_figure(d, c, v)))
        for key, vruns in by_variant(runs).items():
            vcats = categories(dataset, vruns)
            if len(vcats) > 1:
                name = labels([key])[key]
                specs.append((dataset, _slug(dataset, *key, "categories"), f"{name} per category beside the "
                              "paper's \"Ours\" (Tables 3-5; hatched)",
                              lambda d=dataset, n=name, c=vcats, v=vruns: categories_figure(d, f"{d}: {n}", c, v)))
    return specs


def write_figures(records: list[dict[str, Any]], out_dir: str | Path) -> list[dict[str, str]]:
    """Write the figures into ``out_dir/figures`` (replacing earlier ones); their entries for ``markdown``.

    A figure that fails is skipped with a warning: the tables of the report matter more.
    """
    folder = Path(out_dir) / FIGURES_DIR
    for old in folder.glob("*.png") if folder.is_dir() else []:
        old.unlink()
    entries = []
    for dataset, name, caption, build in figure_specs(records):
        try:
            fig = build()
        except Exception as err:  # noqa: BLE001  (one broken figure must not lose the report)
            log.warning("figure %s failed: %s", name, err)
            continue
        if fig is not None:
            save_png(fig, folder / f"{name}.png")
            entries.append({"dataset": dataset, "file": f"{FIGURES_DIR}/{name}.png", "caption": caption})
    return entries


def markdown(entries: list[dict[str, str]], titles: dict[str, str] | None = None) -> list[str]:
    """A "Figures" section that embeds every figure, grouped by dataset."""
    if not entries:
        return []
    out = ["## Figures", "", "Bars and lines in percent; hatched bars are the paper's printed values.", ""]
    for dataset in dict.fromkeys(e["dataset"] for e in entries):
        out += [f"### Figures: {(titles or {}).get(dataset, dataset)}", ""]
        for e in (e for e in entries if e["dataset"] == dataset):
            out += [f"**{e['caption']}**", "", f"![{e['caption']}]({e['file']})", ""]
    return out
