"""experiments/select_map.py: anomaly-map settings scored on the labelled validation half of the test set.

Its scoring must be the pipeline's: on the whole test set, the l2 map at the run's sigma gives exactly the
figures that training wrote to metrics.json."""
from __future__ import annotations

import json
import sys

import pytest
import torch

from helpers import REPO_ROOT, TINY_DEMO, read_metrics, run_here

sys.path.insert(0, str(REPO_ROOT / "experiments"))
import select_map  # noqa: E402


@pytest.fixture(scope="module")
def run(smoke_run):
    """The shared smoke run (one epoch, the l2 map at sigma 4, the tests below rely on it)."""
    from vitmemad.checkpoint import load_checkpoint

    record = read_metrics(smoke_run)
    anomaly_map = load_checkpoint(record["ckpt_path"])["hyper_parameters"]["cfg"]["anomaly_map"]
    assert (anomaly_map["source"], anomaly_map["sigma"]) == ("l2", 4.0)
    return record


def _rows(capsys, *args: str) -> list[dict]:
    assert select_map.main(list(args)) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_whole_test_set_l2_reproduces_the_pipeline_metrics(run, capsys):
    rows = _rows(capsys, run["ckpt_path"], "--part", "all", "--sources", "l2", "--sigmas", "4")
    row = rows[0]
    assert (row["source"], row["sigma"]) == ("l2", 4.0)
    for key in select_map.METRICS:
        assert row[key] == pytest.approx(run[key], abs=1e-6), key


def test_the_all_source_is_the_pipelines_map_as_eval_writes_it(run, capsys, tmp_path):
    """L2 + SSIM + MSGMS scored here equals `vitmemad eval` of the same checkpoint with that map."""
    row = _rows(capsys, run["ckpt_path"], "--part", "all", "--sources", "all", "--sigmas", "3")[0]
    run_here("vitmemad.eval", f"ckpt_path={run['ckpt_path']}", "anomaly_map.source=all", "anomaly_map.sigma=3",
             "num_threads=1", f"hydra.run.dir={tmp_path}")
    evaluated = read_metrics(tmp_path)
    assert (evaluated["anomaly_map"]["source"], evaluated["anomaly_map"]["sigma"]) == ("all", 3.0)
    for key in select_map.METRICS:
        assert row[key] == pytest.approx(evaluated[key], abs=1e-6), key
    assert row["PRO"] != pytest.approx(run["PRO"], abs=1e-9)  # not the run's own l2 map at sigma 4


@pytest.fixture(scope="module")
def referenced_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("train_referenced")
    run_here("vitmemad.train", *TINY_DEMO, "trainer.max_epochs=1", "anomaly_map.sigma=4",
             "anomaly_map.reference=normal_mean", "num_threads=1", f"hydra.run.dir={run_dir}")
    return read_metrics(run_dir)


def test_a_normal_mean_reference_is_the_validation_images_mean_map_and_is_reproduced(referenced_run, capsys):
    import torch

    from vitmemad.inference import load_module
    from vitmemad.models.anomaly_map import AnomalyMapGenerator

    rows = _rows(capsys, referenced_run["ckpt_path"], "--part", "all", "--sources", "l2", "--sigmas", "4")
    for key in select_map.METRICS:
        assert rows[0][key] == pytest.approx(referenced_run[key], abs=1e-6), key
    module = load_module(referenced_run["ckpt_path"])
    errors = select_map.reference_errors(module, module.run_config, "32-true")
    smoother = AnomalyMapGenerator(sigma=4.0)
    mean = sum(select_map.smoothed(errors, i, "l2", smoother) for i in range(len(errors["l2"]))) / len(errors["l2"])
    saved = module.anomaly_map.normal_mean
    assert saved.shape == (64, 64) and saved.abs().sum() > 0
    assert torch.allclose(saved, mean[0], atol=1e-6)
    raw = _rows(capsys, referenced_run["ckpt_path"], "--part", "all", "--sources", "l2", "--sigmas", "4",
                "--reference", "none")
    assert raw[0]["pixel_AUROC"] != rows[0]["pixel_AUROC"]  # the reference is in effect


