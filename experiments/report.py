"""Collect metrics.json files into ``results.csv`` and ``results.md``, side by side with the paper's tables.

    python experiments/report.py DIR... [--out DIR]

Every ``metrics.json`` under the given directories is read (recursively: single runs, Hydra multirun folders
``outputs/train/multiruns/<time>/<job>/metrics.json``, or the files themselves). Unreadable or partial files
are skipped with a warning that names them; no metrics.json at all is an error (exit status 2).

Outputs (in ``--out``, default the first DIR; regenerated on every call, so they are overwritten):

- ``results.csv``: one row per run: dataset, category, model, ablation, seed, epochs, image_AUROC,
  pixel_AUROC, PRO, train_seconds, path. Metrics are fractions in [0, 1] as in metrics.json; empty = null.
- ``results.md``: Markdown tables laid out like the paper's, values in percent with one decimal:
  * MVTec AD (Tables 3 and 4) and BTAD (Table 5): a row per category plus a mean row, for each
    model/ablation combination; measured (mean ± sample std over runs, i.e. seeds), the paper's "Ours", and
    Δ = measured − paper in percentage points. The mean row compares with the paper's mean over the same
    categories; the paper's printed averages are listed below each table.
  * Ablation (Table 6): whenever a dataset/model has runs with more than one ablation value: a row per
    variant (Base, Base + M, Base + CA, Base + M + CA) with the measured mean over categories (± std over
    seeds) beside Table 6's MVTec means, plus the gains over Base.
  * Datasets without paper numbers (demo, folder): the measured per-category table only.
  * PatchCore as a measured reference: when the runs include ``model=patchcore`` runs of a dataset, every
    other model's table of that dataset gets a "PatchCore" column after each metric (its measured mean over
    runs, same category; the mean row over the same categories), and the ablation table a PatchCore row.
  * Per defect type: image AUROC from metrics.json's ``per_defect``.
  * Figures: embedded from ``figures/`` (see below).
  "—" marks a value that is null or not reported.
- ``figures/*.png`` (``vitmemad.report.figures``): per category the image ROC and PRO curves of every
  model/variant (from metrics.json's ``curves``), the ablation chart and image AUROC per defect type; the
  ablation's mean over categories beside Table 6; a category sweep beside Tables 3-5.

``collect(dirs)`` and ``write_report(records, out_dir)`` are the importable pieces; ``main(argv)`` the CLI.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from vitmemad.paper import (  # noqa: E402  (light: yaml only)
    ABLATION_LABELS,
    ABLATIONS,
    PAPER_BTAD_ORDER,
    PAPER_MVTEC_ORDER,
    ablation_value,
    computed_average,
    normalize_category,
    paper_ours,
    paper_value,
    printed_average,
)
from vitmemad.report import figures  # noqa: E402  (matplotlib, no torch)
from vitmemad.utils.io import atomic_write_bytes  # noqa: E402

METRICS_FILE = "metrics.json"
CSV_NAME = "results.csv"
MD_NAME = "results.md"
METRICS = ("image_AUROC", "pixel_AUROC", "PRO")
METRIC_LABELS = {"image_AUROC": "I-AUROC", "pixel_AUROC": "P-AUROC", "PRO": "PRO"}
CSV_COLUMNS = (
    "dataset", "category", "model", "ablation", "seed", "epochs",
    "image_AUROC", "pixel_AUROC", "PRO", "train_seconds", "path",
)
REQUIRED_KEYS = ("category", *METRICS)
PAPER_TABLES = {"mvtec": "Tables 3 (I-AUROC) and 4 (P-AUROC, PRO)", "btad": "Table 5"}
PAPER_ORDER = {"mvtec": PAPER_MVTEC_ORDER, "btad": PAPER_BTAD_ORDER}
DATASET_TITLES = {"mvtec": "MVTec AD", "btad": "BTAD", "demo": "demo"}
DASH = "—"
#: The measured reference model of the comparison columns (a pretrained-feature baseline).
REFERENCE_MODEL = "patchcore"
REFERENCE_LABEL = "PatchCore"


class NoMetricsFound(FileNotFoundError):
    """No metrics.json under any of the given directories."""


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


# --------------------------------------------------------------------------------------------- reading


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
    ablation = raw.get("ablation")
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
    records.sort(key=_sort_key)
    seen: dict[tuple, list[str]] = defaultdict(list)
    for r in records:
        seen[(r["dataset"], r["category"], r["model"], r["ablation"], r["seed"])].append(r["path"])
    for key, paths in seen.items():
        if len(paths) > 1:
            warn(f"{len(paths)} runs with the same dataset/category/model/ablation/seed {key}; all are averaged: "
                 + ", ".join(paths))
    return records


# --------------------------------------------------------------------------------------------- helpers


def _dataset_rank(dataset: str) -> tuple[int, str]:
    order = ("mvtec", "btad", "demo")
    return (order.index(dataset) if dataset in order else len(order), dataset)


def _ablation_rank(ablation: str | None) -> tuple[int, str]:
    if ablation is None:
        return (-1, "")
    return (ABLATIONS.index(ablation) if ablation in ABLATIONS else len(ABLATIONS), ablation)


def _category_rank(dataset: str, category: str) -> tuple[int, str]:
    order = PAPER_ORDER.get(dataset, ())
    return (order.index(category) if category in order else len(order), category)


def _sort_key(r: dict[str, Any]) -> tuple:
    return (_dataset_rank(r["dataset"]), r["model"], _ablation_rank(r["ablation"]),
            _category_rank(r["dataset"], r["category"]), (r["seed"] is None, r["seed"] or 0), r["path"])


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


def _two(value: float | None) -> str:
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


def _span(values: Iterable[Any]) -> str:
    vals = sorted({v for v in values if v is not None})
    if not vals:
        return DASH
    return str(vals[0]) if len(vals) == 1 else f"{vals[0]}–{vals[-1]}"


def _seconds(runs: list[dict]) -> str:
    mean = mean_std(r["train_seconds"] for r in runs)[0]
    return DASH if mean is None else f"{mean:.0f}"


def _group(records: Iterable[dict], *keys: str) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[tuple(r[k] for k in keys)].append(r)
    return groups


def _by_category(runs: list[dict], dataset: str) -> dict[str, list[dict]]:
    by_cat: dict[str, list[dict]] = defaultdict(list)
    for r in sorted(runs, key=_sort_key):
        by_cat[r["category"]].append(r)
    return dict(sorted(by_cat.items(), key=lambda kv: _category_rank(dataset, kv[0])))


def _title(dataset: str, model: str, ablation: str | None) -> str:
    name = DATASET_TITLES.get(dataset, dataset)
    variant = f", ablation `{ablation}` ({ABLATION_LABELS[ablation]})" if ablation in ABLATION_LABELS else (
        f", ablation `{ablation}`" if ablation else "")
    return f"{name}: model `{model}`{variant}"


# --------------------------------------------------------------------------------------------- sections


def per_category_section(dataset: str, model: str, ablation: str | None, runs: list[dict],
                         reference: dict[str, list[dict]] | None = None) -> list[str]:
    """Tables 3/4 (MVTec) or 5 (BTAD) style; measured values only for datasets the paper does not cover.

    ``reference``: PatchCore's runs of this dataset by category; when given (and ``model`` is not PatchCore
    itself) each metric gets a measured PatchCore column.
    """
    by_cat = _by_category(runs, dataset)
    with_paper = dataset in PAPER_TABLES
    reference = reference if reference and model != REFERENCE_MODEL else None
    out = [f"### {_title(dataset, model, ablation)}", ""]
    if with_paper:
        out.append(f"Measured vs the paper's \"Ours\" ({PAPER_TABLES[dataset]}); Δ = measured − paper, percentage points.")
        if ablation not in (None, "m_ca"):
            out.append(f"Note: the paper's per-category numbers are for its full model (Base + M + CA); for the "
                       f"`{ablation}` variant it reports only MVTec means (Table 6, see the ablation table).")
        header = ["Category", "runs", "epochs"]
        for m in METRICS:
            header += [f"{METRIC_LABELS[m]}", "paper", "Δ"] + ([REFERENCE_LABEL] if reference else [])
        header.append("train s")
    else:
        out.append("No per-category numbers in the paper for this dataset: measured values only.")
        header = ["Category", "runs", "epochs"]
        for m in METRICS:
            header += [METRIC_LABELS[m]] + ([REFERENCE_LABEL] if reference else [])
        header.append("train s")
    if reference:
        out.append(f"{REFERENCE_LABEL}: measured `model={REFERENCE_MODEL}` runs in the same report (pretrained ImageNet "
                   "features, no training), mean over its runs of the same category.")
    out.append("")
    rows = []
    for cat, cruns in by_cat.items():
        row: list[Any] = [cat, len(cruns), _span(r["epochs"] for r in cruns)]
        for m in METRICS:
            mean, std, _ = mean_std(r[m] for r in cruns)
            row.append(fmt_measured(mean, std))
            if with_paper:
                paper = paper_ours(dataset, cat, m)
                row += [fmt_paper(paper), fmt_delta(mean, paper)]
            if reference:
                row.append(fmt_measured(*mean_std(r[m] for r in reference.get(cat, []))[:2]))
        row.append(_seconds(cruns))
        rows.append(row)
    # mean row: over the categories that have a value; the paper's mean over the same categories
    n_cats = len(by_cat)
    mean_row: list[Any] = [f"**mean ({n_cats} {'category' if n_cats == 1 else 'categories'})**", len(runs),
                           _span(r["epochs"] for r in runs)]
    partial_cats = False
    for m in METRICS:
        overall, std, cats = category_mean(by_cat, m)
        mean_row.append(fmt_measured(overall, std))
        if with_paper:
            table = "table5" if dataset == "btad" else ("table3" if m == "image_AUROC" else "table4")
            paper = computed_average(table, "Ours", m, cats) if cats else None
            mean_row += [fmt_paper(paper), fmt_delta(overall, paper)]
            partial_cats |= bool(cats) and len(cats) < len(PAPER_ORDER[dataset])
        if reference:
            mean_row.append(_reference_mean(reference, cats, m))
    mean_row.append(_seconds(runs))
    rows.append(mean_row)
    out += md_table(header, rows)
    out.append("")
    mixed = [c for c, cruns in by_cat.items() if len({r["epochs"] for r in cruns}) > 1]
    if mixed:
        out.append(f"Note: runs with different epoch counts are averaged together ({', '.join(mixed)}); "
                   "see results.csv for each run.")
        out.append("")
    if with_paper:
        printed = ", ".join(
            f"{METRIC_LABELS[m]} {fmt_paper(printed_average(_ours_table(dataset, m), 'Ours', m))}" for m in METRICS)
        computed = ", ".join(
            f"{METRIC_LABELS[m]} {_two(computed_average(_ours_table(dataset, m), 'Ours', m))}" for m in METRICS)
        n_all = len(PAPER_ORDER[dataset])
        out.append(f"Mean row: measured mean over categories (± std over seeds that cover them all); paper = mean of "
                   f"its per-category values over the same categories"
                   + (" (a subset of the paper's)" if partial_cats else "") + ".")
        out.append(f"Paper \"Ours\" over all {n_all}: printed average {printed}; mean of the printed values {computed}.")
        if dataset == "mvtec" and model == "cae":
            l2 = ", ".join(f"{c} {fmt_paper(paper_value('table3', 'L2-CAE', c, 'image_AUROC'))}" for c in by_cat
                           if c in PAPER_MVTEC_ORDER)
            if l2:
                out.append(f"For reference, the paper's convolutional-AE baseline L2-CAE (Table 3, I-AUROC only): {l2}.")
        out.append("")
    return out


def _reference_mean(reference: dict[str, list[dict]], categories: Iterable[str], metric: str) -> str:
    """The reference model's mean over the given categories; only when it covers all of them."""
    categories = list(categories)
    if not categories or any(c not in reference for c in categories):
        return DASH
    overall, std, cats = category_mean({c: reference[c] for c in categories}, metric)
    return fmt_measured(overall, std) if len(cats) == len(categories) else DASH


