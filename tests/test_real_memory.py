"""The memory on a real category where it fails: MVTec 3D-AD tire (RGB).

With the paper's memory and loss (soft read-out, ``loss.lambda_mem=0``, no restarts; ``experiment=cpu_real_paper_memory``,
the preset's memory before 2026-12-03) a few items take nearly
all of the addressing mass a few epochs after the memory starts (epoch 14 of 50), and the run warns about it at that
validation. The codebook + commitment loss with dead-item restarts keeps half of the items in use and the read-out
equal to the features, and is still no remedy: the features stop depending on the image, the decoder draws
nearly one image for every input, and the run warns that the reconstruction is no better than the mean image
(docs/results.md, "Does a model beat the mean image?"). Neither arm's read-out carries the image. The 150-epoch
preset schedule is shortened to 50 epochs in bf16; at 30 epochs the paper's loss had not collapsed yet (37.5 % in
use) although its read-out already lost more than all of the features' energy (1.54). Slow (two runs, about 15
minutes each alone on 2 cores) and needs ../shared/data. ``experiment=cpu_real`` (a nearest-item read-out,
EMA items) keeps the memory in use through the same schedule (a third run).
"""
from __future__ import annotations

import pytest

from helpers import read_metrics, run_module
from vitmemad.models.memory_stats import COLLAPSED_BELOW

pytestmark = [pytest.mark.slow, pytest.mark.real]

SHORT = ("trainer.max_epochs=50", "trainer.precision=bf16-mixed", "num_threads=2")
PAPER_MEMORY = "cpu_real_paper_memory"
MEMORY_LOSS = ("loss.lambda_mem=1", "callbacks.memory_training.restart_every=50")


def tire_run(tmp_path, tire_root, name: str, *overrides: str, experiment: str) -> tuple[dict, str]:
    run_dir = tmp_path / name
    run_module("vitmemad.train", f"experiment={experiment}", "data=mvtec", f"data.root={tire_root}",
               "data.category=tire", "seed=0", *SHORT, *overrides, f"hydra.run.dir={run_dir}", timeout=3600)
    return read_metrics(run_dir), (run_dir / "train.log").read_text()


def test_the_paper_loss_collapses_the_tire_memory_and_the_memory_loss_collapses_the_features(tmp_path, tire_root):
    paper, paper_log = tire_run(tmp_path, tire_root, "paper_memory", experiment=PAPER_MEMORY)
    assert "memory collapsed at epoch" in paper_log  # a validation saw it and warned, when it happened
    # at the end a few items still carry the mass and the read-out fails. How many items stay just above 0.1/N of
    # it, and how many blend into each query, vary with the threads and the CPU (2.5 % of them in use on one
    # thread, 7.25-10 % on two; 3 to 23 items above the shrinkage threshold per query): the collapse is that
    # at most 1 % of the items are ever a query's nearest (2026-12-06: 1 of 400)
    assert paper["memory"]["used_fraction"] <= COLLAPSED_BELOW and paper["memory"]["never_top1_fraction"] >= 0.99
    assert paper["memory"]["feature_relative_error"] > 1.0, paper["memory"]
    assert paper["memory"]["readout_image_share"] < 0.01, paper["memory"]  # about one read-out for every image

    tied, tied_log = tire_run(tmp_path, tire_root, "memory_loss", *MEMORY_LOSS, experiment=PAPER_MEMORY)
    memory = tied["memory"]
    # by the usage and read-out figures the memory is healthy ...
    assert "memory collapsed" not in tied_log
    assert not memory["collapsed"] and memory["used_fraction"] >= COLLAPSED_BELOW, memory
    assert memory["feature_relative_error"] <= 0.5, memory
    # ... because the features it matches no longer depend on the image: nearly one reconstruction for all of them,
    # worse than the mean image. The decoder still spreads the features' last 1 % of between-image energy to about
    # 10 % of the images' (image share 0.099, R^2 -1.80, 2026-12-04); models that learn tire have 0.43-0.73
    assert memory["feature_image_share"] < 0.01 and memory["readout_image_share"] < 0.01, memory
    assert tied["reconstruction"]["r2"] < 0 and tied["reconstruction"]["image_share"] < 0.2, tied["reconstruction"]
    assert "the reconstruction is no better than the mean image" in tied_log


def test_the_nearest_item_memory_of_cpu_real_holds_on_tire(tmp_path, tire_root):
    record, log = tire_run(tmp_path, tire_root, "vq", experiment="cpu_real")
    memory = record["memory"]
    # the first validation after the items start may see them collapsed; the restarts revive them, and the log
    # says so
    assert "memory collapsed at epoch" not in log or "memory in use again at epoch" in log
    # 400 items (experiment=cpu_real_vq) 2026-12-02, fp32: 69.5 % of the items in use, read-out error 0.0005; the
    # 150-epoch fp32 runs of 1,000 items: 63-92 % in use, read-out error 0.0003-0.009, one item per query
    assert not memory["collapsed"] and memory["used_fraction"] >= 3 * COLLAPSED_BELOW, memory
    assert memory["feature_relative_error"] <= 0.5 and memory["mean_active_items"] == 1.0, memory
