"""What `vitmemad.predict` and `vitmemad.export` share: load a checkpoint for inference, find the
input files, read them without ever raising, render heatmap overlays.

- `load_module(ckpt_path)`: the checkpoint's LightningModule in eval mode (BatchNorm running stats),
  gradients off, thresholds readable through `calibrated_thresholds`, its run config as ``run_config``.
- `list_inputs(spec)`: a file, a folder (image files directly inside it) or a glob (`**` recurses).
- `PredictDataset`: one item per input file; a file that cannot be read becomes an item with an
  ``error`` string instead of an exception, so one bad file never stops a batch.
- `ScoringModel`: images (B, 3, S, S) in [-1, 1] -> anomaly maps (B, S, S), exactly
  `module.score(images)[0]`; the graph that is exported to ONNX.
- `render_overlay`: a jet heatmap blended over the original image.
"""
from __future__ import annotations

import glob
import logging
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from vitmemad.checkpoint import module_from_checkpoint
from vitmemad.data.errors import DatasetError
from vitmemad.data.io import IMAGE_EXTENSIONS, is_image_file, load_image
from vitmemad.data.transforms import preprocess
from vitmemad.models.anomaly_map import anomaly_maps
from vitmemad.models.module import AnomalyModule
from vitmemad.models.registration import registered_forward
from vitmemad.utils.io import atomic_write_bytes
from vitmemad.utils.visualize import render_overlay  # noqa: F401  (predict imports it from here)

log = logging.getLogger(__name__)

GLOB_CHARS = frozenset("*?[")


# ---------------------------------------------------------------- files
def write_output(path: str | Path, data: bytes) -> None:
    atomic_write_bytes(path, data)


# ---------------------------------------------------------------- checkpoint
def load_module(ckpt_path: str | Path, device: str | torch.device = "cpu") -> AnomalyModule:
    """The checkpoint's module, in eval mode with gradients off, on ``device``; ``run_config`` is its config."""
    module, cfg = module_from_checkpoint(ckpt_path)
    module.run_config = cfg  # what the checkpoint was trained with: input size, names for metadata
    module.requires_grad_(False)
    return module.eval().to(device)


def image_size_of(module: AnomalyModule) -> int:
    """The input size the model was trained at (its data transform's size)."""
    return int(module.run_config["data"]["image_size"])


def calibrated_thresholds(module: AnomalyModule) -> tuple[float | None, float | None]:
    """(image threshold, pixel threshold) saved in the checkpoint; None where never calibrated."""

    def value(t: torch.Tensor) -> float | None:
        v = float(t)
        return v if math.isfinite(v) else None

    return value(module.image_threshold), value(module.pixel_threshold)


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device} but CUDA is not available; use device=cpu")
    return dev


class ScoringModel(nn.Module):
    """Images (B, 3, S, S) in [-1, 1] -> anomaly maps (B, S, S): reconstruction + map generator, or the
    model's own feature-distance map, upsampled and smoothed (PatchCore, vitmemad_feat).

    ``bf16``: the network's forward pass runs under ``torch.autocast(dtype=torch.bfloat16)``; the map (error
    terms, smoothing) is computed in float32 from its outputs either way."""

    def __init__(self, module: AnomalyModule, bf16: bool = False) -> None:
        super().__init__()
        self.net = module.net
        self.anomaly_map = module.anomaly_map
        self.registration = getattr(module, "registration", None)
        self.bf16 = bool(bf16)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = registered_forward(self.net, self.registration, images)
        return anomaly_maps(self.anomaly_map, images, out)


# ---------------------------------------------------------------- inputs
def has_glob(spec: str) -> bool:
    return any(c in GLOB_CHARS for c in spec)