def _ours_table(dataset: str, metric: str) -> str:
    return "table5" if dataset == "btad" else ("table3" if metric == "image_AUROC" else "table4")


def ablation_section(dataset: str, model: str, runs: list[dict],
                     reference: dict[str, list[dict]] | None = None) -> list[str]:
    """Table 6 style: one row per variant, measured mean over categories beside the paper's MVTec means.

    With ``reference`` (PatchCore's runs by category) a last row gives its measured means over the same
    categories (when it covers them all).
    """
    by_variant = _group(runs, "ablation")
    variants = list(ABLATIONS) + sorted(
        {a for (a,) in by_variant if a not in ABLATIONS and a is not None})
    name = DATASET_TITLES.get(dataset, dataset)
    out = [f"### Ablation (Table 6 style): {name}, model `{model}`", ""]
    if dataset == "mvtec":
        out.append("Paper: Table 6, means over the 15 MVTec AD categories. Δ = measured − paper, percentage points.")
    else:
        out.append(f"**The paper's figures are MVTec AD means (Table 6, 15 categories); these runs are on {name}, so "
                   "the comparison is across datasets — compare the gains over Base rather than the levels.**")
    out.append("")
    header = ["Variant", "categories", "runs"]
    for m in METRICS:
        header += [METRIC_LABELS[m], "paper", "Δ"]
    rows, means = [], {}
    cat_sets = {}
    for v in variants:
        vruns = by_variant.get((v,), [])
        by_cat = _by_category(vruns, dataset)
        cat_sets[v] = tuple(by_cat)
        row: list[Any] = [ABLATION_LABELS.get(v, v), len(by_cat) or DASH, len(vruns)]
        for m in METRICS:
            overall, std, _ = category_mean(by_cat, m) if by_cat else (None, None, [])
            means[(v, m)] = overall
            paper = ablation_value(v, m) if v in ABLATIONS else None
            row += [fmt_measured(overall, std), fmt_paper(paper), fmt_delta(overall, paper)]
        rows.append(row)
    all_cats = sorted({c for cats in cat_sets.values() for c in cats}, key=lambda c: _category_rank(dataset, c))
    if reference and model != REFERENCE_MODEL:
        row = [f"{REFERENCE_LABEL} (measured reference)", len(all_cats), sum(len(reference.get(c, [])) for c in all_cats)]
        for m in METRICS:
            row += [_reference_mean(reference, all_cats, m), DASH, DASH]
        rows.append(row)
    out += md_table(header, rows)
    out.append("")
    ran = {v: c for v, c in cat_sets.items() if c}
    if len(set(ran.values())) > 1:
        out.append("Warning: the variants were run on different categories ("
                   + "; ".join(f"{ABLATION_LABELS.get(v, v)}: {', '.join(c)}" for v, c in ran.items())
                   + "), so their means are not directly comparable.")
        out.append("")
    out.append("Measured: mean over categories of the per-category means (± std over seeds that cover every category).")
    out.append("")
    if any(means[("base", m)] is not None for m in METRICS):
        out.append("Gain over Base (percentage points):")
        out.append("")
        gheader = ["Variant"]
        for m in METRICS:
            gheader += [f"{METRIC_LABELS[m]} measured", "paper"]
        grows = []
        for v in variants:
            if v == "base":
                continue
            grow: list[Any] = [ABLATION_LABELS.get(v, v)]
            for m in METRICS:
                base, cur = means[("base", m)], means[(v, m)]
                measured = DASH if base is None or cur is None else f"{100 * (cur - base):+.1f}"
                pb, pv = ablation_value("base", m), ablation_value(v, m) if v in ABLATIONS else None
                grow += [measured, DASH if pv is None or pb is None else f"{pv - pb:+.1f}"]
            grows.append(grow)
        out += md_table(gheader, grows)
        out.append("")
    return out


