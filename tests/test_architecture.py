"""The shape of the code: old checkpoints and training results survive the config-driven build, the package
installs and runs from a wheel, and the modules stay small, acyclic and free of import-time side effects."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import REPO_ROOT, TINY_DEMO, read_metrics, run_here, run_module

FIXTURES = REPO_ROOT / "tests" / "fixtures" / "checkpoints"
PACKAGE = REPO_ROOT / "vitmemad"
# image AUROC, pixel AUROC, PRO of the smoke-size runs that wrote the fixtures (TINY_DEMO, seed 0, one thread,
# fp32) before models were configured by _target_; training the same config today must give the same numbers.
PINNED = {
    "vitmemad_cpu": (0.7777777777777778, 0.7589172257055977, 0.6724951522415956),
    "cae": (0.6944444444444444, 0.7784253520062742, 0.6569310085188121),
    "patchcore": (1.0, 0.7251240178320754, 0.4878495273560604),
}
# Training rounds differently on different CPUs (kernel choice by vector width and vendor), so a model trained
# today matches the pins to ~1e-4, not bit for bit: an AVX2-only CPU and an AVX512 AMD EPYC gave pixel AUROC and
# PRO within 1.2e-4 of them, image AUROC (steps of 1/36 here) the same. They move by far more when the build
# changes (initialisation, layers, data order); a 1 % change of the learning rate moved them by only 2e-5 at this
# size, so the test guards the build, not the hyperparameters. Evaluating the fixtures, which involves no
# training, stays exact.
TRAINING_ATOL = 5e-4
METRICS = ("image_AUROC", "pixel_AUROC", "PRO")


def _assert_pinned(record: dict, model: str, atol: float = 1e-6) -> None:
    got = tuple(record[k] for k in METRICS)
    assert np.allclose(got, PINNED[model], rtol=0, atol=atol), (model, got, PINNED[model])


@pytest.mark.parametrize("model", sorted(PINNED))
def test_training_gives_the_pinned_metrics(tmp_path, model):
    run_here("vitmemad.train", f"model={model}", *TINY_DEMO, "seed=0", "num_threads=1",
             f"hydra.run.dir={tmp_path}")
    record = read_metrics(tmp_path)
    _assert_pinned(record, model, atol=TRAINING_ATOL)
    assert record["ablation"] == ("m_ca" if model == "vitmemad_cpu" else None)
    assert record["debug"] == "smoke"


@pytest.mark.parametrize("model", [m if m == "vitmemad_cpu" else pytest.param(m, marks=pytest.mark.slow)
                                   for m in sorted(PINNED)])  # the other two: the same path, a minute more
def test_old_checkpoints_evaluate_predict_and_export(tmp_path, model):
    ckpt = FIXTURES / f"{model}_57ae7d2.ckpt"
    run_here("vitmemad.eval", f"ckpt_path={ckpt}", "num_threads=1", f"hydra.run.dir={tmp_path / 'eval'}")
    _assert_pinned(read_metrics(tmp_path / "eval"), model)

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(images / f"part_{i}.png")
    run_here("vitmemad.predict", f"ckpt_path={ckpt}", f"input={images}", f"output={tmp_path / 'preds'}",
             f"hydra.run.dir={tmp_path / 'predict'}")
    rows = json.loads((tmp_path / "preds" / "predictions.json").read_text())
    assert [r["error"] for r in rows] == [None, None] and all(np.isfinite(r["score"]) for r in rows)
    assert np.load(tmp_path / "preds" / "maps" / "part_0.npy").shape == (48, 40)

    onnx_file = tmp_path / "model.onnx"
    run_here("vitmemad.export", f"ckpt_path={ckpt}", f"output={onnx_file}", f"hydra.run.dir={tmp_path / 'export'}")
    assert onnx_file.stat().st_size > 0


def test_a_wheel_installs_and_trains_outside_the_repository(tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(REPO_ROOT)], check=True, capture_output=True, text=True,
                   timeout=300, cwd=tmp_path)
    assert (target / "vitmemad" / "conf" / "train.yaml").is_file()
    assert (target / "vitmemad" / "paper_results.yaml").is_file()
    env = {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "2", "WANDB_MODE": "offline"}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run([sys.executable, "-m", "vitmemad.train", *TINY_DEMO, f"hydra.run.dir={elsewhere / 'run'}"],
                          cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_metrics(elsewhere / "run")["image_AUROC"] is not None
    probe = "import vitmemad.config as c; print(c.CONF_DIR)"
    where = subprocess.run([sys.executable, "-c", probe], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert Path(where.stdout.strip()) == target / "vitmemad" / "conf"


# ------------------------------------------------------------------ static shape of the package
def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__"): p
            for p in PACKAGE.rglob("*.py")}


def _imports(path: Path, name: str) -> set[str]:
    """vitmemad modules imported at module level (not inside functions)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
    # importing a.b.c runs the __init__ of a.b first: that is an import too
    found |= {".".join(m.split(".")[:i]) for m in found for i in range(1, m.count(".") + 1)}
    return {m for m in found if m.startswith("vitmemad")}


def test_files_and_lines_stay_small():
    for path in PACKAGE.rglob("*.py"):
        lines = path.read_text().splitlines()
        assert len(lines) <= 300, f"{path} has {len(lines)} lines"
        long = [i + 1 for i, line in enumerate(lines) if len(line) > 120]
        assert not long, f"{path}: lines over 120 characters: {long}"
    models = PACKAGE / "models"
    lightning = [models / "module.py", models / "reconstruction_module.py"]
    assert sum(len(p.read_text().splitlines()) for p in lightning) < 200


def test_data_does_not_depend_on_models_and_no_module_imports_itself_back():
    modules = _modules()
    graph = {name: {m for m in _imports(path, name) if m in modules and m != name} for name, path in modules.items()}
    for name, deps in graph.items():
        if name.startswith("vitmemad.data"):
            assert not any(d.startswith("vitmemad.models") for d in deps), (name, deps)

    edges = {a: {b for b in deps if not _package_and_member(a, b)} for a, deps in graph.items()}
    assert not _cycle(edges), f"modules that import each other (directly or around a loop): {_cycle(edges)}"


def _package_and_member(a: str, b: str) -> bool:
    """A package's __init__ re-exporting its own submodule (or a submodule importing its package) is no cycle."""
    return a.startswith(b + ".") or b.startswith(a + ".")


def _cycle(edges: dict[str, set[str]]) -> list[str]:
    """One import loop of the graph, or [] (depth-first search with an explicit path)."""
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str]:
        state[node] = 1
        for dep in sorted(edges.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (loop := visit(dep, path + [dep])):
                return loop
        state[node] = 2
        return []

    for start in sorted(edges):
        if start not in state and (loop := visit(start, [start])):
            return loop
    return []


def test_importing_any_module_changes_no_global_state():
    code = (
        "import os, pkgutil, importlib, vitmemad; from omegaconf import OmegaConf\n"
        "import torch, lightning, hydra, timm, kornia, torchmetrics  # their own import-time settings\n"
        "before = dict(os.environ)\n"
        "for m in pkgutil.walk_packages(vitmemad.__path__, 'vitmemad.'):\n"
        "    importlib.import_module(m.name)\n"
        "assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items())\n"
        "assert not OmegaConf.has_resolver('vitmemad.sweep')\n"
        "import lightning.pytorch.strategies.launchers.subprocess_script as s\n"
        "assert s._hydra_subprocess_cmd.__module__.startswith('lightning'), s._hydra_subprocess_cmd.__module__\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
