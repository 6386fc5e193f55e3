"""Shared pytest fixtures: paths to the read-only real data beside the checkout, config composition, and one
finished smoke run that tests needing only "a trained checkpoint" share."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# Keep tests light on a 2-core machine.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("WANDB_MODE", "offline")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VITMEMAD_SHARED", REPO_ROOT.parent / "shared"))
MVTEC_ROOT = SHARED / "data" / "mvtec"
TIRE_ROOT = SHARED / "data" / "mvtec3d_tire_rgb"
ORACLE_PATH = SHARED / "oracle" / "pro_oracle.npz"


@pytest.fixture(scope="session")
def mvtec_root() -> Path:
    if not (MVTEC_ROOT / "bottle" / "train" / "good").is_dir():
        pytest.skip(f"real MVTec data not found at {MVTEC_ROOT}")
    return MVTEC_ROOT


@pytest.fixture(scope="session")
def tire_root() -> Path:
    """MVTec 3D-AD tire, RGB only, in the MVTec AD layout (../shared/data/README.md)."""
    if not (TIRE_ROOT / "tire" / "train" / "good").is_dir():
        pytest.skip(f"real tire data not found at {TIRE_ROOT}")
    return TIRE_ROOT


@pytest.fixture(scope="session")
def oracle_path() -> Path:
    if not ORACLE_PATH.is_file():
        pytest.skip(f"metric oracle not found at {ORACLE_PATH}")
    return ORACLE_PATH


@pytest.fixture
def compose():
    """The one way tests compose configs: ``compose(*overrides, config_name="train", hydra_config=False)``.

    ``vitmemad.config.compose``: what a Hydra main sees (old key spellings rewritten; for ``train`` the
    ablation and debug switches applied by ``vitmemad.config.prepare``).
    """
    from vitmemad.config import compose as compose_config

    def _compose(*overrides: str, config_name: str = "train", hydra_config: bool = False):
        return compose_config(config_name, list(overrides), hydra_config=hydra_config)

    return _compose


@pytest.fixture
def compose_plain(compose):
    """``compose`` resolved to plain containers (``vitmemad.config.to_plain``), as a run saves its config;
    the output folder is a placeholder (nothing is written)."""
    from vitmemad.config import to_plain

    def _compose_plain(*overrides: str, config_name: str = "train", output_dir: str = "/tmp/unused"):
        cfg = compose(*overrides, config_name=config_name)
        if "paths" in cfg:
            cfg.paths.output_dir = output_dir
        return to_plain(cfg)

    return _compose_plain


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> Path:
    """One finished ``TINY_DEMO`` run (one epoch), trained once per test session in this process.

    Read it, never write into it: a test that adds files beside the checkpoint copies the folder first
    (``shutil.copytree``) so that the tests stay independent.
    """
    from helpers import TINY_DEMO, run_here

    run_dir = tmp_path_factory.mktemp("smoke_run") / "run"
    run_here("vitmemad.train", *TINY_DEMO, "num_threads=1", f"hydra.run.dir={run_dir}")
    return run_dir
