"""Atomic checkpoint writes, (seed, epoch) shuffling, deep/alpha images, timestamped run folders."""
from __future__ import annotations

import errno
import logging
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zlib

import numpy as np
import pytest
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from fixtures_data import make_mvtec, noise, write_image
from helpers import REPO_ROOT
from vitmemad.data import MVTecDataModule
from vitmemad.data import io as data_io
from vitmemad.data.dataset import EpochRandomSampler
from vitmemad.utils import checkpoint_io
from vitmemad.utils.checkpoint_io import AtomicCheckpointIO, atomic_torch_save, temp_files


def _ckpt(value: float, n: int = 1000) -> dict:
    return {"state_dict": {"w": torch.full((n,), value)}, "epoch": int(value)}


def _failing_save_after(n_bytes: int):
    """A torch.save that writes `n_bytes` of the checkpoint, then fails like a full disk."""
    real = torch.save

    def save(obj, f, *args, **kwargs):
        import io

        buffer = io.BytesIO()
        real(obj, buffer)
        f.write(buffer.getvalue()[:n_bytes])
        raise OSError(errno.ENOSPC, "No space left on device")

    return save


# ----------------------------------------------------------------------------- atomic saves
def test_interrupted_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.ckpt"
    io_plugin = AtomicCheckpointIO()
    io_plugin.save_checkpoint(_ckpt(1.0), path)
    before = path.read_bytes()

    monkeypatch.setattr(checkpoint_io.torch, "save", _failing_save_after(100))
    with pytest.raises(OSError, match="No space left"):
        io_plugin.save_checkpoint(_ckpt(2.0), path)
    monkeypatch.undo()

    assert path.read_bytes() == before and torch.load(path, weights_only=True)["epoch"] == 1
    assert not temp_files(path) and sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]
    io_plugin.save_checkpoint(_ckpt(3.0), path)  # the next save works normally
    assert io_plugin.load_checkpoint(path, weights_only=True)["epoch"] == 3
    assert (path.stat().st_mode & 0o777) == (0o666 & ~_umask())  # usual permissions, not mkstemp's 0600


def test_plain_lightning_save_would_truncate(tmp_path, monkeypatch):
    """Why the plugin exists: what a failing save does without it (documents the baseline)."""
    path = tmp_path / "last.ckpt"
    TorchCheckpointIO().save_checkpoint(_ckpt(1.0), path)
    monkeypatch.setattr(torch, "save", _failing_save_after(100))
    with open(path, "wb") as f, pytest.raises(OSError):  # a direct torch.save(obj, path) opens with "wb"
        torch.save(_ckpt(2.0), f)
    monkeypatch.undo()
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


SAVER = textwrap.dedent(
    """
    import sys, torch
    from vitmemad.utils.checkpoint_io import atomic_torch_save
    path, i = sys.argv[1], 0
    while True:
        atomic_torch_save({"state_dict": {"w": torch.full((4_000_000,), float(i))}, "epoch": i}, path)
        if i == 0:
            print("saved", flush=True)
        i += 1
    """
)


def test_sigkill_during_saves_never_leaves_a_truncated_checkpoint(tmp_path):
    """A process saving 16 MB checkpoints in a loop is killed mid-way: the file still loads."""
    path = tmp_path / "last.ckpt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-c", SAVER, str(path)], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "saved"
        time.sleep(0.5)  # several saves; the process spends nearly all its time inside one
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    ckpt = torch.load(path, weights_only=True)
    w = ckpt["state_dict"]["w"]
    assert w.numel() == 4_000_000 and bool((w == ckpt["epoch"]).all())
    atomic_torch_save(_ckpt(7.0), path)  # a later save clears what the killed one left behind
    assert not temp_files(path) and torch.load(path, weights_only=True)["epoch"] == 7


# ----------------------------------------------------------------------------- data order
def test_shuffle_depends_only_on_seed_and_epoch():
    data = list(range(50))
    a, b = EpochRandomSampler(data, seed=3), EpochRandomSampler(data, seed=3)
    orders = [list(a) for _ in range(3)]  # without set_epoch: a new order each pass
    assert len({tuple(o) for o in orders}) == 3 and all(sorted(o) == data for o in orders)
    b.set_epoch(2)  # a fresh sampler (a resumed run) jumps straight to epoch 2
    assert list(b) == orders[2]
    assert list(EpochRandomSampler(data, seed=4)) != orders[0]


def test_train_loader_order_survives_a_new_datamodule(tmp_path):
    root = make_mvtec(tmp_path, n_train=12)
    loaders = [MVTecDataModule(root=root, category="widget", image_size=16, batch_size=4).train_dataloader()
               for _ in range(2)]
    for loader in loaders:
        loader.sampler.set_epoch(5)
    first, second = ([p for batch in loader for p in batch["path"]] for loader in loaders)
    assert first == second


# ----------------------------------------------------------------------------- deep and alpha images
def write_png16_rgb(path, arr: np.ndarray):
    """A 16-bit-per-channel RGB PNG (PIL cannot write one)."""
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[i].astype(">u2").tobytes() for i in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("deep_kind", ["gray16", "rgb16"])
def test_16_bit_and_4_channel_images_are_converted_and_logged(tmp_path, monkeypatch, caplog, deep_kind):
    root = make_mvtec(tmp_path, n_train=6)
    train = root / "widget" / "train" / "good"
    values = np.arange(40 * 48, dtype=np.uint16).reshape(40, 48) * 30
    if deep_kind == "gray16":
        deep = write_image(train / "100_deep.png", values)
    else:
        deep = write_png16_rgb(train / "100_deep.png", np.dstack([values, values // 2, values // 3]))
    alpha = write_image(train / "101_alpha.png", np.dstack([noise(np.random.default_rng(0), (40, 48)),
                                                            np.full((40, 48), 200, np.uint8)]))
    monkeypatch.setattr(data_io, "_warned_deep", False)
    monkeypatch.setattr(data_io, "_warned_alpha", False)
    dm = MVTecDataModule(root=root, category="widget", image_size=16, batch_size=4, val_fraction=0.0)
    dm.setup()
    with caplog.at_level(logging.WARNING, logger="vitmemad.data.io"):
        items = {item["path"]: item for item in (dm.train_dataset[i] for i in range(len(dm.train_dataset)))}
    assert items[str(deep)]["image"].shape == items[str(alpha)]["image"].shape == (3, 16, 16)
    red = np.asarray(data_io.load_image(deep))[..., 0]
    assert np.abs(red.astype(int) - np.round(values / 257)).max() <= 1  # scaled, not clipped
    text = caplog.text
    assert str(deep) in text and ("more than 8 bits" in text or "16 bits per channel" in text)
    assert str(alpha) in text and "alpha" in text


# ----------------------------------------------------------------------------- outputs
@pytest.mark.parametrize("config", ["train", "eval", "predict", "export"])
def test_run_folders_are_timestamped_to_the_microsecond(compose, config):
    cfg = compose(config_name=config, hydra_config=True)
    for node in (cfg.hydra.run, cfg.hydra.sweep):
        raw = node._get_node("dir")._value()  # unresolved: ${now:...}
        assert "${now:" in raw and "%f" in raw, raw