def per_defect_section(records: list[dict]) -> list[str]:
    out = ["## Image AUROC per defect type", "",
           "From metrics.json's `per_defect`: each defect type's images against the normal test images; "
           "mean ± std over runs (seeds).", ""]
    any_table = False
    for (dataset, model, ablation), runs in sorted(
            _group(records, "dataset", "model", "ablation").items(),
            key=lambda kv: (_dataset_rank(kv[0][0]), kv[0][1], _ablation_rank(kv[0][2]))):
        rows = []
        for cat, cruns in _by_category(runs, dataset).items():
            defects = sorted({d for r in cruns for d in r["per_defect"]})
            for d in defects:
                mean, std, n = mean_std(r["per_defect"].get(d) for r in cruns)
                rows.append([cat, d, fmt_measured(mean, std), n])
        if not rows:
            continue
        any_table = True
        out += [f"### {_title(dataset, model, ablation)}", ""]
        out += md_table(["Category", "Defect", "I-AUROC", "runs"], rows, align=["l", "l", "r", "r"])
        out.append("")
    if not any_table:
        out += ["No per-defect results in these runs.", ""]
    return out


def render_markdown(records: list[dict], sources: Sequence[str] = (), figure_entries: Sequence[dict] = ()) -> str:
    records = sorted(records, key=_sort_key)
    out = ["# vitmemad results", ""]
    out.append(f"Generated by `experiments/report.py` from {len(records)} metrics.json file(s)"
               + (f" under {', '.join(f'`{s}`' for s in sources)}" if sources else "") + ".")
    out.append("Values in percent with one decimal; measured = mean ± sample std over runs (seeds) where there are "
               "several; Δ = measured − paper in percentage points; — = null or not reported.")
    out.append("")
    groups = _group(records, "dataset", "model", "ablation")
    datasets = sorted({d for d, _, _ in groups}, key=_dataset_rank)
    for dataset in datasets:
        out += [f"## {DATASET_TITLES.get(dataset, dataset)}", ""]
        keys = sorted((k for k in groups if k[0] == dataset), key=lambda k: (k[1], _ablation_rank(k[2])))
        reference = _by_category([r for r in records if r["dataset"] == dataset and r["model"] == REFERENCE_MODEL],
                                 dataset) or None
        for _, model, ablation in keys:
            out += per_category_section(dataset, model, ablation, groups[(dataset, model, ablation)], reference)
        for model in sorted({k[1] for k in keys}):
            mruns = [r for r in records if r["dataset"] == dataset and r["model"] == model]
            if len({r["ablation"] for r in mruns if r["ablation"] is not None}) > 1:
                out += ablation_section(dataset, model, mruns, reference)
    out += per_defect_section(records)
    out += figures.markdown(list(figure_entries), DATASET_TITLES)
    return "\n".join(out).rstrip() + "\n"


