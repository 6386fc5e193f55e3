"""Helpers for tests that run the real entry points."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# A tiny demo: the smoke preset plus a handful of crops. Seconds per run on 2 cores.
TINY_DEMO = ["debug=smoke", "data.n_train=24", "data.n_test_good=6", "data.n_test_defect=6", "data.crop_size=64"]


def run_module(module: str, *overrides: str, timeout: float = 300, check: bool = True,
               cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    """``python -m module overrides`` in ``cwd`` (the checkout's package first on the path, wherever ``cwd`` is)."""
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "2", "PYTHONWARNINGS": "ignore"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, "-m", module, *overrides], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} {' '.join(overrides)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def read_metrics(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "metrics.json").read_text())


def load_report():
    """experiments/report.py as a module (it is a script, not part of the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("vitmemad_report_script", REPO_ROOT / "experiments" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_real_png(path: Path) -> None:
    """A PNG that decodes, of a readable size (>= 300 x 200 px), that is not one flat colour."""
    from PIL import Image

    assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as img:
        img.load()
        assert img.format == "PNG" and img.width >= 300 and img.height >= 200, (path, img.size)
        assert any(lo != hi for lo, hi in img.convert("RGB").getextrema()), f"{path} is a single colour"