def test_validation_half_grid_and_choice(run, capsys, tmp_path):
    out = tmp_path / "grid.json"
    rows = _rows(capsys, run["ckpt_path"], "--sources", "l2", "ssim", "both", "--sigmas", "0", "8", "--out", str(out))
    grid, choice = rows[:-1], rows[-1]["best_mean_rank"]
    assert [(r["source"], r["sigma"]) for r in grid] == [(s, g) for s in ("l2", "ssim", "both") for g in (0.0, 8.0)]
    assert all(r["part"] == "val" and 0.0 <= r[k] <= 1.0 for r in grid for k in select_map.METRICS)
    assert choice in grid and json.loads(out.read_text()) == grid
    # smoothing changes the scores: the grid is not one number repeated
    assert len({round(r["pixel_AUROC"], 9) for r in grid}) > 1


def test_mean_rank_prefers_the_row_that_wins_most_metrics():
    rows = [{"image_AUROC": 0.9, "pixel_AUROC": 0.8, "PRO": 0.7},
            {"image_AUROC": 0.95, "pixel_AUROC": 0.85, "PRO": 0.6},
            {"image_AUROC": 0.5, "pixel_AUROC": 0.9, "PRO": 0.5}]
    assert select_map.best_by_mean_rank(rows) is rows[1]


