"""The mean-image floor (``model=mean_image``): its mean, its errors, and a run that fits in one epoch whatever
``trainer.max_epochs`` says; models fitted without gradients build under ``experiment=cpu_real`` too."""
from __future__ import annotations

import re

import pytest
import torch

from helpers import TINY_DEMO, read_metrics, run_here
from vitmemad.checkpoint import load_checkpoint
from vitmemad.models import MeanImage


def test_the_fit_is_the_mean_of_every_collected_image_across_ranks():
    torch.manual_seed(0)
    images = torch.rand(7, 3, 8, 8) * 2 - 1
    one = MeanImage(8)
    one.collect(images[:4])
    one.collect(images[4:])
    assert one.fit_collected(one.pending_features()) == {"images": 7}
    torch.testing.assert_close(one.mean_image, images.mean(0))
    assert not one.has_pending_features and int(one.images_seen) == 7
    # two DDP ranks: their rows are concatenated, the fit weighs each image once (3 + 4 images, not 2 halves)
    ranks = [MeanImage(8), MeanImage(8)]
    ranks[0].collect(images[:3])
    ranks[1].collect(images[3:])
    ranks[0].fit_collected(torch.cat([r.pending_features() for r in ranks]))
    torch.testing.assert_close(ranks[0].mean_image, images.mean(0))
    out = one(images[:2])
    assert out["memory_weights"] is None
    torch.testing.assert_close(out["reconstruction"], images.mean(0).expand(2, -1, -1, -1))


def test_an_unfitted_or_wrongly_sized_mean_image_is_a_clear_error():
    with pytest.raises(RuntimeError, match="no mean image yet"):
        MeanImage(8)(torch.zeros(1, 3, 8, 8))
    with pytest.raises(RuntimeError, match="saw no training images"):
        MeanImage(8).fit_collected(MeanImage(8).pending_features())
    with pytest.raises(ValueError, match=r"expected \(3, 8, 8\)"):
        MeanImage(8).collect(torch.zeros(1, 3, 16, 16))


@pytest.mark.parametrize("model", ["mean_image", "patchcore"])
def test_models_fitted_without_gradients_build_under_the_real_preset(compose_plain, model, caplog):
    """experiment=cpu_real brings a scheduler, a loss and a corruption for gradient training; a collecting model
    ignores them with one log line instead of failing to build."""
    from vitmemad.build import build_module
    from vitmemad.models import CollectingModule

    cfg = compose_plain("experiment=cpu_real", f"model={model}")
    with caplog.at_level("INFO", logger="vitmemad.models.collecting_module"):
        module = build_module(cfg["model"])
    assert isinstance(module, CollectingModule) and module.configure_optimizers() is None
    assert "is fitted without gradients: model.scheduler do not apply and are ignored" in caplog.text


def test_a_mean_image_run_fits_in_one_epoch_and_scores_every_image_against_the_mean(tmp_path):
    run_dir = tmp_path / "mean_image"
    run_here("vitmemad.train", "model=mean_image", *TINY_DEMO, "trainer.max_epochs=3",
             f"hydra.run.dir={run_dir}", "num_threads=1")
    metrics = read_metrics(run_dir)
    assert metrics["model"] == "mean_image" and metrics["ablation"] is None and metrics["memory"] is None
    assert metrics["epochs"] == 1 and metrics["num_test_images"] == 12
    log = (run_dir / "train.log").read_text()
    assert "the other 2 of trainer.max_epochs=3 are skipped" in log
    assert re.search(r"epoch 1/3 .*\| ETA 0s$", log, re.M), log  # the progress line knows it was the last
    for key in ("image_AUROC", "pixel_AUROC", "PRO"):
        assert 0.0 <= metrics[key] <= 1.0
    # over the 6 normal test images one image is drawn for all of them: no spread, and no better than their mean
    fit = metrics["reconstruction"]
    assert fit["num_images"] == 6 and fit["image_share"] == pytest.approx(0.0, abs=1e-9) and fit["r2"] <= 0
    assert "the reconstruction is no better than the mean image" not in log
    # the mean of exactly the training images (24 crops less the 10 % validation hold-out), not of a batch
    from vitmemad.build import build_datamodule

    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    state, cfg = ckpt["state_dict"], ckpt["hyper_parameters"]["cfg"]
    datamodule = build_datamodule(cfg["data"])
    datamodule.setup("fit")
    train = torch.stack([datamodule.train_dataset[i]["image"] for i in range(len(datamodule.train_dataset))])
    assert int(state["net.images_seen"]) == len(train) == 22
    torch.testing.assert_close(state["net.mean_image"], train.mean(0))
