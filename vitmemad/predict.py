"""`python -m vitmemad.predict ckpt_path=PATH input=PATH output=DIR`: score your own images.

``ckpt_path`` is a checkpoint or an exported ``.onnx`` file (onnxruntime, float32; `vitmemad.scoring`), and
``input`` a file, a folder or a glob. For every image, in ``output=DIR``:

- ``maps/<stem>.npy``: float32 anomaly map at the image's own resolution (H, W);
- ``overlays/<stem>.png``: the map as a jet heatmap over the image, with a colour bar and the verdict
  (``overlay_legend=false``: the bare H x W overlay);
- ``masks/<stem>.png`` with ``masks=true``: map > pixel threshold, 0/255;
- a record in ``predictions.csv`` (columns ``path, score, label, threshold, error, score_normalized``) and in
  ``predictions.json`` (the same records as a list). ``score`` is the maximum of the map, ``label``
  1 when score > threshold (anomalous), else 0, ``score_normalized`` score / threshold (empty unless both are
  defined and threshold > 0). Files that cannot be read (corrupt, truncated, not an image, decompression bomb)
  get a record whose ``error`` says why; score and label stay empty.

Thresholds come from the checkpoint (calibrated on normal validation images during training);
``threshold=`` replaces the image threshold, ``pixel_threshold=`` the pixel one. See docs/predict.md.
"""
from __future__ import annotations

import csv
import io
import logging
import math
import sys
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image
from torch.utils.data import DataLoader
from tqdm import tqdm

from vitmemad import cli, config, pipeline
from vitmemad.errors import VitmemadError
from vitmemad.inference import (
    PredictDataset,
    collate_predict,
    list_inputs,
    output_names,
    overlay_scale,
    render_overlay,
    write_output,
)
from vitmemad.scoring import check_precision, is_onnx, open_scorer
from vitmemad.utils.io import write_json
from vitmemad.utils.overlay_legend import legend_overlay_png
from vitmemad.models.anomaly_map import resize_maps

log = logging.getLogger(__name__)

CONTRACT_COLUMNS = ("path", "score", "label", "threshold", "error")
COLUMNS = (*CONTRACT_COLUMNS, "score_normalized")  # appended after the contract's columns
CSV_FILE = "predictions.csv"
JSON_FILE = "predictions.json"
SUBDIRS = ("maps", "overlays", "masks")


class OutputExistsError(VitmemadError, FileExistsError):
    """The output folder already holds predictions and overwrite=true was not given."""


def check_output_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output={out} exists and is not a folder")
    existing = [name for name in (CSV_FILE, JSON_FILE) if (out / name).exists()]
    existing += [f"{d}/" for d in SUBDIRS if (out / d).is_dir() and any((out / d).iterdir())]
    if existing and not overwrite:
        raise OutputExistsError(
            f"output={out} already holds predictions ({', '.join(existing)}); choose another output= "
            "or pass overwrite=true to replace them"
        )
    if existing:
        log.warning("overwrite=true: replacing the predictions in %s (at the end, outputs of an earlier run that "
                    "this run did not rewrite are removed)", out)


def remove_stale_outputs(out: Path, written: set[str]) -> int:
    """After ``overwrite=true``: remove the files an earlier run left in maps/, overlays/ and masks/ that this run
    did not write, so the folder holds only this run's outputs. Other files and folders are not touched."""
    removed = 0
    for sub in SUBDIRS:
        for path in sorted((out / sub).glob("*")) if (out / sub).is_dir() else []:
            if path.is_file() and path.suffix in (".npy", ".png") and path.stem not in written:
                path.unlink()
                removed += 1
    if removed:
        log.info("overwrite=true: removed %d output file(s) of an earlier run from %s", removed, out)
    return removed


