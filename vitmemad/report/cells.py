"""The report's numbers and table cells: means and stds over runs and categories, percent formatting, Markdown."""
from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Any, Iterable, Sequence

from vitmemad.paper import ABLATION_LABELS

from .records import category_rank, sort_key

METRIC_LABELS = {"image_AUROC": "I-AUROC", "pixel_AUROC": "P-AUROC", "PRO": "PRO"}
DATASET_TITLES = {"mvtec": "MVTec AD", "btad": "BTAD", "demo": "demo"}
DASH = "—"


def mean_std(values: Iterable[float | None]) -> tuple[float | None, float | None, int]:
    """(mean, sample std or None when fewer than 2 values, count) of the non-null values."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None, 0
    mean = math.fsum(vals) / len(vals)
    return mean, (statistics.stdev(vals) if len(vals) >= 2 else None), len(vals)


def category_mean(by_cat: dict[str, list[dict]], metric: str) -> tuple[float | None, float | None, list[str]]:
    """Mean over categories of the per-category means, the std over seeds of per-seed category means, and
    the categories that have a value. The std uses only seeds that cover every one of those categories;
    with a single category it is that category's std over runs."""
    cats = [c for c, runs in by_cat.items() if any(r[metric] is not None for r in runs)]
    if not cats:
        return None, None, []
    if len(cats) == 1:
        mean, std, _ = mean_std(r[metric] for r in by_cat[cats[0]])
        return mean, std, cats
    overall = math.fsum(mean_std(r[metric] for r in by_cat[c])[0] for c in cats) / len(cats)
    seeds = sorted({r["seed"] for c in cats for r in by_cat[c]}, key=lambda s: (s is None, s or 0))
    seed_means = []
    for s in seeds:
        per_cat = [mean_std(r[metric] for r in by_cat[c] if r["seed"] == s)[0] for c in cats]
        if all(v is not None for v in per_cat):
            seed_means.append(math.fsum(per_cat) / len(per_cat))
    std = statistics.stdev(seed_means) if len(seed_means) >= 2 else None
    return overall, std, cats


def fmt_measured(mean: float | None, std: float | None = None) -> str:
    """A fraction as percent with one decimal, with ± std when there is one."""
    if mean is None:
        return DASH
    return f"{100 * mean:.1f}" if std is None else f"{100 * mean:.1f} ± {100 * std:.1f}"


def fmt_paper(value: float | None) -> str:
    return DASH if value is None else f"{value:.1f}"


def two(value: float | None) -> str:
    return DASH if value is None else f"{value:.2f}"


def fmt_delta(measured: float | None, paper: float | None) -> str:
    """measured (fraction) − paper (percent), in percentage points."""
    if measured is None or paper is None:
        return DASH
    return f"{100 * measured - paper:+.1f}"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: Sequence[str] | None = None) -> list[str]:
    align = align or ["l"] + ["r"] * (len(header) - 1)
    sep = {"l": ":--", "r": "--:", "c": ":-:"}
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "|".join(sep[a] for a in align) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def span(values: Iterable[Any]) -> str:
    vals = sorted({v for v in values if v is not None})
    if not vals:
        return DASH
    return str(vals[0]) if len(vals) == 1 else f"{vals[0]}–{vals[-1]}"


def seconds(runs: list[dict]) -> str:
    mean = mean_std(r["train_seconds"] for r in runs)[0]
    return DASH if mean is None else f"{mean:.0f}"


def group(records: Iterable[dict], *keys: str) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[tuple(r[k] for k in keys)].append(r)
    return groups


def by_category(runs: list[dict], dataset: str) -> dict[str, list[dict]]:
    by_cat: dict[str, list[dict]] = defaultdict(list)
    for r in sorted(runs, key=sort_key):
        by_cat[r["category"]].append(r)
    return dict(sorted(by_cat.items(), key=lambda kv: category_rank(dataset, kv[0])))


def title(dataset: str, model: str, ablation: str | None) -> str:
    name = DATASET_TITLES.get(dataset, dataset)
    variant = f", ablation `{ablation}` ({ABLATION_LABELS[ablation]})" if ablation in ABLATION_LABELS else (
        f", ablation `{ablation}`" if ablation else "")
    return f"{name}: model `{model}`{variant}"

