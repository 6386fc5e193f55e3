"""The report's Markdown sections: per-category tables (the paper's Tables 3-5), the ablation (Table 6) and
image AUROC per defect type, each measured beside the paper's numbers and a measured PatchCore reference."""
from __future__ import annotations

from typing import Any, Iterable

from vitmemad.paper import (
    ABLATION_LABELS,
    ABLATIONS,
    PAPER_MVTEC_ORDER,
    ablation_value,
    computed_average,
    paper_ours,
    paper_value,
    printed_average,
)

from .cells import (
    DASH,
    DATASET_TITLES,
    METRIC_LABELS,
    by_category,
    category_mean,
    fmt_delta,
    fmt_measured,
    fmt_paper,
    group,
    md_table,
    mean_std,
    seconds,
    span,
    title,
    two,
)
from .records import METRICS, PAPER_ORDER, ablation_rank, category_rank, dataset_rank

PAPER_TABLES = {"mvtec": "Tables 3 (I-AUROC) and 4 (P-AUROC, PRO)", "btad": "Table 5"}
#: The measured reference model of the comparison columns (a pretrained-feature baseline).
REFERENCE_MODEL = "patchcore"
REFERENCE_LABEL = "PatchCore"


def per_category_section(dataset: str, model: str, ablation: str | None, runs: list[dict],
                         reference: dict[str, list[dict]] | None = None) -> list[str]:
    """Tables 3/4 (MVTec) or 5 (BTAD) style; measured values only for datasets the paper does not cover.

    ``reference``: PatchCore's runs of this dataset by category; when given (and ``model`` is not PatchCore
    itself) each metric gets a measured PatchCore column.
    """
    by_cat = by_category(runs, dataset)
    with_paper = dataset in PAPER_TABLES
    reference = reference if reference and model != REFERENCE_MODEL else None
    out = [f"### {title(dataset, model, ablation)}", ""]
    if with_paper:
        out.append(f"Measured vs the paper's \"Ours\" ({PAPER_TABLES[dataset]}); "
                   "Δ = measured − paper, percentage points.")
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
        out.append(f"{REFERENCE_LABEL}: measured `model={REFERENCE_MODEL}` runs in the same report "
                   "(pretrained ImageNet features, no training), mean over its runs of the same category.")
    out.append("")
    rows = []
    for cat, cruns in by_cat.items():
        row: list[Any] = [cat, len(cruns), span(r["epochs"] for r in cruns)]
        for m in METRICS:
            mean, std, _ = mean_std(r[m] for r in cruns)
            row.append(fmt_measured(mean, std))
            if with_paper:
                paper = paper_ours(dataset, cat, m)
                row += [fmt_paper(paper), fmt_delta(mean, paper)]
            if reference:
                row.append(fmt_measured(*mean_std(r[m] for r in reference.get(cat, []))[:2]))
        row.append(seconds(cruns))
        rows.append(row)
    # mean row: over the categories that have a value; the paper's mean over the same categories
    n_cats = len(by_cat)
    mean_row: list[Any] = [f"**mean ({n_cats} {'category' if n_cats == 1 else 'categories'})**", len(runs),
                           span(r["epochs"] for r in runs)]
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
    mean_row.append(seconds(runs))
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
            f"{METRIC_LABELS[m]} {two(computed_average(_ours_table(dataset, m), 'Ours', m))}" for m in METRICS)
        n_all = len(PAPER_ORDER[dataset])
        out.append(f"Mean row: measured mean over categories (± std over seeds that cover them all); paper = mean of "
                   f"its per-category values over the same categories"
                   + (" (a subset of the paper's)" if partial_cats else "") + ".")
        out.append(f"Paper \"Ours\" over all {n_all}: printed average {printed}; "
                   f"mean of the printed values {computed}.")
        if dataset == "mvtec" and model == "cae":
            l2 = ", ".join(f"{c} {fmt_paper(paper_value('table3', 'L2-CAE', c, 'image_AUROC'))}" for c in by_cat
                           if c in PAPER_MVTEC_ORDER)
            if l2:
                out.append("For reference, the paper's convolutional-AE baseline L2-CAE (Table 3, I-AUROC only): "
                           f"{l2}.")
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
    by_variant = group(runs, "ablation")
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
        by_cat = by_category(vruns, dataset)
        cat_sets[v] = tuple(by_cat)
        row: list[Any] = [ABLATION_LABELS.get(v, v), len(by_cat) or DASH, len(vruns)]
        for m in METRICS:
            overall, std, _ = category_mean(by_cat, m) if by_cat else (None, None, [])
            means[(v, m)] = overall
            paper = ablation_value(v, m) if v in ABLATIONS else None
            row += [fmt_measured(overall, std), fmt_paper(paper), fmt_delta(overall, paper)]
        rows.append(row)
    all_cats = sorted({c for cats in cat_sets.values() for c in cats}, key=lambda c: category_rank(dataset, c))
    if reference and model != REFERENCE_MODEL:
        row = [f"{REFERENCE_LABEL} (measured reference)", len(all_cats),
               sum(len(reference.get(c, [])) for c in all_cats)]
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
    out.append("Measured: mean over categories of the per-category means "
               "(± std over seeds that cover every category).")
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
            group(records, "dataset", "model", "ablation").items(),
            key=lambda kv: (dataset_rank(kv[0][0]), kv[0][1], ablation_rank(kv[0][2]))):
        rows = []
        for cat, cruns in by_category(runs, dataset).items():
            defects = sorted({d for r in cruns for d in r["per_defect"]})
            for d in defects:
                mean, std, n = mean_std(r["per_defect"].get(d) for r in cruns)
                rows.append([cat, d, fmt_measured(mean, std), n])
        if not rows:
            continue
        any_table = True
        out += [f"### {title(dataset, model, ablation)}", ""]
        out += md_table(["Category", "Defect", "I-AUROC", "runs"], rows, align=["l", "l", "r", "r"])
        out.append("")
    if not any_table:
        out += ["No per-defect results in these runs.", ""]
    return out