def test_image_scores_raw_max_is_select_maps_setting_and_the_variants_differ(run, capsys):
    import image_scores

    expected = _rows(capsys, run["ckpt_path"], "--sources", "l2", "--sigmas", "4")[0]
    assert image_scores.main([run["ckpt_path"], "--sigmas", "4", "--source", "l2"]) == 0
    rows = {r["map"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert set(rows) == {"raw", "sub", "z"}
    for key in select_map.METRICS:
        assert rows["raw"]["max" if key == "image_AUROC" else key] == pytest.approx(expected[key], abs=1e-4), key
    assert rows["sub"]["pixel_AUROC"] != rows["raw"]["pixel_AUROC"]
    assert image_scores.main([run["ckpt_path"], "--readout"]) == 0
    (readout,) = map(json.loads, capsys.readouterr().out.splitlines())
    assert readout["map"] == "readout" and 0.0 <= readout["max"] <= 1.0


def test_the_readout_map_is_the_memory_residual_of_the_models_own_forward(run):
    """Caught on the memory module, so it holds for pixel and feature-space models alike."""
    import image_scores
    from vitmemad.inference import load_module

    module = load_module(run["ckpt_path"])
    size = module.run_config["data"]["image_size"]
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    (residual_map,) = image_scores.readout_maps(module, [{"image": image[0]}], "32-true")
    with torch.no_grad():
        z = module.net.encoder(image)
        z_hat, _ = module.net.memory(z)
    expected = image_scores.resize_maps((z - z_hat).pow(2).sum(1), (size, size))[0]
    torch.testing.assert_close(residual_map, expected)


def test_score_evidence_leaves_out_each_defect_and_borrows_a_mask_for_good_images():
    import score_evidence

    masks = torch.zeros(3, 8, 8, dtype=torch.bool)
    masks[1, 2, 2] = masks[2, 5, 6] = True
    out = score_evidence.left_out(masks, [0, 1, 1], dilate=0)
    assert torch.equal(out[1], masks[1]) and torch.equal(out[2], masks[2])
    assert torch.equal(out[0], masks[1])  # the good image loses the area of a defective one
    dilated = score_evidence.left_out(masks, [0, 1, 1], dilate=1)
    assert int(dilated[1].sum()) == 9 and bool(dilated[1, 1, 1]) and not bool(dilated[1, 4, 4])


def test_score_evidence_whole_image_rows_are_the_pipelines_image_auroc(run, capsys):
    import score_evidence

    assert score_evidence.main([run["ckpt_path"], "--dilate", "0", "8"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    plain = [r for r in rows if r["score"] == "max"]
    assert {r["dilate"] for r in plain} == {0, 8}
    assert all(r["image_AUROC"] == pytest.approx(run["image_AUROC"], abs=1e-4) for r in plain)
    assert {r["score"] for r in rows} == {"max", "normal_z", "max_and_z"}
    assert all(0.0 <= r["outside_defects"] <= 1.0 and 0.0 <= r["at_defect"] <= 1.0 for r in rows)


def test_score_evidence_at_defect_counts_defective_images_whose_score_drops():
    import score_evidence

    whole = torch.tensor([5.0, 3.0, 2.0, 4.0])
    outside = torch.tensor([5.0, 1.0, 2.0, 4.0])  # only image 1's maximum was at its defect
    assert score_evidence.share_at_defect(whole, outside, [0, 1, 1, 0]) == 0.5
    assert score_evidence.share_at_defect(whole, outside, [1, 0, 1, 1]) == 0.0


def test_max_shift_scores_a_checkpoint_registered_and_zero_is_the_plain_pipeline(run, capsys):
    plain = _rows(capsys, run["ckpt_path"], "--part", "all", "--sources", "l2", "--sigmas", "4", "--max-shift", "0")[0]
    for key in select_map.METRICS:
        assert plain[key] == pytest.approx(run[key], abs=1e-6), key
    from vitmemad.inference import load_module

    module = load_module(run["ckpt_path"])
    select_map.set_registration(module, 2)
    assert module.registers and module.registration.max_shift == 2
    normal = torch.stack([i["image"] for i in select_map.normal_validation_items(module.run_config)])
    torch.testing.assert_close(module.registration.reference, normal.mean(0))


def test_eval_registers_a_checkpoint_trained_without_registration_as_select_map_does(run, capsys, tmp_path):
    """`vitmemad eval registration=shift` scores an unregistered run registered (its reference: the run's normal
    validation images' mean), with the figures select_map's --max-shift gives; unset, the checkpoint's own."""
    registered = _rows(capsys, run["ckpt_path"], "--part", "all", "--sources", "l2", "--sigmas", "4",
                       "--max-shift", "2")[0]
    run_here("vitmemad.eval", f"ckpt_path={run['ckpt_path']}", "registration=shift", "registration.max_shift=2",
             "num_threads=1", f"hydra.run.dir={tmp_path / 'shift'}")
    record = read_metrics(tmp_path / "shift")
    for key in select_map.METRICS:
        assert record[key] == pytest.approx(registered[key], abs=1e-6), key
    # a checkpoint written before the model config had a registration key is registered the same way
    ckpt = torch.load(run["ckpt_path"], map_location="cpu", weights_only=False)
    del ckpt["hyper_parameters"]["cfg"]["model"]["registration"], ckpt["hyper_parameters"]["cfg"]["registration"]
    torch.save(ckpt, tmp_path / "older.ckpt")
    run_here("vitmemad.eval", f"ckpt_path={tmp_path / 'older.ckpt'}", "registration=shift", "registration.max_shift=2",
             "num_threads=1", f"hydra.run.dir={tmp_path / 'older'}")
    assert read_metrics(tmp_path / "older")["PRO"] == pytest.approx(registered["PRO"], abs=1e-6)


def test_score_evidence_offsets_cover_the_validation_images_and_every_defect_type(run, capsys):
    import score_evidence

    assert score_evidence.main([run["ckpt_path"], "--offsets", "--max-shift", "2"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows[0]["images"] == "validation (normal)" and rows[0]["count"] > 0
    assert {r["images"] for r in rows[1:]} >= {"good"} and len(rows) >= 3
    assert all(abs(r["mean_dx"]) <= 2 and abs(r["mean_dy"]) <= 2 for r in rows)
