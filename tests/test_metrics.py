"""Metric tests against the official MVTec AD oracle (shared/oracle/pro_oracle.npz) and the reference PRO."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vitmemad.metrics import PRO, ImageAUROC, PixelAUROC, pro_score
from vitmemad.metrics.reference import pro_reference

LIMITS = (0.3, 0.05, 1.0)
CASES = range(13)


@pytest.fixture(scope="module")
def oracle(oracle_path):
    with np.load(oracle_path) as npz:
        return {k: npz[k] for k in npz.files}


def _case(oracle, k):
    return oracle[f"case{k}_maps"], oracle[f"case{k}_masks"]


def _metric(cls, maps, masks, splits=(), **kwargs):
    """Feed ``maps``/``masks`` to a fresh metric in several update() calls split at ``splits``."""
    metric = cls(**kwargs)
    for a, b in zip(np.split(maps, splits), np.split(masks, splits)):
        metric.update(torch.from_numpy(a), torch.from_numpy(b))
    value = metric.compute()
    assert value.dtype == torch.float64 and value.ndim == 0
    return value.item()


# ---- oracle values ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("k", CASES)
def test_pro_score_matches_oracle(oracle, k):
    maps, masks = _case(oracle, k)
    for limit in LIMITS:
        expected = oracle[f"case{k}_pro_{limit}"]
        assert pro_score(maps, masks, fpr_limit=limit) == pytest.approx(expected, abs=1e-6)
        assert pro_score(torch.from_numpy(maps), torch.from_numpy(masks), limit) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("k", CASES)
def test_metrics_match_oracle_with_0_255_masks_and_batching(oracle, k):
    maps, masks = _case(oracle, k)
    masks255 = masks * np.uint8(255)
    n = len(maps)
    for splits in ((), (1, n // 2)):
        for limit in LIMITS:
            got = _metric(PRO, maps, masks255, splits, fpr_limit=limit)
            assert got == pytest.approx(oracle[f"case{k}_pro_{limit}"], abs=1e-6)
        assert abs(_metric(PixelAUROC, maps, masks255, splits) - oracle[f"case{k}_pixel_auroc"]) < 1e-9
        assert abs(_metric(ImageAUROC, maps, masks255, splits) - oracle[f"case{k}_image_auroc"]) < 1e-9
        assert abs(_metric(ImageAUROC, maps, masks255, splits) - oracle[f"case{k}_image_auroc_official"]) < 1e-9


def test_reference_matches_oracle(oracle):
    for k in CASES:
        maps, masks = _case(oracle, k)
        for limit in LIMITS:
            assert pro_reference(maps, masks, limit) == pytest.approx(oracle[f"case{k}_pro_{limit}"], abs=1e-6)


def test_eight_connectivity_is_used(oracle):
    """Case 7 is the connectivity probe: 4-connectivity would give a clearly different PRO."""
    maps, masks = _case(oracle, 7)
    got = pro_score(maps, masks, 0.3)
    assert abs(got - oracle["case7_pro_0.3_4conn_diagnostic"]) > 0.1
    assert got == pytest.approx(oracle["case7_pro_0.3"], abs=1e-6)


# ---- agreement with the reference on inputs the oracle does not cover -----------------------------------

def test_images_of_different_sizes_across_updates(oracle):
    """Images of different H,W in different update() calls: pooled exactly like the reference does."""
    parts = [_case(oracle, k) for k in (0, 1, 3, 10)]  # 64x64, 128x96, 96x128, 64x64
    maps = [m for p in parts for m in p[0]]
    masks = [g for p in parts for g in p[1]]
    for limit in LIMITS:
        metric = PRO(fpr_limit=limit)
        for a, b in parts:
            metric.update(torch.from_numpy(a), torch.from_numpy(b))
        assert metric.compute().item() == pytest.approx(pro_reference(maps, masks, limit), abs=1e-6)
    pix, img = PixelAUROC(), ImageAUROC()
    for a, b in parts:
        pix.update(torch.from_numpy(a), torch.from_numpy(b))
        img.update(torch.from_numpy(a), torch.from_numpy(b))
    scores = np.concatenate([m.ravel() for m in maps]).astype(np.float64)
    labels = np.concatenate([g.ravel() for g in masks]) > 0
    assert abs(pix.compute().item() - _mann_whitney(scores, labels)) < 1e-9
    img_scores = np.array([m.max() for m in maps], dtype=np.float64)
    img_labels = np.array([g.any() for g in masks])
    assert abs(img.compute().item() - _mann_whitney(img_scores, img_labels)) < 1e-9


def _mann_whitney(scores, labels):
    from scipy.stats import rankdata
    ranks = rankdata(scores)  # average ranks for ties
    n_pos, n_neg = labels.sum(), (~labels).sum()
    return (ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


@pytest.mark.parametrize("levels", [None, 5, 40])
def test_random_inputs_and_limits_match_reference(levels):
    """Random blob masks, continuous and heavily tied scores, many limits (including exact FPR values)."""
    from scipy import ndimage
    rng = np.random.default_rng(7 if levels is None else levels)
    noise = ndimage.gaussian_filter(rng.standard_normal((6, 40, 48)), sigma=(0, 2, 2))
    masks = (noise > 0.25).astype(np.uint8)
    masks[:2] = 0  # two normal images
    maps = (0.7 * masks + rng.random(masks.shape)).astype(np.float32)
    if levels is not None:
        maps = np.round(maps * levels).astype(np.float32) / levels
    maps[0, 0, :3] = [-0.0, 0.0, -0.0]  # signed zeros must tie
    n_ok = int((masks == 0).sum())
    limits = list(rng.uniform(0.001, 1.0, 12)) + [c / n_ok for c in (1, 17, n_ok // 3)] + [1e-6, 1.0]
    for limit in limits:
        assert pro_score(maps, masks, limit) == pytest.approx(pro_reference(maps, masks, limit), abs=1e-6)


def test_non_binary_masks_and_channel_dim(oracle):
    maps, masks = _case(oracle, 10)
    soft = masks.astype(np.float32) * np.random.default_rng(0).uniform(0.01, 1.0, masks.shape).astype(np.float32)
    expected = oracle["case10_pro_0.3"]
    assert pro_score(maps, soft) == pytest.approx(expected, abs=1e-6)
    got = _metric(PRO, maps[:, None], masks[:, None] * np.uint8(255))
    assert got == pytest.approx(expected, abs=1e-6)
    # Half-precision maps are upcast, never stored lower than float32.
    metric = PRO()
    metric.update(torch.from_numpy(maps).half(), torch.from_numpy(masks))
    assert metric.maps[0].dtype == torch.float32 and metric.masks[0].dtype == torch.uint8
    # The state is a copy: reusing the input buffer afterwards does not change the result.
    metric, buffer = PRO(), torch.from_numpy(maps.copy())
    metric.update(buffer, torch.from_numpy(masks))
    buffer.zero_()
    assert metric.compute().item() == pytest.approx(expected, abs=1e-6)


def test_compute_twice_and_reset(oracle):
    maps, masks = _case(oracle, 0)
    metric = PRO()
    metric.update(torch.from_numpy(maps), torch.from_numpy(masks))
    first = metric.compute().item()
    assert metric.compute().item() == first
    metric.reset()
    metric.update(torch.from_numpy(maps), torch.from_numpy(masks))
    assert metric.compute().item() == first


# ---- binned mode -----------------------------------------------------------------------------------------

def test_binned_mode_close_to_exact(oracle):
    for k in (0, 1, 3, 6, 10, 11):  # continuous maps in a bounded range
        maps, masks = _case(oracle, k)
        for limit in (0.3, 1.0):
            approx = pro_score(maps, masks, limit, num_thresholds=1000)
            assert approx == pytest.approx(oracle[f"case{k}_pro_{limit}"], abs=1e-3)
    # Maps that only take threshold values are exact in binned mode.
    maps, masks = _case(oracle, 8)
    assert pro_score(maps, masks, 0.3, num_thresholds=3) == pytest.approx(oracle["case8_pro_0.3"], abs=1e-6)


def test_binned_metric_equals_binned_function_and_has_fixed_state(oracle):
    maps, masks = _case(oracle, 10)
    lo, hi = float(maps.min()), float(maps.max())
    metric = PRO(num_thresholds=500, min_score=lo, max_score=hi)
    for a, b in zip(np.split(maps, [3, 4]), np.split(masks, [3, 4])):
        metric.update(torch.from_numpy(a), torch.from_numpy(b))
    assert metric.fp_hist.shape == (501,)
    expected = pro_score(maps, masks, num_thresholds=500, min_score=lo, max_score=hi)
    assert metric.compute().item() == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match="min_score and max_score"):
        PRO(num_thresholds=100)


# ---- degenerate input ------------------------------------------------------------------------------------

def test_degenerate_inputs_raise_clear_errors(oracle):
    maps, masks = _case(oracle, 0)
    normal = np.zeros_like(masks)
    with pytest.raises(ValueError, match="PRO is undefined: no anomalous pixel"):
        pro_score(maps, normal)
    with pytest.raises(ValueError, match="PRO is undefined: no anomalous pixel"):
        _metric(PRO, maps, normal)
    with pytest.raises(ValueError, match="no normal pixel"):
        pro_score(maps, np.ones_like(masks))
    with pytest.raises(ValueError, match="image AUROC is undefined: all 6 images are normal"):
        _metric(ImageAUROC, maps, normal)
    anomalous = masks.reshape(len(masks), -1).any(1)
    with pytest.raises(ValueError, match="image AUROC is undefined: all 4 images are anomalous"):
        _metric(ImageAUROC, maps[anomalous], masks[anomalous])
    with pytest.raises(ValueError, match="pixel AUROC is undefined: no anomalous pixel"):
        _metric(PixelAUROC, maps, normal)
    for cls in (PRO, ImageAUROC, PixelAUROC):
        with pytest.warns(UserWarning), pytest.raises(ValueError, match="no data"):
            cls().compute()


@pytest.mark.parametrize("cls", [PRO, ImageAUROC, PixelAUROC])
def test_bad_batches_fail_in_update(cls, oracle):
    maps, masks = (torch.from_numpy(x) for x in _case(oracle, 0))
    metric = cls()
    with pytest.raises(ValueError, match=r"anomaly_maps shape \(6, 64, 64\) does not match masks shape \(6, 32, 64\)"):
        metric.update(maps, masks[:, :32])
    with pytest.raises(ValueError, match=r"\(B,H,W\)"):
        metric.update(maps[0], masks[0])
    for bad in (float("nan"), float("inf")):
        broken = maps.clone()
        broken[1, 2, 3] = bad
        with pytest.raises(ValueError, match="anomaly_maps contain NaN/inf"):
            metric.update(broken, masks)
    with pytest.raises(ValueError, match="anomaly_maps contain NaN/inf"):
        metric.update(maps.double() * 1e300, masks)  # overflows float32


def test_bad_fpr_limit():
    maps, masks = np.zeros((1, 4, 4), np.float32), np.eye(4, dtype=np.uint8)[None]
    for limit in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="fpr_limit"):
            pro_score(maps, masks, limit)
        with pytest.raises(ValueError, match="fpr_limit"):
            PRO(fpr_limit=limit)


def test_image_scores_update_directly_and_give_per_defect_auroc():
    import vitmemad.models  # noqa: F401  (vitmemad.evaluation is imported through it, as every run does)
    from vitmemad.evaluation import per_defect_auroc

    g = torch.Generator().manual_seed(0)
    maps, labels = torch.rand(12, 5, 5, generator=g), torch.tensor([0, 1] * 6)
    by_map, by_score = ImageAUROC(), ImageAUROC()
    by_map.update(maps, labels[:, None, None].expand(12, 5, 5))
    by_score.update_scores(maps.flatten(1).amax(1), labels)  # the image score is the map's maximum
    assert float(by_score.compute()) == float(by_map.compute())
    records = [(0.1, 0, "good"), (0.3, 0, "good"), (0.2, 1, "crack"), (0.9, 1, "crack"), (0.8, 1, "hole")]
    result = per_defect_auroc(records)
    assert set(result) == {"crack", "hole"}  # one entry per defect type, against all normal images
    assert result["crack"] == pytest.approx(0.75)  # 3 of the 4 (normal, crack) pairs are ordered
    assert result["hole"] == 1.0
    assert per_defect_auroc([(0.5, 1, "crack")]) == {}  # no normal images: undefined, left out
