"""experiments/compare_precision.py's verdict: |mean(bf16) - mean(fp32)| <= max(std(fp32), 0.005), per category
and metric, over the seeds that have both precisions."""
from __future__ import annotations

import math
import sys

import pytest

from helpers import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "experiments"))
import compare_precision  # noqa: E402


def _row(category: str, precision: str, seed: int, image: float, pixel: float = 0.95, pro: float = 0.9) -> dict:
    return {"category": category, "precision": precision, "seed": seed,
            "val": {"image_AUROC": image, "pixel_AUROC": pixel, "PRO": pro}}


def test_the_verdict_uses_the_fp32_spread_or_the_floor():
    rows = [_row("bottle", "32-true", s, v) for s, v in enumerate((0.90, 0.94, 0.98))]
    rows += [_row("bottle", "bf16-mixed", s, v) for s, v in enumerate((0.93, 0.97, 0.98))]  # mean +0.02
    summary = compare_precision.summarize(rows)["bottle"]
    image = summary["image_AUROC"]
    assert math.isclose(image["32-true"]["mean"], 0.94) and math.isclose(image["32-true"]["std"], 0.04)
    assert image["32-true"]["n"] == image["bf16-mixed"]["n"] == 3
    assert math.isclose(image["difference"], 0.02) and math.isclose(image["allowed"], 0.04) and image["equal"]
    pixel = summary["pixel_AUROC"]  # no spread at all: the 0.005 floor decides
    assert pixel["allowed"] == compare_precision.TOLERANCE and pixel["difference"] == 0 and pixel["equal"]


def test_a_difference_beyond_the_allowance_is_not_equal_and_a_missing_precision_gives_no_verdict():
    rows = [_row("tire", "32-true", s, 0.5, pro=p) for s, p in enumerate((0.850, 0.851, 0.852))]
    rows += [_row("tire", "bf16-mixed", s, 0.5, pro=0.86) for s in range(3)]
    rows += [_row("bottle", "32-true", 0, 0.9)]  # bf16 runs still missing
    summary = compare_precision.summarize(rows)
    assert summary["tire"]["PRO"]["difference"] == pytest.approx(0.009) and not summary["tire"]["PRO"]["equal"]
    assert summary["tire"]["image_AUROC"]["equal"]
    assert summary["bottle"] == {}


def test_bad_roots_are_refused_in_one_line():
    with pytest.raises(SystemExit, match="--root takes CATEGORY=DATASET_ROOT"):
        compare_precision.roots(["bottle"])


def test_a_partial_invocation_never_replaces_the_full_comparison():
    both = list(compare_precision.PRECISIONS)
    assert compare_precision.accuracy_file([2, 0, 1], both[::-1], ["bottle", "tire"]) == "accuracy.json"
    names = {compare_precision.accuracy_file([0, 1], both, ["tire"]),
             compare_precision.accuracy_file([0, 1, 2], ["bf16-mixed"], ["bottle"]),
             compare_precision.accuracy_file([2], ["32-true"], ["bottle"])}
    assert names == {"accuracy-tire-s01-32-true-bf16-mixed.json", "accuracy-bottle-s012-bf16-mixed.json",
                     "accuracy-bottle-s2-32-true.json"}


def test_fewer_categories_than_the_full_file_holds_get_their_own_file(tmp_path):
    both = list(compare_precision.PRECISIONS)
    full = tmp_path / "accuracy.json"
    full.write_text('{"runs": [], "summary": {"bottle": {}, "tire": {}}}')
    assert compare_precision.accuracy_file([0, 1, 2], both, ["bottle"], full) == \
        "accuracy-bottle-s012-32-true-bf16-mixed.json"
    assert compare_precision.accuracy_file([0, 1, 2], both, ["tire", "bottle"], full) == "accuracy.json"
