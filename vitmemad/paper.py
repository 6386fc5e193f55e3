"""The paper's result tables (Tables 3-6) as data: loader and look-up helpers.

The numbers live in ``vitmemad/paper_results.yaml`` (percentages, as printed; ``null`` where the paper
prints "—"). Layout::

    <table>.methods.<method>.values.<category>.<metric>      # per category
    <table>.methods.<method>.printed_average.<metric>        # the paper's own "Average", as printed

Tables: ``table3`` (MVTec image AUROC), ``table4`` (MVTec pixel AUROC, PRO), ``table5`` (BTAD, all three),
``table6`` (ablation means over MVTec; methods ``base``, ``m``, ``ca``, ``m_ca``, printed averages only).
Metric names are metrics.json's: ``image_AUROC``, ``pixel_AUROC``, ``PRO``.

This module stays light (yaml only): ``experiments/report.py`` imports it. ``MVTEC_CATEGORIES`` and
``BTAD_PRODUCTS`` are re-exported lazily from :mod:`vitmemad.data` (which imports torch/Lightning).
"""
from __future__ import annotations

import copy
import functools
import math
from pathlib import Path
from typing import Any

import yaml

DEFAULT_PATH = Path(__file__).resolve().parent / "paper_results.yaml"  # package data: ships in the wheel

#: MVTec AD categories in the paper's row order (Tables 3 and 4): textures first, then objects.
#: `vitmemad.data.MVTEC_CATEGORIES` holds the same names alphabetically.
PAPER_MVTEC_ORDER = (
    "carpet", "grid", "leather", "tile", "wood",
    "bottle", "cable", "capsule", "hazelnut", "metal_nut", "pill", "screw", "toothbrush", "transistor", "zipper",
)
#: BTAD products in the paper's order (Table 5); the same as `vitmemad.data.BTAD_PRODUCTS`.
PAPER_BTAD_ORDER = ("01", "02", "03")
METRICS = ("image_AUROC", "pixel_AUROC", "PRO")
#: Ablation variants (the `ablation` config values) in Table 6's order, with the paper's labels.
ABLATIONS = ("base", "m", "ca", "m_ca")
ABLATION_LABELS = {"base": "Base", "m": "Base + M", "ca": "Base + CA", "m_ca": "Base + M + CA"}
#: Where the paper's own method ("Ours") is, per dataset and metric.
OURS_TABLE = {
    "mvtec": {"image_AUROC": "table3", "pixel_AUROC": "table4", "PRO": "table4"},
    "btad": {"image_AUROC": "table5", "pixel_AUROC": "table5", "PRO": "table5"},
}

# Spellings the paper prints -> dataset folder names.
_CATEGORY_ALIASES = {"huzelnut": "hazelnut", "metal nut": "metal_nut", "metal-nut": "metal_nut",
                     "metalnut": "metal_nut"}


def __getattr__(name: str) -> Any:  # PEP 562: import the data package only when these are asked for
    if name in ("MVTEC_CATEGORIES", "BTAD_PRODUCTS"):
        from vitmemad import data

        return getattr(data, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.lru_cache(maxsize=8)
def _load(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        results = yaml.safe_load(f)
    if not isinstance(results, dict):
        raise ValueError(f"{path}: expected a mapping of tables, got {type(results).__name__}")
    return results


def load_paper_results(path: str | Path | None = None) -> dict[str, Any]:
    """The YAML as a dict (a fresh copy; default ``vitmemad/paper_results.yaml``)."""
    path = Path(path) if path is not None else DEFAULT_PATH
    if not path.is_file():
        raise FileNotFoundError(f"paper results not found: {path}")
    return copy.deepcopy(_load(str(path.resolve())))


def table_key(table: str | int) -> str:
    """``3``, ``"3"``, ``"Table 3"`` or ``"table3"`` -> ``"table3"``."""
    text = str(table).lower().replace(" ", "")
    return text if text.startswith("table") else f"table{text}"


def normalize_category(category: Any) -> str:
    """The dataset's own key: ``"Huzelnut"`` -> ``"hazelnut"``, ``"Metal nut"`` -> ``"metal_nut"``,
    ``1`` -> ``"01"``."""
    if isinstance(category, int) and not isinstance(category, bool):
        return f"{category:02d}"
    text = str(category).strip()
    if text.isdigit():
        return text.zfill(2)
    low = text.lower()
    return _CATEGORY_ALIASES.get(low, low.replace(" ", "_"))


def _table(table: str | int, results: dict[str, Any] | None) -> dict[str, Any]:
    results = results if results is not None else _load(str(DEFAULT_PATH))
    key = table_key(table)
    if key not in results:
        raise KeyError(f"no {key} in the paper results (have {sorted(results)})")
    return results[key]


def _method(table: str | int, method: str, results: dict[str, Any] | None) -> dict[str, Any]:
    tab = _table(table, results)
    methods = tab["methods"]
    if method not in methods:
        raise KeyError(f"no method {method!r} in {table_key(table)} (have {list(methods)})")
    return methods[method]


def _check_metric(table: str | int, metric: str, results: dict[str, Any] | None) -> None:
    metrics = _table(table, results)["metrics"]
    if metric not in metrics:
        raise KeyError(f"{table_key(table)} has no {metric!r} (it reports {metrics})")


def paper_value(
    table: str | int, method: str, category: Any, metric: str, *, results: dict[str, Any] | None = None
) -> float | None:
    """The printed value in percent, or None where the paper prints "—".

    ``category=None`` gives the method's printed average (Table 6 has nothing else).
    Raises KeyError for a table, method, category or metric that the table does not have.
    """
    _check_metric(table, metric, results)
    entry = _method(table, method, results)
    if category is None:
        row = entry.get("printed_average") or {}
    else:
        cat = normalize_category(category)
        values = entry.get("values") or {}
        if cat not in values:
            raise KeyError(f"no category {cat!r} for {method!r} in {table_key(table)} (have {list(values)})")
        row = values[cat]
    value = row.get(metric)
    return None if value is None else float(value)


def printed_average(table: str | int, method: str, metric: str, *,
                    results: dict[str, Any] | None = None) -> float | None:
    """The paper's "Average" as printed (percent)."""
    return paper_value(table, method, None, metric, results=results)


def computed_average(
    table: str | int,
    method: str,
    metric: str,
    categories: Any = None,
    *,
    results: dict[str, Any] | None = None,
) -> float | None:
    """Mean of the method's per-category values (percent), skipping nulls; optionally over `categories` only.

    None when there is nothing to average (all null, e.g. MKD's pixel AUROC, or Table 6, which has no
    per-category values).
    """
    _check_metric(table, metric, results)
    values = _method(table, method, results).get("values") or {}
    cats = list(values) if categories is None else [normalize_category(c) for c in categories]
    nums = [float(values[c][metric]) for c in cats if c in values and values[c].get(metric) is not None]
    return math.fsum(nums) / len(nums) if nums else None


def paper_ours(dataset: str, category: Any, metric: str, *, results: dict[str, Any] | None = None) -> float | None:
    """The paper's "Ours" value for a dataset (``mvtec``/``btad``) category, or None where it has none."""
    table = OURS_TABLE.get(str(dataset).lower(), {}).get(metric)
    if table is None:
        return None
    try:
        return paper_value(table, "Ours", category, metric, results=results)
    except KeyError:
        return None


def ablation_value(variant: str, metric: str, *, results: dict[str, Any] | None = None) -> float | None:
    """Table 6: the MVTec mean (percent) for an ablation variant (``base``, ``m``, ``ca``, ``m_ca``)."""
    return paper_value("table6", variant, None, metric, results=results)
