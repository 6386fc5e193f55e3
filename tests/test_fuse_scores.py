"""experiments/fuse_scores.py: two checkpoints' whole-image scores, each standardised by its own normal
validation images, fused. Each model's own score must be its pipeline's (metrics.json's image AUROC)."""
from __future__ import annotations

import json
import sys

import pytest
import torch

from helpers import REPO_ROOT, read_metrics

sys.path.insert(0, str(REPO_ROOT / "experiments"))
import fuse_scores  # noqa: E402


def test_a_run_fused_with_itself_keeps_the_pipelines_image_auroc(smoke_run, capsys):
    record = read_metrics(smoke_run)
    ckpt = record["ckpt_path"]
    assert fuse_scores.main([ckpt, ckpt, "--part", "all", "--weights", "0.3", "0.7"]) == 0
    row = json.loads(capsys.readouterr().out.strip())
    for key in ("first", "second", "w0.3", "w0.7", "max"):
        assert row[key] == pytest.approx(record["image_AUROC"], abs=1e-6), key
    assert row["correlation"] == pytest.approx(1.0, abs=1e-5)


def _scores(values, normal, labels, paths=None):
    return {"scores": torch.tensor(values), "normal": torch.tensor(normal), "labels": labels,
            "paths": paths or [f"{i}.png" for i in range(len(labels))]}


def test_fusion_standardises_each_model_before_it_adds_them():
    labels = [0, 0, 1, 1]
    # the first model ranks image 2 low, the second image 3; on raw scores the second's scale (x1000) would rule
    first = _scores([0.0, 1.0, 0.5, 3.0], [0.0, 1.0, 2.0], labels)
    second = _scores([0.0, 1000.0, 3000.0, 500.0], [0.0, 1000.0, 2000.0], labels)
    row = fuse_scores.fusion_row(first, second, [0.5])
    assert (row["first"], row["second"]) == (0.75, 0.75)
    assert row["w0.5"] == 1.0  # halved z sums -1, 0, 0.75, 0.75 (normal mean 1, std 1 in each model's units)
    assert fuse_scores.standardised(torch.tensor([3.0]), torch.tensor([0.0, 1.0, 2.0])).item() == 2.0


def test_fusing_runs_of_different_images_is_refused():
    first = _scores([0.0, 1.0], [0.0, 1.0], [0, 1])
    second = _scores([0.0, 1.0], [0.0, 1.0], [0, 1], paths=["a.png", "b.png"])
    with pytest.raises(ValueError, match="different test images"):
        fuse_scores.fusion_row(first, second, [0.5])
