"""Paper-table experiments, category sweeps and the SLURM launcher: configs compose (Hydra API, nothing is
submitted), and the Table 6 smoke sweep followed by report.py gives a 4-row ablation table beside the paper's."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import OmegaConf

from helpers import TINY_DEMO, assert_real_png, load_report, read_metrics, run_here
from vitmemad.metrics.curves import pro_area, roc_area
from vitmemad.report import figures as report_figures
from vitmemad.report.style import bar_series, labelled_lines
from vitmemad.data import BTAD_PRODUCTS, DEMO_CATEGORIES, MVTEC_CATEGORIES
from vitmemad.paper import ABLATIONS

TABLES = ("table3_mvtec_image", "table4_mvtec_pixel", "table5_btad", "table6_ablation")


@pytest.fixture
def compose_cfg(compose):
    """The train config with its hydra node (sweeper, launcher, run dirs)."""
    return lambda *overrides: compose(*overrides, hydra_config=True)


def sweep_values(cfg, key: str) -> list:
    """What Hydra's basic sweeper makes of hydra.sweeper.params[key]: the list of values, typed."""
    parser = OverridesParser.create()
    override = parser.parse_overrides([f"{key}={cfg.hydra.sweeper.params[key]}"])[0]
    if not override.is_sweep_override():
        return [override.value()]
    # as BasicSweeper does: one `key=value` override per job, then parsed again for that job
    return [parser.parse_overrides([f"{key}={s}"])[0].value() for s in override.sweep_string_iterator()]


@pytest.mark.parametrize("data,expected", [("mvtec", MVTEC_CATEGORIES), ("btad", BTAD_PRODUCTS), ("demo", DEMO_CATEGORIES)])
def test_categories_all_sweeps_every_category_of_the_dataset(compose_cfg, data, expected):
    cfg = compose_cfg(f"data={data}", "categories=all")
    assert list(cfg.data.categories) == list(expected)
    values = sweep_values(cfg, "data.category")
    assert values == list(expected)
    assert all(isinstance(v, str) for v in values)  # BTAD "01" stays a string, not the int 1


def test_categories_can_be_narrowed_on_the_command_line(compose_cfg):
    cfg = compose_cfg("data=mvtec", "categories=all", "data.categories=[bottle,cable]")
    assert sweep_values(cfg, "data.category") == ["bottle", "cable"]


@pytest.mark.parametrize("name", TABLES)
def test_paper_table_experiments_use_the_full_settings(compose_cfg, name):
    cfg = compose_cfg(f"experiment={name}")
    assert cfg.hydra.mode == RunMode.MULTIRUN  # the experiment is its own sweep, -m or not
    assert cfg.model.net._target_ == "vitmemad.models.ViTMemAE" and cfg.data.image_size == 384
    assert cfg.trainer.max_epochs == 200 and cfg.model.net.encoder.image_size == 384
    assert cfg.model.net.encoder.embed_dim == 768 and cfg.model.optimizer.lr == 2e-4 and cfg.data.batch_size == 8
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "bf16-mixed"
    assert cfg.loss.lambda_ent == 0.001
    dataset = "btad" if name == "table5_btad" else "mvtec"
    assert cfg.data.name == dataset
    categories = sweep_values(cfg, "data.category")
    assert categories == list(BTAD_PRODUCTS if dataset == "btad" else MVTEC_CATEGORIES)
    params = set(cfg.hydra.sweeper.params)
    if name == "table6_ablation":
        assert sweep_values(cfg, "ablation") == list(ABLATIONS)
        assert params == {"data.category", "ablation"}
    elif name == "table3_mvtec_image":
        assert sweep_values(cfg, "model") == ["vitmemad_paper", "cae"]
        assert cfg.ablation.name == "m_ca"
    else:
        assert params == {"data.category"} and cfg.ablation.name == "m_ca"
    assert name in str(cfg.hydra.sweep.dir)


@pytest.mark.parametrize("name", TABLES)
def test_smoke_variants_run_the_same_sweep_small_on_the_cpu(compose_cfg, name):
    full, smoke = compose_cfg(f"experiment={name}"), compose_cfg(f"experiment={name}_smoke")
    assert smoke.hydra.mode == RunMode.MULTIRUN
    assert smoke.data.name == "demo" and smoke.trainer.accelerator == "cpu" and smoke.trainer.precision == "32-true"
    assert smoke.data.image_size <= 128 and smoke.trainer.max_epochs <= 5 and smoke.data.n_train <= 100
    assert smoke.model.net.encoder.image_size == smoke.data.image_size
    assert smoke.model.net.encoder.embed_dim <= 192 and smoke.model.net.encoder.depth <= 4
    if name == "table6_ablation":  # the 4 variants on one demo texture (categories=all adds the other two)
        assert set(smoke.hydra.sweeper.params) == {"ablation"} and smoke.data.category == "brick"
        assert sweep_values(smoke, "ablation") == list(ABLATIONS)
        assert sweep_values(compose_cfg(f"experiment={name}_smoke", "categories=all"), "data.category") == list(DEMO_CATEGORIES)
    else:
        assert set(smoke.hydra.sweeper.params) == set(full.hydra.sweeper.params)
        assert sweep_values(smoke, "data.category") == list(DEMO_CATEGORIES)


