"""Reading a report's runs: every metrics.json under some folders, as one record per run, in a stable order.

Unreadable or partial files are skipped with a warning that names them; no metrics.json at all raises
``NoMetricsFound`` (the command's exit status 2). Debug runs (metrics.json's ``debug`` is not null, e.g.
``"smoke"``) are read like any other; ``split_debug`` separates them, since their numbers are not results.
"""
from __future__ import annotations

import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterable

from vitmemad.paper import ABLATIONS, PAPER_BTAD_ORDER, PAPER_MVTEC_ORDER, normalize_category

METRICS_FILE = "metrics.json"
METRICS = ("image_AUROC", "pixel_AUROC", "PRO")
REQUIRED_KEYS = ("category", *METRICS)
PAPER_ORDER = {"mvtec": PAPER_MVTEC_ORDER, "btad": PAPER_BTAD_ORDER}


class NoMetricsFound(FileNotFoundError):
    """No metrics.json under any of the given directories."""


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def find_metrics_files(dirs: Iterable[str | Path], warn: Callable[[str], None] = _warn) -> list[Path]:
    """Every metrics.json under `dirs` (or a metrics.json given directly), each once, in a stable order."""
    found: list[Path] = []
    seen: set[Path] = set()

    def add(p: Path) -> None:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            found.append(p)

    for d in dirs:
        d = Path(d)
        if d.is_file():
            if d.name == METRICS_FILE:
                add(d)
            else:
                warn(f"{d} is not a directory or a {METRICS_FILE}; ignored")
        elif d.is_dir():
            for p in sorted(d.rglob(METRICS_FILE)):
                if p.is_file():
                    add(p)
        else:
            warn(f"{d} does not exist; ignored")
    return found


def _fraction(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} is {value!r}, not a number or null")
    value = float(value)
    if math.isnan(value):
        return None
    if not -1e-9 <= value <= 1 + 1e-9:
        raise ValueError(f"{name}={value} is outside [0, 1] (metrics.json stores fractions, not percent)")
    return value


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(float(value)):
        return None
    return float(value)


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def load_record(path: str | Path) -> dict[str, Any]:
    """One metrics.json as a report record; ValueError (with the reason) if it is unreadable or partial."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"unreadable ({type(e).__name__}: {e})") from e
    if not isinstance(raw, dict):
        raise ValueError(f"expected a JSON object, got {type(raw).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise ValueError(f"partial: missing {', '.join(missing)}")
    if raw["category"] is None:
        raise ValueError("category is null")
    dataset = str(raw.get("dataset") or "unknown")
    category = str(raw["category"])
    if dataset in PAPER_ORDER:
        category = normalize_category(category)
    per_defect_raw = raw.get("per_defect") or {}
    if not isinstance(per_defect_raw, dict):
        per_defect_raw = {}
    per_defect = {}
    for defect, value in per_defect_raw.items():
        try:
            per_defect[str(defect)] = _fraction(value, f"per_defect[{defect!r}]")
        except ValueError:
            per_defect[str(defect)] = None
    ablation, debug = raw.get("ablation"), raw.get("debug")
    return {
        "dataset": dataset,
        "category": category,
        "model": str(raw.get("model") or "unknown"),
        "ablation": None if ablation in (None, "") else str(ablation),
        "seed": _int(raw.get("seed")),
        "epochs": _int(raw.get("epochs")),
        **{m: _fraction(raw[m], m) for m in METRICS},
        "train_seconds": _number(raw.get("train_seconds")),
        "per_defect": per_defect,
        "curves": raw.get("curves") if isinstance(raw.get("curves"), dict) else None,
        "debug": None if debug in (None, "") else str(debug),
        "path": str(path),
    }


def collect(dirs: Iterable[str | Path], warn: Callable[[str], None] = _warn) -> list[dict[str, Any]]:
    """Records from every readable metrics.json under `dirs`, sorted; NoMetricsFound if there is none at all.

    Unreadable or partial files are skipped with a warning naming the file. Several runs of the same
    dataset/category/model/ablation/seed are all kept (and warned about).
    """
    dirs = list(dirs)
    files = find_metrics_files(dirs, warn)
    if not files:
        raise NoMetricsFound(f"no {METRICS_FILE} found under {', '.join(str(d) for d in dirs) or '(no directories)'}")
    records = []
    for path in files:
        try:
            records.append(load_record(path))
        except ValueError as e:
            warn(f"skipping {path}: {e}")
    records.sort(key=sort_key)
    seen: dict[tuple, list[str]] = defaultdict(list)
    for r in records:
        seen[(r["dataset"], r["category"], r["model"], r["ablation"], r["seed"])].append(r["path"])
    for key, paths in seen.items():
        if len(paths) > 1:
            warn(f"{len(paths)} runs with the same dataset/category/model/ablation/seed {key}; all are averaged: "
                 + ", ".join(paths))
    return records



def dataset_rank(dataset: str) -> tuple[int, str]:
    order = ("mvtec", "btad", "demo")
    return (order.index(dataset) if dataset in order else len(order), dataset)


def ablation_rank(ablation: str | None) -> tuple[int, str]:
    if ablation is None:
        return (-1, "")
    return (ABLATIONS.index(ablation) if ablation in ABLATIONS else len(ABLATIONS), ablation)


def category_rank(dataset: str, category: str) -> tuple[int, str]:
    order = PAPER_ORDER.get(dataset, ())
    return (order.index(category) if category in order else len(order), category)


def sort_key(r: dict[str, Any]) -> tuple:
    return (dataset_rank(r["dataset"]), r["model"], ablation_rank(r["ablation"]),
            category_rank(r["dataset"], r["category"]), (r["seed"] is None, r["seed"] or 0), r["path"])



def split_debug(records: Iterable[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(results, debug runs): a run whose metrics.json names a debug preset is a check of the setup, not a result."""
    results, debug = [], []
    for r in records:
        (debug if r.get("debug") is not None else results).append(r)
    return results, debug
