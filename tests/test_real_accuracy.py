"""Accuracy on real data: the CPU preset for real categories learns MVTec AD bottle.

Slow (about 3 minutes on 2 cores: 20 of the preset's 150 epochs) and needs ../shared/data; `make test-all` or `pytest -m slow` runs it.
"""
from __future__ import annotations

import pytest

from helpers import read_metrics, run_module

pytestmark = [pytest.mark.slow, pytest.mark.real]


def test_cpu_real_preset_detects_bottle_defects(tmp_path, mvtec_root):
    run_dir = tmp_path / "bottle"
    # the experiment=cpu_real preset (8-block encoder, 1,000 nearest-item memory items, batch 8, patch_swap
    # corruption, L2 + SSIM map), shortened to 20 epochs
    run_module(
        "vitmemad.train", "experiment=cpu_real", "data=mvtec", f"data.root={mvtec_root}", "data.category=bottle",
        "model.image_size=128", "model.epochs=20", f"hydra.run.dir={run_dir}", timeout=1200,
    )
    metrics = read_metrics(run_dir)
    assert metrics["category"] == "bottle" and metrics["num_test_images"] == 83
    assert metrics["image_AUROC"] >= 0.8, metrics  # chance is 0.5
    assert metrics["pixel_AUROC"] >= 0.8, metrics
