"""λ / memory-size search: configs compose, the labelled validation split never overlaps the test half, and a
tiny grid run ranks its jobs by the validation metric the train entry returns."""
from __future__ import annotations

import csv
from collections import Counter

import pytest
import yaml

from helpers import TINY_DEMO, read_metrics, run_here
from vitmemad.callbacks.labelled_validation import check_optimized_metric
from vitmemad.data import DemoDataModule, DatasetError, Sample
from vitmemad.data.labelled_split import stratified_split
from vitmemad.errors import ConfigError

GRID = {"loss.lambda_ssim", "loss.lambda_ent", "model.net.memory.size"}


@pytest.fixture
def compose_cfg(compose):
    """The train config with its hydra node (sweeper, callbacks)."""
    return lambda *overrides: compose(*overrides, hydra_config=True)


def test_grid_selects_on_a_normal_only_metric_that_does_not_depend_on_the_lambdas(compose_cfg):
    cfg = compose_cfg("hparams_search=lambda_grid")
    assert cfg.hydra.sweeper._target_.endswith("BasicSweeper") and set(cfg.hydra.sweeper.params) == GRID
    assert cfg.optimized_metric == "val/recon_unweighted" and cfg.data.labelled_val_fraction is None
    assert cfg.hydra.callbacks.search_summary.direction == "minimize"
    assert cfg.test_ckpt is None  # searches do not look at the test set


@pytest.mark.parametrize("name", ["lambda_grid_labelled", "lambda_optuna"])
def test_labelled_searches_maximise_validation_auroc(compose_cfg, name):
    cfg = compose_cfg(f"hparams_search={name}")
    assert cfg.optimized_metric == "val/image_AUROC" and cfg.data.labelled_val_fraction == 0.5
    assert cfg.hydra.callbacks.search_summary.direction == "maximize" and cfg.test_ckpt is None
    assert set(cfg.hydra.sweeper.params) == GRID
    if name == "lambda_optuna":
        assert cfg.hydra.sweeper._target_ == "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
        assert cfg.hydra.sweeper.direction == "maximize" and cfg.hydra.sweeper.n_trials >= 20
        from hydra.utils import instantiate

        assert type(instantiate(cfg.hydra.sweeper.sampler)).__name__ == "TPESampler"


def test_selecting_on_validation_auroc_needs_the_labelled_split():
    with pytest.raises(ConfigError, match="labelled_val_fraction"):
        check_optimized_metric("val/image_AUROC", {"labelled_val_fraction": None})
    check_optimized_metric("val/image_AUROC", {"labelled_val_fraction": 0.5})
    check_optimized_metric("val/loss", {})


def _samples() -> list[Sample]:
    good = [Sample(f"good_{i}", 0, "good") for i in range(21)]
    bad = [Sample(f"{d}_{i}", 1, d, f"m_{d}_{i}") for d, n in (("scratch", 7), ("spot", 6), ("patch", 3)) for i in range(n)]
    return good + bad


def test_stratified_split_is_seeded_disjoint_and_keeps_the_defect_mix():
    samples = _samples()
    val, test = stratified_split(samples, 0.5, seed=0)
    assert not set(val) & set(test) and sorted(val + test) == list(range(len(samples)))
    assert (val, test) == stratified_split(samples, 0.5, seed=0)
    assert val != stratified_split(samples, 0.5, seed=1)[0]
    mix = Counter(samples[i].defect for i in val)
    assert abs(mix["good"] - 10.5) <= 0.5 and abs(mix["scratch"] - 3.5) <= 0.5 and mix["patch"] in (1, 2)
    for part in (val, test):
        assert {samples[i].label for i in part} == {0, 1}
    # tiny sets still keep both classes on both sides
    tiny = [Sample("g0", 0, "good"), Sample("g1", 0, "good"), Sample("a0", 1, "spot", "m"), Sample("a1", 1, "spot", "m")]
    for fraction in (0.1, 0.5, 0.9):
        v, t = stratified_split(tiny, fraction, seed=3)
        assert {tiny[i].label for i in v} == {tiny[i].label for i in t} == {0, 1}
    with pytest.raises(DatasetError):
        stratified_split(samples, 1.0, seed=0)


def test_labelled_split_datamodule_tests_only_the_test_half():
    small = dict(image_size=32, batch_size=4, crop_size=32, n_train=8, n_test_good=6, n_test_defect=6)
    plain = DemoDataModule(**small)
    assert plain.labelled_val_dataloader() is None and plain.num_test_images == 12  # no split unless asked for
    dm = DemoDataModule(**small, labelled_val_fraction=0.5, labelled_val_seed=0)
    dm.setup("fit")
    val_paths = {p for b in dm.labelled_val_dataloader() for p in b["path"]}
    test_paths = {p for b in dm.test_dataloader() for p in b["path"]}
    train_paths = {p for b in dm.train_dataloader() for p in b["path"]} | {p for b in dm.val_dataloader() for p in b["path"]}
    assert len(val_paths) == len(test_paths) == 6 and not val_paths & test_paths
    assert val_paths | test_paths == {s.path for s in dm.samples()[1]} == {s.path for s in plain.samples()[1]}
    assert not train_paths & (val_paths | test_paths)
    assert dm.num_test_images == 6
    again = DemoDataModule(**small, labelled_val_fraction=0.5, labelled_val_seed=0)  # the same halves every run
    assert {p for b in again.labelled_val_dataloader() for p in b["path"]} == val_paths
    with pytest.raises(DatasetError, match="labelled_val_fraction"):
        DemoDataModule(**small, labelled_val_fraction=1.5)


def test_tiny_labelled_grid_ranks_jobs_by_validation_auroc_and_never_tests(tmp_path):
    sweep = tmp_path / "sweep"
    # model.memory.size: the old spelling of the grid key model.net.memory.size
    run_here("vitmemad.train", "hparams_search=lambda_grid_labelled", "loss.lambda_ssim=0.5,1.0",
             "loss.lambda_ent=0.001", "model.memory.size=16", *TINY_DEMO, "trainer.max_epochs=2",
             f"hydra.sweep.dir={sweep}")
    with open(sweep / "search_results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["rank"] for r in rows] == ["1", "2"] and {r["status"] for r in rows} == {"COMPLETED"}
    values = [float(r["val/image_AUROC"]) for r in rows]
    assert values == sorted(values, reverse=True) and all(0.0 <= v <= 1.0 for v in values)
    best = yaml.safe_load((sweep / "search_best.yaml").read_text())
    assert best["metric"] == "val/image_AUROC" and best["direction"] == "maximize"
    assert best["best"]["value"] == values[0] and best["best"]["output_dir"] == rows[0]["output_dir"]
    assert not list(sweep.glob("*/metrics.json"))  # no test during the search
    # the chosen run is tested afterwards on the held-out test half (its checkpoint carries the split)
    (ckpt,) = (sweep / best["best"]["output_dir"].rsplit("/", 1)[1] / "checkpoints").glob("best-*.ckpt")
    run_here("vitmemad.eval", f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'eval'}")
    tested = read_metrics(tmp_path / "eval")
    assert tested["num_test_images"] == 6 and tested["labelled_val_fraction"] == 0.5
