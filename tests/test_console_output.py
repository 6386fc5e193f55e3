"""What a run prints: no library chatter, the metrics once as a table, the project's warnings, and progress lines
where stderr is not a terminal (here a pipe)."""
from __future__ import annotations

import logging
import os
import re
import subprocess
import sys

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from fixtures_data import make_folder
from helpers import REPO_ROOT
from vitmemad.callbacks.progress import LogProgress, duration, epoch_interval

# Lightning's device lines, tip, step estimate and test table; torch's LeafSpec warning; W&B's banner and summary
BANNED = ("GPU available", "TPU available", "Tip:", "litlogger", "LeafSpec", "to estimate number of stepping",
          "Seed set to", "Test metric", "DataLoader 0", "Loaded model weights", "anonymous", "wandb:",
          "Run history", "Run summary")
PROGRESS = re.compile(r"epoch (\d+)/3 \| loss \S+ \(l2 \S+, ssim \S+, entropy \S+(?:, memory \S+)?\) \| "
                      r"val/loss \S+( \(memory warm-up\))? \| elapsed \S+ \| ETA \S+$", re.M)


def _run(module: str, *overrides: str) -> tuple[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "WANDB_SILENT", "WANDB_QUIET")}
    env.update(WANDB_MODE="offline", OMP_NUM_THREADS="2", PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run([sys.executable, "-m", module, *overrides], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout, proc.stderr


def _assert_quiet_with_one_table(out: str, err: str) -> None:
    both = out + err
    assert not [b for b in BANNED if b in both], both
    assert both.count("image_AUROC") == 1 and both.count("PRO ") == 1, both
    assert re.search(r"^\| image_AUROC \| (0|1)\.\d{4} \|$", out, re.M), out


@pytest.fixture(scope="module")
def folder_with_jpeg_masks(tmp_path_factory):
    """A folder dataset whose masks are JPEGs: vitmemad's data check warns about them."""
    dirs = make_folder(tmp_path_factory.mktemp("folder"), n_normal=16, n_abnormal=4, size=(64, 64))
    for png in sorted(dirs["mask_dir"].glob("*.png")):
        Image.open(png).save(png.with_suffix(".jpg"), quality=75)
        png.unlink()
    return dirs


def test_train_and_eval_print_progress_warnings_and_the_metrics_once(tmp_path, folder_with_jpeg_masks):
    data = [f"data.{k}={v}" for k, v in folder_with_jpeg_masks.items()]
    run = tmp_path / "train"
    out, err = _run("vitmemad.train", "debug=smoke", "data=folder", *data, "logger=wandb", "trainer.max_epochs=3",
                    "callbacks.progress.every_seconds=null", f"hydra.run.dir={run}")
    _assert_quiet_with_one_table(out, err)
    assert "mask(s) in a lossy format" in out + err  # the project's own warning survives the filters
    assert f"metrics.json: {run / 'metrics.json'}" in out and "W&B run: " in out and "wandb sync" in out
    assert [int(k) for k, _ in PROGRESS.findall(out + err)] == [1, 2, 3], out + err
    log_file = (run / "train.log").read_text()
    assert [int(k) for k, _ in PROGRESS.findall(log_file)] == [1, 2, 3], log_file
    assert "| image_AUROC |" in log_file and "mask(s) in a lossy format" in log_file

    ckpt = run / "checkpoints" / "last.ckpt"
    out, err = _run("vitmemad.eval", f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'eval'}")
    _assert_quiet_with_one_table(out, err)
    assert "Testing" not in out + err  # no progress bar's last frame without a terminal


class TinyModule(L.LightningModule):
    """A real (tiny) fit that logs a loss with two parts and a validation loss, as the vitmemad modules do."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        recon = self.layer(batch[0]).pow(2).mean()
        terms = {"loss": recon * 1.5, "l2": recon, "ssim": recon * 0.5}
        self.log_dict({f"train/{k}": v for k, v in terms.items()}, on_step=False, on_epoch=True)
        return terms["loss"]

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.layer(batch[0]).pow(2).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def _loader(self):
        data = torch.utils.data.TensorDataset(torch.from_numpy(np.random.default_rng(0).normal(size=(16, 4))).float())
        return torch.utils.data.DataLoader(data, batch_size=4)

    train_dataloader = val_dataloader = _loader


def _fit(callback: LogProgress, caplog, epochs: int = 3) -> tuple[list[str], L.Trainer]:
    trainer = L.Trainer(accelerator="cpu", max_epochs=epochs, logger=False, enable_checkpointing=False,
                        enable_model_summary=False, callbacks=[callback])
    with caplog.at_level(logging.INFO, logger="vitmemad.callbacks.progress"):
        trainer.fit(TinyModule())
    return [r.getMessage() for r in caplog.records if r.name == "vitmemad.callbacks.progress"], trainer


@pytest.mark.parametrize("model", ["mean_image", "patchcore"])
def test_a_model_fitted_without_gradients_trains_without_lightnings_by_design_warnings(tmp_path, model):
    """PatchCore and the mean image return no loss and no optimizer by design, and PatchCore's pretrained backbone
    stays frozen in eval mode: Lightning's warnings about these are the user's concern only for models that learn
    those parts, which vitmemad's never leave out."""
    out, err = _run("vitmemad.train", f"model={model}", "debug=smoke", "data.n_train=24", "data.n_test_good=6",
                    "data.n_test_defect=6", "data.crop_size=64", f"hydra.run.dir={tmp_path / 'train'}")
    _assert_quiet_with_one_table(out, err)
    assert "returned `None`" not in out + err and "in eval mode" not in out + err, out + err
    assert re.search(r"epoch 1/1 \| val/loss \S+ \| elapsed \S+ \| ETA 0s$", out + err, re.M), out + err


def test_progress_lines_follow_the_epoch_and_time_intervals(caplog):
    lines, trainer = _fit(LogProgress(every_epochs=2, every_seconds=None), caplog)
    assert [line.split(" | ")[0] for line in lines] == ["epoch 2/3", "epoch 3/3"]  # every 2nd, and the last
    assert re.fullmatch(r"epoch 3/3 \| loss \S+ \(l2 \S+, ssim \S+\) \| val/loss \S+ \| elapsed \d+s \| ETA 0s",
                        lines[-1]), lines
    assert trainer.progress_bar_callback.is_disabled  # stderr is captured here: no bar, only lines

    caplog.clear()
    lines, _ = _fit(LogProgress(every_epochs=10, every_seconds=0), caplog, epochs=2)
    mid = [line for line in lines if "(batch " in line]  # 4 batches an epoch: batches 1-3 mid-epoch
    assert [re.search(r"batch \d/4", line).group() for line in mid] == ["batch 1/4", "batch 2/4", "batch 3/4"] * 2
    assert all(re.search(r"\| elapsed \d+s \| ETA (\d+s|\?)$", line) for line in mid), mid
    assert [line.split(" | ")[0] for line in lines if "(batch " not in line] == ["epoch 1/2", "epoch 2/2"]


def test_on_a_terminal_the_bar_shows_and_no_lines_are_logged(caplog, monkeypatch):
    leader, follower = os.openpty()
    with os.fdopen(follower, "w") as terminal:
        monkeypatch.setattr(sys, "stderr", terminal)
        lines, trainer = _fit(LogProgress(every_seconds=0), caplog, epochs=1)
    os.close(leader)
    assert lines == [] and trainer.progress_bar_callback.is_enabled


def test_interval_and_duration_formats():
    assert [epoch_interval(e, None) for e in (1, 3, 39, 40, 100, -1, None)] == [1, 1, 1, 2, 5, 1, 1]
    assert epoch_interval(100, 7) == 7
    assert [duration(s) for s in (0.4, 59, 125, 3725)] == ["0s", "59s", "2m05s", "1h02m"]
    with pytest.raises(ValueError, match="callbacks.progress.every_epochs"):
        LogProgress(every_epochs=0)
