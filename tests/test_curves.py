"""metrics.json's curves: exact polylines from the metric states, downsampled to <= ~200 points that keep the area."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vitmemad.metrics import PRO, ImageAUROC, PixelAUROC
from vitmemad.metrics.auroc import auroc_exact
from vitmemad.metrics.curves import MAX_POINTS, metric_curves, pro_area, roc_area, roc_curve, roc_record
from vitmemad.metrics.reference import pro_curve_reference, trapezoid

TOL = 1e-3  # the stored curves' re-integrated area vs the exact metric


def _metrics(maps, masks, fpr_limit: float = 0.3):
    metrics = [ImageAUROC(), PixelAUROC(), PRO(fpr_limit=fpr_limit)]
    for m in metrics:
        m.update(torch.as_tensor(maps), torch.as_tensor(masks))
    return metrics


def _values(metrics) -> list[float | None]:
    out = []
    for m in metrics:
        try:
            out.append(float(m.compute()))
        except ValueError:
            out.append(None)
    return out


def _check(curves: dict, values: list[float | None], fpr_limit: float) -> float:
    """Every defined curve has few points, its ends, and re-integrates to the metric; returns the worst error."""
    worst = 0.0
    for (name, ykey), value in zip((("image_roc", "tpr"), ("pixel_roc", "tpr"), ("pro", "pro")), values):
        curve = curves[name]
        assert (curve is None) == (value is None), name
        if curve is None:
            continue
        x, y = np.array(curve["fpr"]), np.array(curve[ykey])
        assert 2 <= x.size == y.size <= MAX_POINTS
        assert np.all(np.diff(x) >= 0) and np.all(np.diff(y) >= 0)  # still a monotone curve
        assert (x[0], y[0]) == (0.0, 0.0)
        assert x[-1] == (fpr_limit if name == "pro" else 1.0)
        area = pro_area(curve) if name == "pro" else roc_area(curve)
        worst = max(worst, abs(area - value))
        assert area == pytest.approx(value, abs=TOL), name
    return worst


@pytest.mark.parametrize("fpr_limit", [0.3, 0.05, 1.0])
def test_curves_of_the_oracle_cases_reintegrate_to_the_metrics(oracle_path, fpr_limit):
    data = np.load(oracle_path)
    for case in range(int(data["n_cases"])):
        maps, masks = data[f"case{case}_maps"], data[f"case{case}_masks"]
        metrics = _metrics(maps, masks, fpr_limit)
        values = _values(metrics)
        assert values[2] == pytest.approx(float(data[f"case{case}_pro_{fpr_limit}"]), abs=1e-7)
        curves = json.loads(json.dumps(metric_curves(*metrics)))  # as metrics.json stores them
        assert _check(curves, values, fpr_limit) < 2e-4, str(data[f"case{case}_name"])


def test_exact_roc_is_the_tie_merged_curve_and_its_area_the_auroc():
    pos = np.array([3, 2, 2, 1], dtype=np.float32)
    neg = np.array([2, 1, 0, 0], dtype=np.float32)
    fpr, tpr = roc_curve(pos, neg)
    # thresholds 3, 2 (a tie between both classes: a diagonal), 1 (another tie), then everything
    corners = sorted(set(zip(fpr.tolist(), tpr.tolist())))
    assert corners == [(0.0, 0.0), (0.0, 0.25), (0.25, 0.75), (0.5, 1.0), (1.0, 1.0)]
    # pairs won (ties half) of 16: 4 by the 3, 3.5 by each 2, 2.5 by the 1
    assert trapezoid(fpr, tpr) == auroc_exact(pos.copy(), neg.copy()) == pytest.approx(13.5 / 16)


@pytest.mark.parametrize("case", ["ties", "many_distinct", "staircase", "constant"])
def test_adversarial_curves_keep_their_area(case):
    rng = np.random.default_rng(0)
    if case == "ties":  # 5 score levels over 400k pixels: every threshold a tie across both classes
        maps = rng.integers(0, 5, (100, 64, 64)).astype(np.float32)
        masks = rng.random((100, 64, 64)) < 0.1
        maps[masks] += rng.integers(0, 2, int(masks.sum()))
    elif case == "many_distinct":  # ~400k distinct scores, blob regions
        maps = rng.random((100, 64, 64)).astype(np.float32)
        masks = np.zeros(maps.shape, dtype=bool)
        masks[::2, 10:30, 20:50] = True
        maps[masks] += 0.2
    elif case == "staircase":  # anomalous and normal scores interleaved: 2000 equal steps, no smooth part
        maps = np.arange(2 * 64 * 64, dtype=np.float32).reshape(2, 64, 64)
        masks = np.zeros(maps.shape, dtype=bool)
        masks.reshape(2, -1)[:, ::2] = True
        maps = np.concatenate([maps, maps[:1] * 0])
        masks = np.concatenate([masks, masks[:1] * False])
    else:  # one score everywhere: a single diagonal
        maps = np.ones((6, 16, 16), dtype=np.float32)
        masks = np.zeros(maps.shape, dtype=bool)
        masks[:3, 4:8, 4:8] = True
    for fpr_limit in (0.3, 0.05):
        metrics = _metrics(maps, masks, fpr_limit)
        _check(metric_curves(*metrics), _values(metrics), fpr_limit)


def test_downsampling_keeps_the_bends_and_the_end_point_at_the_limit():
    rng = np.random.default_rng(3)
    maps = rng.random((40, 32, 32)).astype(np.float32)
    masks = np.zeros(maps.shape, dtype=bool)
    masks[::2, 8:20, 8:20] = True
    maps[masks] += 0.5
    metrics = _metrics(maps, masks, 0.3)
    curves = metric_curves(*metrics)
    exact_fpr, exact_pro = pro_curve_reference(maps, masks)
    stored = curves["pro"]
    assert stored["fpr"][-1] == 0.3
    assert stored["pro"][-1] == pytest.approx(np.interp(0.3, exact_fpr, exact_pro), abs=1e-6)
    # every stored point lies on the exact curve (points of it, not a fit)
    on_curve = np.interp(stored["fpr"][1:-1], exact_fpr, exact_pro)
    assert np.max(np.abs(on_curve - stored["pro"][1:-1])) < 0.02
    assert len(stored["fpr"]) == MAX_POINTS < exact_fpr.size


def test_undefined_metrics_have_null_curves():
    maps = torch.rand(4, 8, 8)
    metrics = _metrics(maps, torch.zeros(4, 8, 8))  # no anomalous pixel, every image normal
    assert metric_curves(*metrics) == {"image_roc": None, "pixel_roc": None, "pro": None}
    fresh = metric_curves(ImageAUROC(), PixelAUROC(), PRO())  # no data at all (a test set without masks)
    assert fresh == {"image_roc": None, "pixel_roc": None, "pro": None}


def test_the_validation_threshold_is_a_point_of_the_test_roc():
    pos = np.array([0.9, 0.8, 0.4, 0.2], dtype=np.float32)
    neg = np.array([0.5, 0.3, 0.1, 0.05, 0.0], dtype=np.float32)
    record = roc_record(pos, neg, threshold=0.35)
    assert record["threshold"] == {"value": 0.35, "fpr": 0.2, "tpr": 0.75}  # score > threshold is anomalous
    assert (0.2, 0.75) in set(zip(record["fpr"], record["tpr"]))
    assert "threshold" not in roc_record(pos, neg, threshold=float("nan"))  # never calibrated
