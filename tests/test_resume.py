"""Resume after SIGKILL, reproducibility, and what trained checkpoints guarantee.

One tiny reference run (5 epochs, deterministic) is shared by the tests of this module.
"""
from __future__ import annotations

import copy
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from helpers import REPO_ROOT, TINY_DEMO, read_metrics, run_module
from test_cli_errors import assert_one_line_error, run_cli
from vitmemad.build import build_module
from vitmemad.checkpoint import CheckpointError, load_checkpoint, load_state_dict_strict
from vitmemad.config import prepare
from vitmemad.utils.checkpoint_io import AtomicCheckpointIO, temp_files

EPOCHS = 5
RUN_ARGS = [*TINY_DEMO, f"trainer.max_epochs={EPOCHS}", "trainer.deterministic=true", "num_threads=1"]
METRIC_KEYS = ("image_AUROC", "pixel_AUROC", "PRO", "per_defect", "epochs", "num_test_images", "seed", "category")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted run: the yardstick for resume and reproducibility."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    run_module("vitmemad.train", *RUN_ARGS, f"hydra.run.dir={run_dir}")
    return run_dir


def state_dict(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def assert_same_weights(a: Path, b: Path, atol: float = 1e-6) -> None:
    sa, sb = state_dict(a), state_dict(b)
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.allclose(sa[key].float(), sb[key].float(), atol=atol, rtol=0), key


def assert_same_metrics(a: dict, b: dict) -> None:
    for key in METRIC_KEYS:
        if isinstance(a[key], float):
            assert b[key] == pytest.approx(a[key], abs=1e-6), key
        elif isinstance(a[key], dict):
            assert b[key] == pytest.approx(a[key], abs=1e-6), key
        else:
            assert b[key] == a[key], key


# ----------------------------------------------------------------------------- resume
def kill_after_checkpoint(run_dir: Path, epoch: int, *extra: str, timeout: float = 240,
                          sig: int = signal.SIGKILL) -> int:
    """Start a run, SIGKILL it (or send `sig`) once last.ckpt holds `epoch` (or later) and the next epoch is under
    way. The run's output goes to `killed.log` beside `run_dir`.

    Returns the epoch of the last.ckpt the run leaves behind. No test hook: it polls the file, which
    atomic saves keep complete at every instant.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "WANDB_MODE": "offline"}
    with open(run_dir.parent / "killed.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "vitmemad.train", *RUN_ARGS, *extra, f"hydra.run.dir={run_dir}"],
                                cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        last, seen = run_dir / "checkpoints" / "last.ckpt", None
        deadline = time.monotonic() + timeout
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    stat = last.stat()
                except FileNotFoundError:
                    time.sleep(0.02)
                    continue
                if (stat.st_ino, stat.st_mtime_ns) != seen:
                    seen = (stat.st_ino, stat.st_mtime_ns)
                    if torch.load(last, map_location="cpu", weights_only=True)["epoch"] >= epoch:
                        time.sleep(0.1)  # into the next epoch
                        proc.send_signal(sig)
                        break
                time.sleep(0.02)
        finally:
            if proc.poll() is None and time.monotonic() >= deadline:
                proc.kill()
            proc.wait()
    expected = -sig if sig == signal.SIGKILL else 128 + sig  # a caught signal ends the run with 128 + its number
    assert proc.returncode == expected, f"the run ended ({proc.returncode}, not {expected}) before it was killed"
    return int(torch.load(last, map_location="cpu", weights_only=True)["epoch"])


def test_killed_run_resumes_to_the_uninterrupted_result(reference, tmp_path):
    run_dir = tmp_path / "run"
    stopped_at = kill_after_checkpoint(run_dir, epoch=1)
    assert stopped_at < EPOCHS - 1 and not (run_dir / "metrics.json").exists()
    for ckpt in (run_dir / "checkpoints").glob("*.ckpt"):  # nothing truncated by the kill
        load_checkpoint(ckpt)

    resumed_run = run_cli("vitmemad.train", *RUN_ARGS, f"hydra.run.dir={run_dir}", "ckpt_path=last")
    assert resumed_run.code == 0, resumed_run.stderr[-3000:]

    resumed, uninterrupted = read_metrics(run_dir), read_metrics(reference)
    assert_same_metrics(uninterrupted, resumed)
    assert resumed["epochs"] == EPOCHS and Path(resumed["ckpt_path"]).parent == run_dir / "checkpoints"
    assert_same_weights(reference / "checkpoints" / "last.ckpt", run_dir / "checkpoints" / "last.ckpt")
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (EPOCHS - 1, torch.load(
        reference / "checkpoints" / "last.ckpt", weights_only=True)["global_step"])
    assert not temp_files(run_dir / "checkpoints" / "last.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["killed.log", "run"]  # continued in the same folder


def test_resume_needs_a_checkpoint(tmp_path):
    result = run_cli("vitmemad.train", *RUN_ARGS, "ckpt_path=last", f"hydra.run.dir={tmp_path / 'run'}")
    assert_one_line_error(result, "ckpt_path=last", tmp_path / "run" / "checkpoints" / "last.ckpt")


# ----------------------------------------------------------------------------- reproducibility
def test_same_seed_and_config_give_the_same_metrics(reference, tmp_path, monkeypatch):
    """A second run (in this process, so also another process than the reference) is identical."""
    saves = []
    save = AtomicCheckpointIO.save_checkpoint
    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint",
                        lambda self, ckpt, path, storage_options=None: saves.append(path) or save(self, ckpt, path))
    result = run_cli("vitmemad.train", *RUN_ARGS, f"hydra.run.dir={tmp_path / 'run'}")
    assert result.code == 0, result.stderr[-3000:]
    first, second = read_metrics(reference), read_metrics(tmp_path / "run")
    for key in ("image_AUROC", "pixel_AUROC", "PRO", "per_defect", "epochs", "num_test_images"):
        assert second[key] == first[key], key  # identical, not merely close
    assert_same_weights(reference / "checkpoints" / "last.ckpt", tmp_path / "run" / "checkpoints" / "last.ckpt", 0)
    assert saves and all(Path(p).parent == tmp_path / "run" / "checkpoints" for p in saves)  # the Trainer saves atomically


# ----------------------------------------------------------------------------- checkpoints
def test_trained_checkpoints_load_with_weights_only(reference):
    paths = sorted((reference / "checkpoints").glob("*.ckpt"))
    assert {p.name for p in paths} >= {"last.ckpt"} and len(paths) >= 2
    for path in paths:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        assert ckpt["state_dict"] and ckpt["hyper_parameters"]["cfg"]["data"]["n_train"] == 24
    assert not list((reference / "checkpoints").glob(".*"))  # no temporary files left


@pytest.mark.parametrize("change", ["memory_size", "ablation_base", "cae"])
def test_checkpoint_of_another_model_config_names_the_keys(reference, change, compose_plain):
    path = reference / "checkpoints" / "last.ckpt"
    ckpt = load_checkpoint(path)
    cfg = copy.deepcopy(ckpt["hyper_parameters"]["cfg"])
    if change == "memory_size":
        cfg["model"]["net"]["memory"]["size"] *= 2
        expected = [r"shape mismatches", r"net\.memory"]
    elif change == "ablation_base":
        cfg = OmegaConf.create(cfg)
        cfg.ablation.update(memory=False, coord_attention=False)
        cfg = OmegaConf.to_container(prepare(cfg))
        assert cfg["model"]["net"]["memory"] is None and cfg["model"]["net"]["coord_attention"] is None
        expected = [r"unexpected keys \['net\.coord_attention"]
    else:
        cfg = compose_plain(*TINY_DEMO, "model=cae")
        expected = [r"missing keys \['net\.", r"unexpected keys \['net\."]
    with pytest.raises(CheckpointError) as info:
        load_state_dict_strict(build_module(cfg["model"]), ckpt["state_dict"], path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    for pattern in expected:
        assert re.search(pattern, message), (pattern, message)


def test_eval_of_an_edited_checkpoint_names_the_keys(reference, tmp_path):
    ckpt = torch.load(reference / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    state = ckpt["state_dict"]
    dropped = next(k for k in state if k.startswith("net.decoder"))
    del state[dropped]
    state["net.extra.weight"] = torch.zeros(3)
    reshaped = next(k for k in state if k.startswith("net.memory") and state[k].ndim == 2)
    state[reshaped] = torch.zeros(state[reshaped].shape[0] + 1, state[reshaped].shape[1])
    edited = tmp_path / "edited.ckpt"
    torch.save(ckpt, edited)
    result = run_cli("vitmemad.eval", f"ckpt_path={edited}", f"hydra.run.dir={tmp_path / 'eval'}")
    assert_one_line_error(result, edited, dropped, "net.extra.weight", reshaped)
    assert not (tmp_path / "eval" / "metrics.json").exists()


@pytest.mark.parametrize("damage", ["truncated", "not_a_checkpoint"])
def test_eval_of_a_damaged_checkpoint(reference, tmp_path, damage):
    path = tmp_path / "damaged.ckpt"
    data = (reference / "checkpoints" / "last.ckpt").read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
        expected = "cannot load checkpoint"
    else:
        torch.save({"weights": torch.zeros(2)}, path)
        expected = "is not a vitmemad checkpoint"
    result = run_cli("vitmemad.eval", f"ckpt_path={path}", f"hydra.run.dir={tmp_path / 'eval'}")
    assert_one_line_error(result, path, expected)


def test_resume_with_another_model_config_names_the_keys(reference, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    result = run_cli("vitmemad.train", *RUN_ARGS, "model.memory.size=32", "ckpt_path=last",  # old spelling
                     f"hydra.run.dir={run_dir}")
    assert_one_line_error(result, run_dir / "checkpoints" / "last.ckpt", "does not fit", "net.memory")


# ----------------------------------------------------------------------------- NaN loss
def test_nan_loss_stops_at_its_step_and_keeps_the_checkpoint(reference, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    result = run_cli("vitmemad.train", *RUN_ARGS, f"trainer.max_epochs={EPOCHS + 2}", "loss.lambda_ssim=nan",
                     "ckpt_path=last", f"hydra.run.dir={run_dir}")
    line = assert_one_line_error(result, "loss is nan", f"epoch {EPOCHS}", "global step")
    step = torch.load(last, weights_only=True)["global_step"]
    assert f"global step {step}" in line  # the first step after the checkpoint
    assert last.read_bytes() == before  # the last good checkpoint is untouched
    assert all(torch.isfinite(v).all() for v in state_dict(last).values() if v.is_floating_point())


# ----------------------------------------------------------------------------- outputs
def test_a_finished_run_dir_is_refused_untouched(reference, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    snapshot = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    result = run_cli("vitmemad.train", *RUN_ARGS, f"hydra.run.dir={run_dir}")
    assert_one_line_error(result, run_dir, "already holds a finished run", "ckpt_path=last")
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == snapshot
