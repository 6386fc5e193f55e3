"""Atomic checkpoint writes: a kill, a crash or a full disk never leaves a truncated checkpoint.

``AtomicCheckpointIO`` is Lightning's ``TorchCheckpointIO`` with a different save: the checkpoint
is serialised into a hidden temporary file in the target's folder, flushed and fsync'ed, then
moved over the target with ``os.replace`` (atomic on POSIX and Windows), and the folder entry is
fsync'ed. A reader sees either the previous complete file or the new complete file. If anything
fails (``torch.save`` raises, the disk fills, the process is killed) the previous file stays as it
was; the temporary file is removed on exceptions, and a later save of the same checkpoint
removes any left by a killed process. Remote (fsspec URL) paths use Lightning's own save.

``vitmemad.train`` passes it to the Trainer: ``Trainer(plugins=[AtomicCheckpointIO()])``.
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

TMP_SUFFIX = ".tmp"


def _file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _is_local(path: str | Path) -> bool:
    return "://" not in str(path) or str(path).startswith("file://")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_files(path: str | Path) -> list[Path]:
    """Temporary files an interrupted save of ``path`` may have left behind."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}.*{TMP_SUFFIX}"))


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)`` via temp file + fsync + ``os.replace``: all or nothing."""
    path = Path(str(path).removeprefix("file://"))
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in temp_files(path):  # left by a process killed while saving
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _atomic_checkpoint_io_class() -> type:
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    class AtomicCheckpointIO(TorchCheckpointIO):
        """TorchCheckpointIO whose saves are atomic on local disks (see ``vitmemad.utils.checkpoint_io``)."""

        def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
            if storage_options is not None or not _is_local(path):
                super().save_checkpoint(checkpoint, path, storage_options=storage_options)
                return
            log.debug("Saving checkpoint atomically: %s", path)
            atomic_torch_save(checkpoint, path)

    AtomicCheckpointIO.__module__, AtomicCheckpointIO.__qualname__ = __name__, "AtomicCheckpointIO"  # picklable
    return AtomicCheckpointIO


def __getattr__(name: str) -> Any:
    """``AtomicCheckpointIO`` is built on first use, so ``atomic_torch_save`` alone does not import Lightning."""
    if name == "AtomicCheckpointIO":
        cls = globals()["AtomicCheckpointIO"] = _atomic_checkpoint_io_class()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