def _finite_or_none(value: Any, key: str) -> float | None:
    if value is None:
        return None
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{key}={value} must be a finite number")
    return v


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _csv_bytes(records: list[dict[str, Any]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for r in records:
        writer.writerow(["" if r[c] is None else (repr(r[c]) if isinstance(r[c], float) else r[c]) for c in COLUMNS])
    return buffer.getvalue().encode("utf-8")


def normalized_score(score: float | None, threshold: float | None) -> float | None:
    """score / threshold (1.0 is the threshold); None where either is undefined or threshold <= 0 (no ratio)."""
    if score is None or threshold is None or not threshold > 0:
        return None
    return score / threshold


def write_image_outputs(out: Path, name: str, amap: torch.Tensor, original: np.ndarray, image_thr: float | None,
                        pixel_thr: float | None, overlays: bool, legend: bool = True, score: float | None = None,
                        scale_thr: float | None = None) -> None:
    """maps/<name>.npy; overlays/<name>.png when ``overlays`` (with colour bar and verdict when ``legend``);
    masks/<name>.png when ``pixel_thr`` is given. ``score`` (default the map's maximum) is the image score the
    verdict compares with ``image_thr``; the colour scale is set by ``scale_thr`` (default ``image_thr``), a
    threshold on the map's own scale."""
    write_output(out / "maps" / f"{name}.npy", _npy_bytes(amap.numpy().astype(np.float32)))
    if overlays:
        score = float(amap.max()) if score is None else score
        vmin, vmax = overlay_scale(image_thr if scale_thr is None else scale_thr, amap)
        overlay = render_overlay(original, amap, vmin, vmax)
        png = legend_overlay_png(overlay, vmin, vmax, score, image_thr, over=bool(amap.max() > vmax),
                                 bar_mark=scale_thr) if legend else _png_bytes(overlay)
        write_output(out / "overlays" / f"{name}.png", png)
    if pixel_thr is not None:
        mask = (amap > pixel_thr).numpy().astype(np.uint8) * 255
        write_output(out / "masks" / f"{name}.png", _png_bytes(mask))


def _excluding_output(paths: list[Path], out: Path) -> list[Path]:
    """Never score our own outputs (e.g. input='imgs/**/*.png' output=imgs/pred)."""
    out_resolved = out.resolve()
    kept = [p for p in paths if not p.resolve().is_relative_to(out_resolved)]
    if len(kept) < len(paths):
        log.info("Ignoring %d input file(s) inside output=%s", len(paths) - len(kept), out)
    return kept


def predict(cfg: DictConfig) -> list[dict[str, Any]]:
    """Score every input image, write the outputs, return the records (one per input file)."""
    precision = check_precision(cfg.get("precision", "32-true"), cfg.ckpt_path)  # before any slow work
    out = Path(str(cfg.output)).expanduser()
    check_output_dir(out, bool(cfg.get("overwrite", False)))
    if cfg.get("max_image_pixels") is not None:
        Image.MAX_IMAGE_PIXELS = int(cfg.max_image_pixels)
    pipeline.configure_threads(cfg.get("num_threads"))
    paths = list_inputs(str(cfg.input))
    paths = _excluding_output(paths, out)
    if not paths:
        raise FileNotFoundError(f"input={cfg.input}: every matching file is inside output={out}")

    scorer = open_scorer(cfg.ckpt_path, cfg.get("device", "cpu"), precision, cfg.get("num_threads"))
    device = scorer.device
    image_thr, pixel_thr = scorer.thresholds
    if cfg.get("threshold") is not None:
        image_thr = _finite_or_none(cfg.threshold, "threshold")
    if cfg.get("pixel_threshold") is not None:
        pixel_thr = _finite_or_none(cfg.pixel_threshold, "pixel_threshold")
    write_masks, write_overlays = bool(cfg.get("masks", False)), bool(cfg.get("overlays", True))
    legend = bool(cfg.get("overlay_legend", True))
    if write_masks and pixel_thr is None:
        raise ValueError(f"masks=true needs a pixel threshold, but {cfg.ckpt_path} has none calibrated; "
                         "pass pixel_threshold=VALUE")
    if image_thr is None:
        log.warning("%s has no calibrated image threshold and threshold= was not given: labels stay empty",
                    cfg.ckpt_path)
    log.info("Scoring %d file(s) from %s with %s (image threshold %s, pixel threshold %s) on %s, %s",
             len(paths), cfg.input, cfg.ckpt_path, image_thr, pixel_thr, device,
             "onnxruntime float32" if is_onnx(cfg.ckpt_path) else f"precision {precision}")

    names = output_names(paths)
    dataset = PredictDataset(paths, scorer.image_size, cfg.get("max_image_pixels"))
    loader = DataLoader(dataset, batch_size=int(cfg.batch_size), shuffle=False, num_workers=int(cfg.num_workers),
                        collate_fn=collate_predict)
    records: list[dict[str, Any] | None] = [None] * len(paths)
    progress = tqdm(total=len(paths), unit="img", desc="predict", disable=not cfg.get("progress", True),
                    file=sys.stderr, dynamic_ncols=True)
    with progress, torch.inference_mode():
        for batch in loader:
            if batch["images"] is not None:
                maps = scorer(batch["images"])  # float32 (B, S, S), whatever ran inside
                own = None if scorer.score_is_map_maximum else scorer.image_scores(
                    maps, [batch["size"][idx] for idx in batch["ok"]])  # a score that is not the map's maximum
                for j, idx in enumerate(batch["ok"]):
                    full = resize_maps(maps[j : j + 1], batch["size"][idx])[0].cpu()
                    score = float(full.max() if own is None else own[j])
                    if not math.isfinite(score):  # a broken checkpoint: say so rather than write NaN maps
                        batch["error"][idx] = f"the anomaly map is not finite ({score}); is the checkpoint broken?"
                        continue
                    write_image_outputs(out, names[idx], full, batch["original"][idx], image_thr,
                                        pixel_thr if write_masks else None, write_overlays, legend, score,
                                        None if scorer.score_is_map_maximum else pixel_thr)
                    label = None if image_thr is None else int(score > image_thr)
                    records[idx] = {"path": str(paths[idx]), "score": score, "label": label,
                                    "threshold": image_thr, "error": None,
                                    "score_normalized": normalized_score(score, image_thr)}
            for idx, error in batch["error"].items():
                log.warning("Skipping %s: %s", paths[idx], error)
                records[idx] = {"path": str(paths[idx]), "score": None, "label": None,
                                "threshold": image_thr, "error": error, "score_normalized": None}
            progress.update(len(batch["index"]))

    done = [r for r in records if r is not None]
    assert len(done) == len(paths), "every input gets exactly one record"
    write_output(out / CSV_FILE, _csv_bytes(done))
    write_json(out / JSON_FILE, done)
    if cfg.get("overwrite", False):
        remove_stale_outputs(out, {names[i] for i, r in enumerate(records) if r is not None and not r["error"]})
    n_err = sum(1 for r in done if r["error"])
    n_anom = sum(1 for r in done if r["label"] == 1)
    summary = (f"[vitmemad] predict: {len(done) - n_err} image(s) scored, {n_anom} anomalous, "
               f"{n_err} skipped with errors -> {out / CSV_FILE}")
    log.info(summary)
    print(summary)
    return done


@hydra.main(version_base="1.3", config_path=str(config.CONF_DIR), config_name="predict")
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    cli.run(main)  # user errors: one line on stderr, exit 2 (vitmemad/cli.py)
