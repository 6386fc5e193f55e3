"""Start-up validation: one line naming the key, before anything is written or any data is set up."""
from __future__ import annotations

import shutil

import pytest

from helpers import REPO_ROOT, TINY_DEMO
from test_cli_errors import assert_one_line_error, run_cli
from test_resume import RUN_ARGS


@pytest.mark.parametrize("override, fragments", [
    ("seed=abc", ["seed='abc'", "an integer"]),
    ("model.optimizer.lr=-1", ["model.optimizer.lr=-1", "a positive number"]),
    ("threshold.image_quantile=2", ["threshold.image_quantile=2", "[0, 1]"]),
    ("trainer.max_epochs=0", ["trainer.max_epochs=0", "train nothing"]),
    ("trainer.max_steps=0", ["trainer.max_steps=0", "optimizer steps"]),
    ("trainer.max_epochs=-1", ["trainer.max_epochs=-1", "trainer.max_steps=N", "never end"]),
    ("data.val_fraction=0", ["test_ckpt=best", "data.val_fraction=0", "test_ckpt=last"]),
    ("test_ckpt=worst", ["test_ckpt='worst'", "best, last or null"]),
    ("num_threads=0", ["num_threads=0"]),
    ("loss.lambda_mem=-1", ["loss.lambda_mem=-1", "a number >= 0"]),
    ("anomaly_map.reference=median", ["anomaly_map.reference='median'", "none or normal_mean"]),
])
def test_bad_values_are_refused_before_anything_is_written(tmp_path, override, fragments):
    run_dir = tmp_path / "run"
    result = run_cli("vitmemad.train", *TINY_DEMO, override, f"hydra.run.dir={run_dir}")
    assert_one_line_error(result, *fragments)
    assert "Error executing job" not in result.stderr
    assert not run_dir.exists()  # before Hydra's .hydra/, the log and status.json


def test_test_ckpt_best_without_a_best_checkpoint_is_refused(tmp_path):
    """Validation that yields no val/loss (no validation batches) leaves no best checkpoint to test."""
    result = run_cli("vitmemad.train", *TINY_DEMO, "trainer.max_epochs=1", "+trainer.limit_val_batches=0",
                     f"hydra.run.dir={tmp_path / 'run'}")
    assert_one_line_error(result, "test_ckpt=best", "no best checkpoint", "test_ckpt=last")
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    assert run_cli("vitmemad.train", *RUN_ARGS, "trainer.max_epochs=2", f"hydra.run.dir={run_dir}").code == 0
    return run_dir


def test_resume_below_the_checkpoint_epoch_is_refused_and_leaves_the_run_finished(trained, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    result = run_cli("vitmemad.train", *RUN_ARGS, "trainer.max_epochs=1", f"hydra.run.dir={run_dir}",
                     "ckpt_path=last")
    assert_one_line_error(result, "trainer.max_epochs=1", "2 epochs", "trainer.max_epochs to 2 or more")
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("damage, fragments", [
    ("truncated", ["truncated or damaged"]),
    ("text", ["holds text", "not a PyTorch checkpoint"]),
    ("empty", ["the file is empty"]),
    ("folder", ["is a folder", "checkpoints/last.ckpt", "checkpoints/best-epoch"]),
])
@pytest.mark.parametrize("module", ["vitmemad.eval", "vitmemad.train"])
def test_checkpoint_problems_are_one_line(trained, tmp_path, damage, fragments, module):
    path = tmp_path / "given.ckpt"
    if damage == "truncated":
        data = (trained / "checkpoints" / "last.ckpt").read_bytes()
        path.write_bytes(data[: len(data) // 3])
    elif damage == "text":
        path.write_text("hello, I am a text file\n")
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path = trained
    extra = RUN_ARGS if module == "vitmemad.train" else []
    result = run_cli(module, *extra, f"ckpt_path={path}", f"hydra.run.dir={tmp_path / 'out'}")
    assert_one_line_error(result, path, *fragments)
    assert "Error executing job" not in result.stderr



@pytest.mark.parametrize("group", ["model", "experiment"])
def test_every_shipped_preset_passes_the_checks(group, compose):
    from vitmemad.config_check import check_train

    for preset in sorted(p.stem for p in (REPO_ROOT / "conf" / group).glob("*.yaml") if not p.stem.startswith("_")):
        check_train(compose(f"{group}={preset}"), None)