@pytest.mark.parametrize("launcher", ["submitit_slurm", "slurm"])
def test_slurm_launcher_composes_with_a_paper_table(compose_cfg, launcher, tmp_path, monkeypatch):
    cfg = compose_cfg("experiment=table6_ablation", f"hydra/launcher={launcher}", "hydra.launcher.partition=gpu",
                      "hydra.sweep.dir=/tmp/sweep")
    launcher_cfg = cfg.hydra.launcher
    assert launcher_cfg._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher_cfg.partition == "gpu"
    assert launcher_cfg.submitit_folder.startswith("/tmp/sweep/.submitit")
    if launcher == "slurm":
        assert launcher_cfg.gpus_per_node == 1 and launcher_cfg.tasks_per_node == 1 and launcher_cfg.timeout_min >= 600
    assert set(cfg.hydra.sweeper.params) == {"data.category", "ablation"}

    # Build the launcher and, as its launch() does, the submitit executor, and render the sbatch script.
    # Nothing is submitted; a fake `srun` on PATH lets submitit believe it is on a SLURM cluster.
    from hydra.utils import instantiate
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    import submitit

    launcher_obj = instantiate(launcher_cfg)
    assert type(launcher_obj).__name__ == "SlurmLauncher"
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ.get('PATH', '')}")
    params = dict(launcher_obj.params)
    params["name"] = "train"  # ${hydra.job.name}: set by Hydra at launch
    executor = submitit.AutoExecutor(cluster="slurm", folder=str(tmp_path / "submitit"),
                                     slurm_max_num_timeout=params.pop("max_num_timeout"))
    params.pop("submitit_folder")
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    sbatch = executor._executor._make_submission_file_text("python -m vitmemad.train", "uid")
    assert "#SBATCH --partition=gpu" in sbatch
    if launcher == "slurm":
        assert "#SBATCH --gpus-per-node=1" in sbatch and "#SBATCH --time=1440" in sbatch


