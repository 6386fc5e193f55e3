"""The reconstruction's R^2 over a set of images: 1 for a copy, 0 for the images' own per-pixel mean, the
textbook fraction in between, the same over any batching."""
from __future__ import annotations

import pytest
import torch

from vitmemad.models.recon_stats import ReconstructionFit


def _fit(images: torch.Tensor, recon: torch.Tensor, batch: int = 4) -> dict:
    fit = ReconstructionFit()
    for i in range(0, len(images), batch):
        fit.update(images[i:i + batch], recon[i:i + batch])
    return fit.compute()


def test_r2_is_one_for_a_copy_zero_for_the_mean_image_and_the_explained_share_between():
    torch.manual_seed(0)
    images = torch.rand(10, 3, 8, 8, dtype=torch.float64) * 2 - 1
    mean = images.mean(0, keepdim=True).expand_as(images)
    copy = _fit(images, images.clone())
    assert copy["r2"] == pytest.approx(1.0, abs=1e-12) and copy["image_share"] == pytest.approx(1.0, abs=1e-12)
    floor = _fit(images, mean)
    assert floor["r2"] == pytest.approx(0.0, abs=1e-12) and floor["image_share"] == pytest.approx(0.0, abs=1e-12)
    halfway = _fit(images, mean + 0.5 * (images - mean))  # half of each deviation from the mean rebuilt
    assert halfway["r2"] == pytest.approx(0.75, abs=1e-12) and halfway["image_share"] == pytest.approx(0.25, abs=1e-12)
    assert halfway == pytest.approx(_fit(images, mean + 0.5 * (images - mean), batch=3))  # any batching
    assert halfway["num_images"] == 10
    worse = _fit(images, torch.zeros_like(images) + 2)  # further off than the mean image
    assert worse["r2"] < 0


def test_no_figure_without_a_spread_to_explain():
    fit = ReconstructionFit()
    assert fit.compute() is None
    fit.update(torch.ones(1, 3, 4, 4), torch.zeros(1, 3, 4, 4))
    assert fit.compute() is None  # one image: no spread
    fit.update(torch.ones(1, 3, 4, 4), torch.zeros(1, 3, 4, 4))
    assert fit.compute() is None  # two identical images: still none
    fit.update(torch.zeros(0, 3, 4, 4), torch.zeros(0, 3, 4, 4))  # an empty batch (no normal image in it)
