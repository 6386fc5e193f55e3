"""Load vitmemad checkpoints safely (``weights_only=True``) and check what is inside.

A checkpoint carries the resolved run config under ``hyper_parameters.cfg``, so eval, predict and
export need nothing but its path.
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitmemad import legacy
from vitmemad.build import build_module
from vitmemad.errors import VitmemadError


class CheckpointError(VitmemadError, ValueError):
    """A checkpoint that is missing, unreadable or does not fit the model."""


def check_file(path: str | Path) -> Path:
    """``path`` as an existing file; a folder gets an error listing the checkpoints inside it."""
    path = Path(path)
    if path.is_dir():
        found = sorted(str(p.relative_to(path)) for p in [*path.glob("*.ckpt"), *path.glob("checkpoints/*.ckpt")])
        raise CheckpointError(
            f"{path} is a folder, not a checkpoint file; "
            + (f"checkpoints inside it: {found}" if found else "it holds no .ckpt files")
        )
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    return path


def _damage(path: Path) -> str:
    """Why torch could not read ``path``, in words (PyTorch checkpoints are zip archives)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(64)
    if size == 0:
        return "the file is empty"
    if head.startswith(b"PK") and not zipfile.is_zipfile(path):
        return f"the file is truncated or damaged ({size} bytes; an interrupted copy or download?)"
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return f"the file holds text ({head[:24].decode(errors='replace')!r}...), not a PyTorch checkpoint"
    if not zipfile.is_zipfile(path):
        return f"not a PyTorch checkpoint (no zip archive; {size} bytes)"
    return ""


def read_checkpoint(path: str | Path, mmap: bool = False) -> Any:
    """``torch.load(weights_only=True)`` of a file, with one-line errors that say what is wrong with it."""
    path = check_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # truncated files, text, pickles that need arbitrary code, ...
        reason = _damage(path) or f"{type(err).__name__}: {err}"
        raise CheckpointError(f"cannot load checkpoint {path}: {reason}") from err


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    ckpt = read_checkpoint(path)
    cfg = (ckpt.get("hyper_parameters") or {}).get("cfg") if isinstance(ckpt, dict) else None
    if not isinstance(cfg, dict) or "state_dict" not in ckpt:
        raise CheckpointError(
            f"{path} is not a vitmemad checkpoint: expected 'state_dict' and 'hyper_parameters.cfg' entries"
        )
    if legacy.is_legacy(cfg):  # written before models were configured by _target_
        ckpt["hyper_parameters"]["cfg"] = legacy.convert_config(cfg)
        ckpt["state_dict"] = legacy.convert_state_dict(ckpt["state_dict"])
    return ckpt


def module_from_checkpoint(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """(the checkpoint's LightningModule with its weights loaded, its run config)."""
    ckpt = load_checkpoint(path)
    cfg = ckpt["hyper_parameters"]["cfg"]
    module = build_module(cfg["model"])
    load_state_dict_strict(module, ckpt["state_dict"], path)
    return module, cfg


# Buffers added after the first checkpoints were written; older checkpoints load without them.
OPTIONAL_KEYS = frozenset({"image_threshold", "pixel_threshold"})


def variable_shape_keys(module: nn.Module) -> frozenset[str]:
    """State-dict keys whose row count comes from the data, not the config (e.g. PatchCore's memory bank:
    submodules list them in ``VARIABLE_SHAPE_BUFFERS`` and resize them when loading). Their other
    dimensions must still match."""
    keys = set()
    for name, sub in module.named_modules():
        for buffer in getattr(sub, "VARIABLE_SHAPE_BUFFERS", ()):
            keys.add(f"{name}.{buffer}" if name else buffer)
    return frozenset(keys)


def load_state_dict_strict(module: nn.Module, state_dict: dict[str, torch.Tensor], source: str | Path) -> None:
    """Like ``load_state_dict(strict=True)`` but the error names every mismatched key and shape."""
    own = module.state_dict()
    state_dict = {**{k: own[k] for k in OPTIONAL_KEYS & set(own) - set(state_dict)}, **state_dict}
    check_state_dict(module, state_dict, source, optional=frozenset())
    module.load_state_dict(state_dict)


def check_state_dict(
    module: nn.Module, state_dict: dict[str, torch.Tensor], source: str | Path, optional: frozenset[str] = OPTIONAL_KEYS
) -> None:
    """Raise CheckpointError naming every key and shape of ``state_dict`` that does not fit ``module``.

    Changes nothing. Keys in ``optional`` may be missing from ``state_dict``; pass ``frozenset()``
    to match a strict ``load_state_dict`` (what Lightning does when it resumes).
    """
    own = module.state_dict()
    state_dict = {**{k: own[k] for k in optional & set(own) - set(state_dict)}, **state_dict}
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    variable = variable_shape_keys(module)
    shapes = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state_dict))
        if own[k].shape != state_dict[k].shape and not (k in variable and own[k].shape[1:] == state_dict[k].shape[1:])
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:10]}{' ...' if len(missing) > 10 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}")
        if shapes:
            parts.append(f"shape mismatches {shapes[:10]}")
        raise CheckpointError(f"checkpoint {source} does not fit the configured model: " + "; ".join(parts))