def test_table6_smoke_sweep_then_report_gives_the_ablation_table(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_here("vitmemad.train", "-m", "experiment=table6_ablation_smoke", *TINY_DEMO,
                    f"hydra.sweep.dir={sweep}")
    jobs = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    assert [p.name for p in jobs] == ["0_base_brick", "1_m_brick", "2_ca_brick", "3_m_ca_brick"], proc.stdout[-2000:]
    for job, ablation in zip(jobs, ABLATIONS):
        m = read_metrics(job)
        assert m["ablation"] == ablation and m["category"] == "brick" and m["dataset"] == "demo"
        assert m["epochs"] == 1  # debug=smoke shrinks the smoke experiment further
        assert (m["memory"] is not None) == (ablation in ("m", "m_ca"))
    report = load_report()  # experiments/report.py, in this process (test_report runs the script itself)
    assert report.main([str(sweep), "--include-debug"]) == 0  # --include-debug: these are debug=smoke runs
    md = (sweep / "results.md").read_text()
    section = md.split("### Ablation (Table 6 style)")[1].split("Gain over Base")[0]
    rows = [line for line in section.splitlines() if line.startswith("| Base")]
    assert [r.split("|")[1].strip() for r in rows] == ["Base", "Base + M", "Base + CA", "Base + M + CA"]
    # the paper's Table 6 I-AUROC column (82.2, 85.7, 84.5, 91.2) is printed beside the measured values
    assert [r.split("|")[5].strip() for r in rows] == ["82.2", "85.7", "84.5", "91.2"]
    assert len((sweep / "results.csv").read_text().strip().splitlines()) == 5
    # every run stored its curves (re-integrating to its metrics) and drew curves.png; the report drew and
    # embedded the figures: curves, ablation and per-defect charts of brick, one line or bar series per variant
    for job in jobs:
        m = read_metrics(job)
        assert roc_area(m["curves"]["image_roc"]) == pytest.approx(m["image_AUROC"], abs=1e-3)
        assert roc_area(m["curves"]["pixel_roc"]) == pytest.approx(m["pixel_AUROC"], abs=1e-3)
        assert pro_area(m["curves"]["pro"]) == pytest.approx(m["PRO"], abs=1e-3)
        assert_real_png(job / "curves.png")
    names = sorted(p.name for p in (sweep / "figures").glob("*.png"))
    assert names == ["demo_brick_ablation.png", "demo_brick_curves.png", "demo_brick_per_defect.png"]
    for name in names:
        assert_real_png(sweep / "figures" / name)
        assert f"](figures/{name})" in md
    specs = {name: build for _, name, _, build in report_figures.figure_specs(report.collect([sweep]))}
    assert [len(labelled_lines(ax)) for ax in specs["demo_brick_curves"]().axes] == [4, 4]
    assert len(bar_series(specs["demo_brick_ablation"]().axes[0])) == 4  # demo: no paper bars


@pytest.mark.parametrize("model", ["vitmemad_real", "cae"])
def test_cpu_real_gives_the_baseline_the_same_schedule_and_map(compose_cfg, model):
    """`experiment=cpu_real model=cae` trains with the same schedule (epochs, batch, warm-up), input
    corruption and map."""
    overrides = ["experiment=cpu_real"] + (["model=cae"] if model == "cae" else [])
    cfg = compose_cfg(*overrides)
    assert cfg.hydra.runtime.choices.model == model
    assert (cfg.trainer.max_epochs, cfg.data.batch_size) == (150, 8)
    assert cfg.model.scheduler._target_ == "vitmemad.models.schedule.warmup_cosine"
    assert (cfg.model.scheduler.warmup_epochs, cfg.model.scheduler.cosine) == (5, True)
    assert cfg.model.optimizer.lr == (2e-3 if model == "vitmemad_real" else 1e-3)  # each model's best on validation
    assert (cfg.anomaly_map.source, cfg.anomaly_map.sigma) == ("all", 3.0)
    assert (cfg.anomaly_map.image_score, cfg.anomaly_map.image_sigma) == ("max", None)  # MVTec's: the map's maximum
    # both models score each image shifted onto the normal images' mean
    assert cfg.model.registration == cfg.registration
    assert (cfg.registration._target_, cfg.registration.max_shift) == ("vitmemad.models.ShiftRegistration", 4)
    assert cfg.data.augment is True and cfg.trainer.accelerator == "cpu"
    # the same denoising objective, handed to the module
    assert (cfg.corruption._target_, cfg.corruption.probability) == ("vitmemad.models.PatchSwap", 0.5)
    assert cfg.model.corruption == cfg.corruption
    if model == "vitmemad_real":  # the CPU preset, deeper, with memory items scaled to the 8 x 8 token positions
        base = compose_cfg()
        assert cfg.model.net.memory.size == 1000 and base.model.net.memory.size == 100
        assert (cfg.model.net.encoder.depth, base.model.net.encoder.depth) == (8, 4)
        assert {**cfg.model.net.encoder, "depth": 4} == base.model.net.encoder
        assert cfg.data.image_size == base.data.image_size == 128
    else:
        assert "memory" not in cfg.model.net and cfg.model.net._target_ == "vitmemad.models.ConvAutoencoder"


def _without_memory(cfg):
    """The config but the memory, its restarts, the commitment weight and Hydra's own record of the choices."""
    plain = OmegaConf.to_container(cfg, resolve=False)
    for node, key in ((plain["model"]["net"], "memory"), (plain["callbacks"], "memory_training"),
                      (plain, "loss"), (plain, "hydra")):
        node.pop(key)
    return plain


def test_cpu_real_has_a_nearest_item_memory_and_its_variants_change_only_the_memory(compose_cfg):
    """`experiment=cpu_real` reads each token out as 4 parts, each its nearest of 1,000 EMA items; `cpu_real_vq` is
    the same memory at 400 items and whole tokens, `cpu_real_paper_memory` the paper's soft memory (the preset before), and nothing else."""
    variants = ("cpu_real", "cpu_real_vq", "cpu_real_paper_memory")
    preset, vq400, paper = (compose_cfg(f"experiment={e}") for e in variants)
    memory = preset.model.net.memory
    assert tuple(memory[k] for k in ("addressing", "readout", "top_k", "update", "init", "size", "groups")) == (
        "euclidean", "topk", 1, "ema", "coreset", 1000, 4)
    assert memory.straight_through is True
    assert (preset.callbacks.memory_training.restart_every, preset.loss.lambda_mem) == (50, 0.2)
    assert OmegaConf.to_container(vq400.model.net.memory) == {**OmegaConf.to_container(memory), "size": 400,
                                                              "groups": 1}
    assert tuple(paper.model.net.memory[k] for k in ("addressing", "readout", "update", "init", "size")) == (
        "cosine", "soft", "gradient", "features", 400)
    assert paper.model.net.memory.straight_through is False
    assert (paper.callbacks.memory_training.restart_every, paper.loss.lambda_mem) == (0, 0.0)
    default_memory = compose_cfg().model.net.memory  # the paper's memory is the CPU preset's, with 400 items
    assert OmegaConf.to_container(paper.model.net.memory) == {**OmegaConf.to_container(default_memory), "size": 400}
    assert _without_memory(vq400) == _without_memory(preset) == _without_memory(paper)


@pytest.mark.parametrize("experiment", ["cpu_real", "cpu_real_vq", "cpu_real_paper_memory"])
def test_every_cpu_real_variant_gives_the_same_cae_baseline(compose_cfg, experiment):
    """The memory belongs to the ViT's model config: `model=cae` gets none of it, whichever variant."""
    cae = compose_cfg(f"experiment={experiment}", "model=cae")
    assert "memory" not in cae.model.net and cae.loss.lambda_mem == 0.0
    assert cae.callbacks.memory_training.restart_every == 0
    reference = OmegaConf.to_container(compose_cfg("experiment=cpu_real", "model=cae"), resolve=False)
    plain = OmegaConf.to_container(cae, resolve=False)
    plain.pop("hydra"), reference.pop("hydra")
    assert plain == reference
