"""Figures: a run's curves.png and the report's figures/ (curves, ablation, per defect, category sweep)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import assert_real_png, load_report
from vitmemad.metrics import PRO, ImageAUROC, PixelAUROC
from vitmemad.metrics.curves import metric_curves
from vitmemad.paper import ablation_value, paper_ours
from vitmemad.report import figures
from vitmemad.report.run_curves import curves_figure, save_run_curves
from vitmemad.report.style import bar_series, labelled_lines

ABLATIONS = ("base", "m", "ca", "m_ca")
report = load_report()


def _run(seed: int, separation: float, with_masks: bool = True) -> dict:
    """The metrics and curves of one synthetic test set whose anomalies stand out by ``separation``."""
    rng = np.random.default_rng(seed)
    maps = rng.random((12, 24, 24)).astype(np.float32)
    masks = np.zeros(maps.shape, dtype=bool)
    masks[6:, 6:14, 8:16] = True
    maps[masks] += separation
    metrics = [ImageAUROC(), PixelAUROC(), PRO()]
    for m in metrics if with_masks else metrics[:1]:
        m.update(torch.from_numpy(maps), torch.from_numpy(masks))
    values = {k: float(m.compute()) for k, m in zip(("image_AUROC", "pixel_AUROC", "PRO"), metrics)
              if with_masks or k == "image_AUROC"}
    return {"image_AUROC": None, "pixel_AUROC": None, "PRO": None, **values,
            "curves": metric_curves(*metrics, image_threshold=1.0)}


def _write(root: Path, sub: str, **fields) -> None:
    record = {"dataset": "mvtec", "category": "bottle", "model": "vitmemad_paper", "ablation": "m_ca", "seed": 0,
              "epochs": 3, "train_seconds": 1.0, "per_defect": {"broken_large": 0.9, "contamination": 0.8}, **fields}
    path = root / sub / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(record))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """An MVTec ablation on bottle (2 seeds) and tire (1 seed; not in the paper), plus CAE and PatchCore on bottle."""
    root = tmp_path_factory.mktemp("figures")
    for k, ablation in enumerate(ABLATIONS):
        for seed in (0, 1):
            _write(root, f"{ablation}_bottle_{seed}", ablation=ablation, seed=seed, **_run(seed, 0.1 + 0.1 * k))
        _write(root, f"{ablation}_tire", category="tire", ablation=ablation, **_run(7, 0.2 + 0.1 * k))
    _write(root, "cae", model="cae", ablation=None, **_run(3, 0.05, with_masks=False))
    _write(root, "patchcore", model="patchcore", ablation=None, per_defect={"broken_large": 1.0}, **_run(4, 0.8))
    report.main([str(root)])
    return root


def _specs(root: Path) -> dict[str, object]:
    return {name: build for _, name, _, build in figures.figure_specs(report.collect([root]))}


def test_report_writes_real_figures_and_embeds_each_one(sweep):
    files = sorted(p.name for p in (sweep / "figures").glob("*.png"))
    assert files == sorted([
        *(f"mvtec_{c}_{kind}.png" for c in ("bottle", "tire") for kind in ("curves", "ablation", "per_defect")),
        "mvtec_mean_ablation.png",
        *(f"mvtec_vitmemad_paper_{a}_categories.png" for a in ABLATIONS),  # CAE and PatchCore ran on bottle only
    ])
    md = (sweep / "results.md").read_text()
    for name in files:
        assert_real_png(sweep / "figures" / name)
        assert f"](figures/{name})" in md
    assert md.index("## Figures") > md.index("## Image AUROC per defect type")


def test_curve_figures_have_one_line_per_variant_and_bands_for_seeds(sweep):
    fig = _specs(sweep)["mvtec_bottle_curves"]()
    roc, pro = fig.axes
    labels = [line.get_label() for line in labelled_lines(roc)]
    assert [label.split(":")[0] for label in labels] == ["Base", "Base + M", "Base + CA", "Base + M + CA",
                                                         "CAE", "PatchCore"]
    assert labels[0].endswith("(2 seeds)") and "seeds" not in labels[4]
    assert len(labelled_lines(pro)) == 5  # the CAE run had no masks: no PRO curve
    assert len(roc.collections) == len(pro.collections) == 4  # a +-1 std band for each variant with 2 seeds
    assert pro.get_xlim()[1] == pytest.approx(0.3)
    # the mean of two seeds, on the common grid, between the two seeds' curves
    base = labelled_lines(roc)[0]
    x, y = base.get_data()
    assert len(x) == 201 and np.all(np.diff(y) >= -1e-12) and y[-1] == pytest.approx(1.0)


def _heights(container) -> list[float]:
    return [patch.get_height() for patch in container.patches]


def test_ablation_chart_puts_the_paper_beside_its_categories_only(sweep):
    specs = _specs(sweep)
    (ax,) = specs["mvtec_bottle_ablation"]().axes
    series = bar_series(ax)
    assert [c.get_label() for c in series] == ["Base", "Base + M", "Base + CA", "Base + M + CA",
                                               "paper, Base + M + CA (Tables 3, 4)", "CAE", "PatchCore"]
    assert _heights(series[4]) == [paper_ours("mvtec", "bottle", m) for m in ("image_AUROC", "pixel_AUROC", "PRO")]
    assert math.isnan(_heights(series[5])[1])  # CAE without masks: no pixel AUROC bar
    (tire,) = specs["mvtec_tire_ablation"]().axes
    assert [c.get_label() for c in bar_series(tire)] == ["Base", "Base + M", "Base + CA", "Base + M + CA"]
    # Table 6 (a mean over 15 categories) only beside the mean over categories
    (mean,) = specs["mvtec_mean_ablation"]().axes
    labels = [c.get_label() for c in bar_series(mean)]
    assert labels[:2] == ["Base", "paper, Base (Table 6)"] and len(labels) == 4 * 2  # CAE, PatchCore: bottle only
    assert _heights(bar_series(mean)[1]) == [ablation_value("base", m) for m in ("image_AUROC", "pixel_AUROC", "PRO")]
    assert not any("Table 6" in c.get_label() for c in series)


def test_per_defect_and_category_sweep_charts(sweep):
    specs = _specs(sweep)
    (ax,) = specs["mvtec_bottle_per_defect"]().axes
    assert len(bar_series(ax)) == 6 and [t.get_text() for t in ax.get_xticklabels()] == ["broken_large",
                                                                                         "contamination"]
    assert math.isnan(_heights(bar_series(ax)[-1])[1])  # PatchCore reported no contamination
    fig = specs["mvtec_vitmemad_paper_m_ca_categories"]()
    assert len(fig.axes) == 3
    for ax, metric in zip(fig.axes, ("image_AUROC", "pixel_AUROC", "PRO")):
        measured, paper = bar_series(ax)
        assert [t.get_text() for t in ax.get_xticklabels()] == ["bottle", "tire"]
        bottle = report.collect([sweep / "m_ca_bottle_0", sweep / "m_ca_bottle_1"])
        assert _heights(measured)[0] == pytest.approx(100 * np.mean([r[metric] for r in bottle]))
        assert _heights(paper)[0] == paper_ours("mvtec", "bottle", metric) and math.isnan(_heights(paper)[1])


def test_run_curves_png(tmp_path):
    run = _run(0, 0.3)
    curves = run["curves"]
    fig = curves_figure(curves, "vitmemad / bottle")
    assert len(fig.axes) == 3 and all(len(labelled_lines(ax)) == 1 for ax in fig.axes[1:])
    assert labelled_lines(fig.axes[2])[0].get_label() == f"PRO {100 * run['PRO']:.1f}"
    assert fig.axes[2].get_xlim() == (0.0, 0.3)
    threshold = [line for line in labelled_lines(fig.axes[0]) if line.get_label().startswith("validation")]
    assert len(threshold) == 1 and threshold[0].get_xydata().tolist() == [[curves["image_roc"]["threshold"]["fpr"],
                                                                          curves["image_roc"]["threshold"]["tpr"]]]
    assert_real_png(save_run_curves(curves, tmp_path / "curves.png"))
    only_image = {**curves, "pixel_roc": None, "pro": None}
    assert len(curves_figure(only_image).axes) == 1
    assert save_run_curves({"image_roc": None, "pixel_roc": None, "pro": None}, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