def render_csv(records: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in sorted(records, key=_sort_key):
        writer.writerow(["" if r.get(c) is None else r[c] for c in CSV_COLUMNS])
    return buf.getvalue()


def write_report(records: list[dict], out_dir: str | Path, sources: Sequence[str] = ()) -> tuple[Path, Path]:
    """Write results.csv, figures/ and results.md into `out_dir` (created if needed; existing ones are replaced)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out_dir / CSV_NAME, out_dir / MD_NAME
    atomic_write_bytes(csv_path, render_csv(records).encode("utf-8"))
    entries = figures.write_figures(records, out_dir)
    atomic_write_bytes(md_path, render_markdown(records, sources, entries).encode("utf-8"))
    return csv_path, md_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="experiments/report.py",
        description="results.csv and results.md from the metrics.json files under DIR..., beside the paper's tables.")
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="run or sweep directories (searched recursively)")
    parser.add_argument("--out", metavar="DIR", help="where to write results.csv and results.md (default: the first DIR)")
    args = parser.parse_args(argv)
    try:
        records = collect(args.dirs)
    except NoMetricsFound as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not records:
        print(f"error: none of the {METRICS_FILE} files under {', '.join(args.dirs)} could be read (see warnings above)",
              file=sys.stderr)
        return 1
    out_dir = Path(args.out) if args.out else Path(args.dirs[0])
    if out_dir.is_file():  # a metrics.json given directly: write beside it
        out_dir = out_dir.parent
    csv_path, md_path = write_report(records, out_dir, sources=args.dirs)
    print(f"wrote {csv_path} ({len(records)} runs)")
    print(f"wrote {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