def list_inputs(spec: str | Path) -> list[Path]:
    """The files ``spec`` names, in a deterministic order.

    - an existing file: that file, whatever its suffix (a non-image is reported later, per file);
    - an existing folder: the image files directly inside it (suffixes in IMAGE_EXTENSIONS, any case;
      hidden files skipped), sorted by name;
    - otherwise a glob (``*``, ``?``, ``[...]``; ``**`` matches folders recursively): the matching
      image files, sorted by path.

    Files without an image suffix in a folder or glob are skipped with a warning. Raises DatasetError
    when nothing matches, naming ``spec``.
    """
    spec = str(spec)
    path = Path(spec).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        entries = sorted((p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")),
                         key=lambda p: p.name)
        where = f"folder {path}"
    elif has_glob(spec):
        matches = glob.glob(str(Path(spec).expanduser()), recursive=True)
        entries = sorted((Path(m) for m in matches if Path(m).is_file() and not Path(m).name.startswith(".")), key=str)
        where = f"glob {spec!r}"
    else:
        raise DatasetError(f"input={spec}: no such file or folder (and not a glob pattern)")
    images = [p for p in entries if is_image_file(p)]
    skipped = [p.name for p in entries if not is_image_file(p)]
    if skipped:
        log.warning("Skipping %d file(s) without an image suffix %s in %s: %s%s", len(skipped), IMAGE_EXTENSIONS,
                    where, skipped[:10], " ..." if len(skipped) > 10 else "")
    if not images:
        raise DatasetError(
            f"input={spec}: no image files in {where} (looked for suffixes {', '.join(IMAGE_EXTENSIONS)})"
        )
    return images


def output_names(paths: Sequence[Path]) -> list[str]:
    """A unique output name per input: its stem, or for clashing stems (e.g. ``good/000.png`` and
    ``crack/000.png`` from a recursive glob) the path below the inputs' common folder with ``/``
    replaced by ``__`` (``good__000``), plus the suffix if that still clashes (``a_png``, ``a_jpg``)."""
    stems = [p.stem for p in paths]
    counts = Counter(stems)
    if all(counts[s] == 1 for s in stems):
        return stems
    absolute = [p.resolve() for p in paths]
    try:
        common = Path(_common_parent(absolute))
    except ValueError:
        common = Path("/")
    names = []
    for p, a, s in zip(paths, absolute, stems):
        if counts[s] == 1:
            names.append(s)
        else:
            rel = a.relative_to(common).with_suffix("")
            names.append("__".join(rel.parts))
    counts2 = Counter(names)
    names = [n if counts2[n] == 1 else f"{n}_{p.suffix.lstrip('.').lower()}" for n, p in zip(names, paths)]
    counts3 = Counter(names)
    # Last resort (e.g. a.png and a.PNG): a running index keeps names unique and deterministic.
    seen: Counter[str] = Counter()
    out = []
    for n in names:
        if counts3[n] > 1:
            seen[n] += 1
            n = f"{n}_{seen[n]}"
        out.append(n)
    return out


def _common_parent(paths: Sequence[Path]) -> str:
    return os.path.commonpath([str(p.parent) for p in paths])


class PredictDataset(Dataset):
    """Item ``i``: ``index``; ``image`` (3, S, S) float32 in [-1, 1] or None; ``original`` the RGB image
    as uint8 (H, W, 3) or None; ``size`` (H, W) or None; ``error`` "" or the reason the file was skipped.

    Any mode (grey, RGBA, 16-bit, palette) is converted to RGB, any size resized to S x S; decoding
    errors, truncated files, non-images and decompression bombs become ``error`` strings.
    """

    def __init__(self, paths: Sequence[Path], image_size: int, max_image_pixels: int | None = None) -> None:
        self.paths = list(paths)
        self.image_size = int(image_size)
        self.max_image_pixels = max_image_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.max_image_pixels is not None:  # set here too: DataLoader workers may be spawned
            Image.MAX_IMAGE_PIXELS = int(self.max_image_pixels)
        path = self.paths[index]
        item: dict[str, Any] = {"index": index, "image": None, "original": None, "size": None, "error": ""}
        try:
            img = load_image(path)
            item["original"] = np.asarray(img, dtype=np.uint8)
            item["size"] = (img.height, img.width)
            item["image"] = preprocess(img, self.image_size)
        except (DatasetError, OSError, ValueError, MemoryError) as err:
            item.update(image=None, original=None, size=None, error=_reason(err))
        return item


def _reason(err: BaseException) -> str:
    msg = " ".join(str(err).split())  # one line, for the CSV
    return msg if isinstance(err, DatasetError) else f"{type(err).__name__}: {msg}"


def collate_predict(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Readable items are stacked into ``images``; every item keeps its entry in the lists."""
    ok = [item for item in batch if not item["error"]]
    return {
        "images": torch.stack([item["image"] for item in ok]) if ok else None,
        "ok": [item["index"] for item in ok],
        "index": [item["index"] for item in batch],
        "original": {item["index"]: item["original"] for item in ok},
        "size": {item["index"]: item["size"] for item in ok},
        "error": {item["index"]: item["error"] for item in batch if item["error"]},
    }


# ---------------------------------------------------------------- overlays
def overlay_scale(image_threshold: float | None, amap: torch.Tensor) -> tuple[float, float]:
    """Colour scale of an overlay: [0, 2 x image threshold], the same for every image of a run, so
    the threshold sits mid-scale (green) and red means well above it; per-image min-max otherwise."""
    if image_threshold is not None and image_threshold > 0:
        return 0.0, 2.0 * image_threshold
    return float(amap.min()), float(amap.max())
