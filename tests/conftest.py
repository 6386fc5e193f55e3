"""Shared pytest fixtures: paths to the read-only real data beside the checkout."""
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
ORACLE_PATH = SHARED / "oracle" / "pro_oracle.npz"


@pytest.fixture(scope="session")
def mvtec_root() -> Path:
    if not (MVTEC_ROOT / "bottle" / "train" / "good").is_dir():
        pytest.skip(f"real MVTec data not found at {MVTEC_ROOT}")
    return MVTEC_ROOT


@pytest.fixture(scope="session")
def oracle_path() -> Path:
    if not ORACLE_PATH.is_file():
        pytest.skip(f"metric oracle not found at {ORACLE_PATH}")
    return ORACLE_PATH
