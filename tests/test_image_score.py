"""``anomaly_map.image_score=normal_z``: each image scored by the maximum of its map standardised per pixel by the
normal validation images' maps, while the pixel metrics and predict's maps keep the map itself; and
``anomaly_map.image_sigma``: the image score reads the map smoothed further."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from helpers import TINY_DEMO, assert_real_png, read_metrics, run_here
from vitmemad.callbacks.thresholds import ThresholdCalibration
from vitmemad.data import write_demo_dataset
from vitmemad.export import ExportError, export_onnx
from vitmemad.inference import load_module, output_names
from vitmemad.metrics import ImageAUROC
from vitmemad.models.anomaly_map import STD_EPS, STD_FLOOR, AnomalyMapGenerator, gaussian_smooth

SIZE = 32


def normal_and_defect_maps(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw maps of 24 normal and 6 defective images: every image's left half has a large, varying error (an
    edge the model never rebuilds well); each defect adds a small bump in the quiet right half, below the left
    half's typical maximum."""
    g = torch.Generator().manual_seed(seed)
    maps = 0.01 * torch.rand(30, SIZE, SIZE, generator=g)
    maps[:, :, : SIZE // 2] += 1.0 + 0.5 * torch.rand(30, SIZE, SIZE // 2, generator=g)
    maps[24:, 20:24, 24:28] += 0.5
    return maps[:24], maps[24:]


def auroc(normal: torch.Tensor, defect: torch.Tensor) -> float:
    metric = ImageAUROC()
    metric.update_scores(torch.cat([normal, defect]), torch.tensor([0] * len(normal) + [1] * len(defect)))
    return float(metric.compute())


class Module(torch.nn.Module):
    """What ThresholdCalibration reads of a LightningModule: the generator, the threshold buffers, all_gather."""

    def __init__(self, generator: AnomalyMapGenerator) -> None:
        super().__init__()
        self.anomaly_map = generator
        self.image_threshold, self.pixel_threshold = torch.tensor(float("nan")), torch.tensor(float("nan"))

    @staticmethod
    def all_gather(t: torch.Tensor) -> torch.Tensor:
        return t[None]


def calibrated(image_score: str, reference: str = "none", sigma: float = 0.0, image_sigma: float | None = None,
               maps=normal_and_defect_maps) -> tuple[Module, torch.Tensor]:
    """A module calibrated on the held-out normal maps (the first 12), and the maps of the other 12."""
    normal, _ = maps()
    module = Module(AnomalyMapGenerator(sigma=sigma, reference=reference, image_size=SIZE, image_score=image_score,
                                        image_sigma=image_sigma))
    callback = ThresholdCalibration()
    callback._maps = [normal[:6], normal[6:12]]  # raw maps, as on_validation_batch_end keeps them
    callback.on_validation_epoch_end(None, module)
    return module, normal[12:]


def test_the_standardised_score_finds_a_defect_the_maximum_misses():
    module, normal = calibrated("normal_z")
    _, defect = normal_and_defect_maps()
    plain = AnomalyMapGenerator(sigma=0.0)
    assert auroc(plain.image_scores(normal), plain.image_scores(defect)) < 0.9  # the edge outshines the bump
    z = module.anomaly_map
    assert auroc(z.image_scores(normal), z.image_scores(defect)) == 1.0
    assert plain.score_parts(normal)[0] is normal  # image_score=max scores the map itself


@pytest.mark.parametrize("reference", ["none", "normal_mean"])
def test_calibration_sets_the_per_pixel_statistics_and_thresholds_the_standardised_scores(reference):
    module, _ = calibrated("normal_z", reference)
    normal, _ = normal_and_defect_maps()
    held_out = normal[:12]
    generator = module.anomaly_map
    std = held_out.std(0)
    torch.testing.assert_close(generator.normal_mean, held_out.mean(0))
    torch.testing.assert_close(generator.normal_std, std + STD_FLOOR * std.mean() + STD_EPS)
    scored = generator.subtract_reference(held_out)  # as the maps arrive: with the reference subtracted, if on
    z = generator.image_scores(scored)
    torch.testing.assert_close(z, ((held_out - held_out.mean(0)) / generator.normal_std).flatten(1).amax(1))
    assert float(module.image_threshold) == pytest.approx(float(torch.quantile(z, 0.99)))


def test_the_std_is_smoothed_like_the_map_and_floored():
    module, _ = calibrated("normal_z", sigma=2.0)
    generator = module.anomaly_map
    normal, _ = normal_and_defect_maps()
    std = generator.smooth(normal[:12].std(0)[None])[0]
    torch.testing.assert_close(generator.normal_std, std + STD_FLOOR * std.mean() + STD_EPS)
    flat = AnomalyMapGenerator(sigma=0.0, image_size=4, image_score="normal_z")
    flat.set_normal_statistics(torch.ones(4, 4), torch.zeros(4, 4))  # a map that never varies
    assert torch.isfinite(flat.image_scores(torch.ones(1, 4, 4))).all()


def test_before_any_validation_the_standardised_score_is_the_maximum():
    generator = AnomalyMapGenerator(sigma=0.0, image_size=SIZE, image_score="normal_z")
    maps = torch.rand(3, SIZE, SIZE)
    torch.testing.assert_close(generator.image_scores(maps), maps.flatten(1).amax(1))


def two_kinds_of_defect() -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out normal maps as ``normal_and_defect_maps`` makes them, then 12 more normal maps of which 3 carry a
    harmless faint bump where normal images are quiet, and 6 defects: 3 small bumps in the quiet half (the
    standardised map finds them, the maximum does not) and 3 large errors on the busy half (the maximum finds them;
    standardised, they are below the faint bumps)."""
    normal, defect = normal_and_defect_maps()
    normal = normal.clone()
    normal[12:15, 4:8, 24:28] += 0.05
    defect = defect.clone()
    defect[3:, 20:24, 24:28] -= 0.5
    defect[3:, 8:12, 4:8] += 1.0
    return normal, defect


@pytest.mark.parametrize("reference", ["none", "normal_mean"])
def test_max_and_z_adds_two_standardised_maxima_and_finds_both_kinds_of_defect(reference):
    module, normal = calibrated("max_and_z", reference, maps=two_kinds_of_defect)
    generator = module.anomaly_map
    held_out = two_kinds_of_defect()[0][:12]
    raw_max = generator.subtract_reference(held_out).flatten(1).amax(1)  # the map as the generator returns it
    z_max = ((held_out - held_out.mean(0)) / generator.normal_std).flatten(1).amax(1)
    torch.testing.assert_close(generator.score_mean, torch.stack([raw_max.mean(), z_max.mean()]))
    torch.testing.assert_close(generator.score_std, torch.stack([raw_max.std(), z_max.std()]) + STD_EPS)
    _, defect = two_kinds_of_defect()
    scored = [generator.subtract_reference(m) for m in (normal, defect)]  # as the maps arrive
    combined = generator.image_scores(scored[0])
    parts = [(p.flatten(1).amax(1) - mean) / std for p, mean, std in
             zip(generator.score_parts(scored[0]), generator.score_mean, generator.score_std)]
    torch.testing.assert_close(combined, parts[0] + parts[1])
    assert float(module.image_threshold) == pytest.approx(float(torch.quantile(
        generator.image_scores(generator.subtract_reference(held_out)), 0.99)))
    assert not generator.score_is_map_maximum
    if reference == "none":  # (with the reference the maximum's part is itself centred, and the faint bumps win)
        plain = AnomalyMapGenerator(sigma=0.0)
        z_only, _ = calibrated("normal_z", maps=two_kinds_of_defect)
        assert auroc(plain.image_scores(normal), plain.image_scores(defect)) < 0.9
        assert auroc(z_only.anomaly_map.image_scores(normal), z_only.anomaly_map.image_scores(defect)) < 0.9
        assert auroc(combined, generator.image_scores(defect)) == 1.0


def stray_pixels_and_regions(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw maps of 24 normal and 6 defective images: every image has one bright stray pixel somewhere (noise the
    model makes everywhere); each defect adds a dimmer 6 x 6 region."""
    g = torch.Generator().manual_seed(seed)
    maps = 0.01 * torch.rand(30, SIZE, SIZE, generator=g)
    where = torch.randint(4, SIZE - 4, (30, 2), generator=g)
    maps[torch.arange(30), where[:, 0], where[:, 1]] += 1.0
    maps[24:, 10:16, 12:18] += 0.4
    return maps[:24], maps[24:]


@pytest.mark.parametrize("image_score", ["max", "normal_z"])
def test_a_wider_image_sigma_scores_a_region_rather_than_a_stray_pixel(image_score):
    _, defect = stray_pixels_and_regions()
    aurocs = {}
    for image_sigma in (None, 2.0):
        module, normal = calibrated(image_score, image_sigma=image_sigma, maps=stray_pixels_and_regions)
        generator = module.anomaly_map
        aurocs[image_sigma] = auroc(generator.image_scores(normal), generator.image_scores(defect))
        x, recon = torch.rand(2, 3, SIZE, SIZE), torch.rand(2, 3, SIZE, SIZE)
        torch.testing.assert_close(generator(x, recon), AnomalyMapGenerator(sigma=0.0)(x, recon))  # pixel maps kept
    assert aurocs[None] < 0.7 and aurocs[2.0] == 1.0


def test_with_an_image_sigma_the_statistics_are_those_of_the_maps_the_score_reads():
    module, held = calibrated("normal_z", sigma=1.0, image_sigma=2.0)
    generator = module.anomaly_map
    normal, _ = normal_and_defect_maps()
    extra = generator.extra_sigma
    assert extra == pytest.approx(3 ** 0.5)
    smoothed = gaussian_smooth(normal[:12], extra)
    torch.testing.assert_close(generator.normal_mean, normal[:12].mean(0))  # the raw maps' mean: the reference's
    std = gaussian_smooth(smoothed.std(0)[None], 2.0)[0]
    torch.testing.assert_close(generator.normal_std, std + STD_FLOOR * std.mean() + STD_EPS)
    expected = (gaussian_smooth(held, extra) - smoothed.mean(0)) / generator.normal_std
    torch.testing.assert_close(generator.score_parts(held)[0], expected, rtol=1e-4, atol=1e-4)
    assert float(module.image_threshold) == pytest.approx(float(torch.quantile(
        generator.image_scores(normal[:12]), 0.99)))
    assert not generator.score_is_map_maximum and AnomalyMapGenerator(sigma=2.0).score_is_map_maximum


def test_gaussians_compose_so_the_extra_smoothing_reaches_the_image_sigma():
    maps = torch.rand(2, 64, 64, generator=torch.Generator().manual_seed(0))
    twice = gaussian_smooth(gaussian_smooth(maps, 2.0), (3.0 ** 2 - 2.0 ** 2) ** 0.5)
    once = gaussian_smooth(maps, 3.0)
    inner = (slice(None), slice(16, 48), slice(16, 48))  # away from the reflected borders
    torch.testing.assert_close(twice[inner], once[inner], rtol=0, atol=2e-3)


def test_a_score_the_onnx_map_cannot_reproduce_is_not_exported(tmp_path):
    generator = AnomalyMapGenerator(sigma=2.0, image_sigma=4.0, image_size=SIZE)
    with pytest.raises(ExportError, match="anomaly_map.image_sigma=4 is not exported"):
        export_onnx(SimpleNamespace(anomaly_map=generator), tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()


@pytest.mark.parametrize("kwargs,message", [({"image_score": "mean"}, "anomaly_map.image_score must be one of"),
                                            ({"image_score": "normal_z"}, "needs anomaly_map.image_size"),
                                            ({"image_score": "max_and_z"}, "needs anomaly_map.image_size"),
                                            ({"sigma": 4.0, "image_sigma": 2.0}, "anomaly_map.image_sigma must be >="),
                                            ({"sigma": 4.0, "image_sigma": 8.0, "image_size": 32},
                                             "anomaly_map.image_sigma=8 is too wide for a 32 px map"),
                                            ({"sigma": 8.0, "image_size": 32}, "anomaly_map.sigma=8 is too wide")])
def test_bad_settings_name_the_key(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AnomalyMapGenerator(**kwargs)


@pytest.mark.parametrize("image_score", ["normal_z", "max_and_z"])
def test_a_run_with_a_standardised_score_tests_predicts_and_refuses_export(tmp_path, image_score):
    run = tmp_path / "run"
    run_here("vitmemad.train", *TINY_DEMO, f"anomaly_map.image_score={image_score}", "anomaly_map.image_sigma=6",
             f"hydra.run.dir={run}")
    record = read_metrics(run)
    module = load_module(record["ckpt_path"])
    generator = module.anomaly_map
    assert generator.image_score == image_score and generator.image_sigma == 6.0
    assert not torch.equal(generator.normal_std, torch.ones_like(generator.normal_std))  # calibrated, saved
    if image_score == "max_and_z":
        assert (generator.score_std != 1).all() and (generator.score_mean != 0).all()
    assert record["image_AUROC"] is not None and record["pixel_AUROC"] is not None
    assert_real_png(run / "examples.png")  # the maps' colour scale comes from the pixel threshold here

    demo = write_demo_dataset(tmp_path / "demo", "brick", crop_size=64, n_train=1, n_test_good=1, n_test_defect=3)
    out = tmp_path / "predictions"
    run_here("vitmemad.predict", f"ckpt_path={record['ckpt_path']}", f"input={demo}/test/*/*.png", f"output={out}")
    rows = json.loads((out / "predictions.json").read_text())
    assert len(rows) == 4
    names = output_names([Path(row["path"]) for row in rows])
    for row, name in zip(rows, names):  # the score is the standardised score, not the written map's maximum
        amap = np.load(out / "maps" / f"{name}.npy")
        assert row["error"] is None and row["score"] != pytest.approx(float(amap.max()), rel=1e-3)

    refused = run_here("vitmemad.export", f"ckpt_path={record['ckpt_path']}", "format=onnx", check=False)
    assert refused.returncode == 2 and f"anomaly_map.image_score={image_score} is not exported" in refused.stderr


def test_eval_with_another_map_recalibrates_what_the_map_needs(tmp_path):
    """A standardised score's normal statistics and the thresholds belong to the map they were computed on: eval with
    another sigma recomputes them on the normal validation images, so it reports what a run trained with that sigma
    (the same weights: the map changes nothing in training) reports. Switched to the plain maximum, the saved
    statistics are dropped and the run scores as one trained with it."""
    common = [*TINY_DEMO, "anomaly_map.image_score=max_and_z", "num_threads=1"]
    for name, sigma in (("a", 4), ("b", 2)):
        run_here("vitmemad.train", *common, f"anomaly_map.sigma={sigma}", f"hydra.run.dir={tmp_path / name}")
    run_here("vitmemad.train", *TINY_DEMO, "num_threads=1", "anomaly_map.sigma=2", f"hydra.run.dir={tmp_path / 'max'}")
    trained_a = read_metrics(tmp_path / "a")
    for name, overrides in (("b", ["anomaly_map.sigma=2"]), ("max", ["anomaly_map.sigma=2", "anomaly_map.image_score=max"])):
        run_here("vitmemad.eval", f"ckpt_path={trained_a['ckpt_path']}", *overrides, "num_threads=1",
                 f"hydra.run.dir={tmp_path / ('eval_' + name)}")
        evaluated, trained = read_metrics(tmp_path / f"eval_{name}"), read_metrics(tmp_path / name)
        for key in ("image_AUROC", "pixel_AUROC", "PRO"):
            assert evaluated[key] == pytest.approx(trained[key], abs=1e-6), (name, key)
    evaluated = read_metrics(tmp_path / "eval_b")
    assert [k for k in ("pixel_AUROC", "PRO") if evaluated[k] != pytest.approx(trained_a[k], abs=1e-9)]  # sigma moved
