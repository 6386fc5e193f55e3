"""Who is compared in a report figure: one variant per (model, ablation), in Table 6's order, with a label."""
from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Any, Iterable

from vitmemad.paper import ABLATION_LABELS, ABLATIONS, PAPER_BTAD_ORDER, PAPER_MVTEC_ORDER

from .style import LINE_STYLES, colours

MODEL_LABELS = {"cae": "CAE", "patchcore": "PatchCore", "vitmemad_feat": "ViT features", "mean_image": "Mean image"}
MODEL_ORDER = ("cae", "patchcore", "mean_image")
PAPER_ORDER = {"mvtec": PAPER_MVTEC_ORDER, "btad": PAPER_BTAD_ORDER}

Key = tuple[str, "str | None"]


def variant_key(record: dict[str, Any]) -> Key:
    return record["model"], record["ablation"]


def _rank(key: Key) -> tuple:
    model, ablation = key
    if ablation is not None:
        return (0, model, ABLATIONS.index(ablation) if ablation in ABLATIONS else len(ABLATIONS), ablation)
    return (1, MODEL_ORDER.index(model) if model in MODEL_ORDER else len(MODEL_ORDER), model, "")


def by_variant(runs: Iterable[dict[str, Any]]) -> dict[Key, list[dict[str, Any]]]:
    """The runs of each variant, variants in order: ablations (Base ... + M + CA), then CAE, PatchCore, the mean
    image (the floor), others."""
    groups: dict[Key, list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        groups[variant_key(r)].append(r)
    return dict(sorted(groups.items(), key=lambda kv: _rank(kv[0])))


def labels(keys: Iterable[Key]) -> dict[Key, str]:
    """"Base + M" for an ablation variant (with its model's name when several models have one), else the model."""
    keys = list(keys)
    ablation_models = {m for m, a in keys if a is not None}
    out = {}
    for model, ablation in keys:
        if ablation is None:
            out[(model, ablation)] = MODEL_LABELS.get(model, model)
        else:
            label = ABLATION_LABELS.get(ablation, ablation)
            out[(model, ablation)] = f"{model}: {label}" if len(ablation_models) > 1 else label
    return out


def styles(keys: Iterable[Key]) -> dict[Key, dict[str, str]]:
    """Colour and line style per variant: fixed colours for the known ones, line styles that differ in print."""
    keys = list(keys)
    names = [a if a is not None else m for m, a in keys]
    palette = colours(list(dict.fromkeys(names)))
    return {k: {"colour": palette[n], "linestyle": LINE_STYLES[i % len(LINE_STYLES)]}
            for i, (k, n) in enumerate(zip(keys, names))}


def categories(dataset: str, runs: Iterable[dict[str, Any]]) -> list[str]:
    """The runs' categories in the paper's order (others alphabetically after)."""
    order = PAPER_ORDER.get(dataset, ())
    cats = {r["category"] for r in runs}
    return sorted(cats, key=lambda c: (order.index(c) if c in order else len(order), c))


def mean_std(values: Iterable[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample std (None with fewer than 2) of the non-null values."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    return math.fsum(vals) / len(vals), (statistics.stdev(vals) if len(vals) > 1 else None)
