"""Weights & Biases for `logger=wandb` (conf/logger/wandb.yaml): the logger, and what a run logs after testing.

During training Lightning logs the hyperparameters (the resolved run config, under ``cfg``) and the loss terms
(``train/*``, ``val/*``). After the test, ``log_test_results`` adds:

- summary: ``test/image_AUROC``, ``test/pixel_AUROC``, ``test/PRO`` (exact, as in metrics.json; left out when
  null), ``test/num_test_images``, the memory diagnostics ``test/memory/mean_entropy``,
  ``test/memory/unused_fraction``, ``test/memory/never_top1_fraction``, ``test/memory/mean_active_items``,
  ``test/memory/used_fraction``, ``test/memory/feature_relative_error``, ``test/memory/readout_image_share``,
  the reconstruction's ``test/reconstruction/r2`` and ``test/reconstruction/image_share`` (metrics.json
  ``reconstruction``), and ``category``, ``dataset``, ``model``, ``ablation``, ``seed``;
- ``test/examples``: the examples.png grid (input | reconstruction | anomaly map | ground truth);
- ``test/summary``: a table with one row per category (this run's), so the tables of a sweep's runs
  concatenate into a per-category table in the W&B UI; ``test/per_defect``: image AUROC per defect type;
- ``test/memory/usage`` (mean addressing weight of each memory item) and ``test/memory/top1_usage`` as
  histograms over the item index;
- ``test/curves/image_roc``, ``test/curves/pixel_roc``, ``test/curves/pro``: line plots of metrics.json's
  ``curves`` (left out when null), and ``test/charts/per_defect``, a bar plot of the per-defect image AUROC.

Runs are offline unless WANDB_MODE says otherwise (``wandb sync <run dir>/wandb/offline-run-*`` uploads them).
In a multirun every job gets the sweep folder's name as its W&B group.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Iterable

log = logging.getLogger(__name__)

SUMMARY_COLUMNS = (
    "dataset", "category", "model", "ablation", "seed", "epochs",
    "image_AUROC", "pixel_AUROC", "PRO", "num_test_images", "train_seconds",
)
#: metrics.json curve -> (its y key, the plot's title)
CURVE_PLOTS = {"image_roc": ("tpr", "Image ROC"), "pixel_roc": ("tpr", "Pixel ROC"), "pro": ("pro", "PRO curve")}
MEMORY_SCALARS = ("mean_entropy", "max_entropy", "unused_fraction", "never_top1_fraction", "mean_active_items",
                  "used_fraction", "feature_relative_error", "readout_image_share")
#: metrics.json ``reconstruction`` figures logged as ``test/reconstruction/<key>``
RECONSTRUCTION_SCALARS = ("r2", "image_share")


def _hydra_config() -> Any | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get()
    except (ImportError, ValueError):
        return None


def sweep_group() -> str | None:
    """The sweep folder's name in a Hydra multirun (shared by all its jobs), else None."""
    hc = _hydra_config()
    if hc is None:
        return None
    from hydra.types import RunMode

    if hc.mode != RunMode.MULTIRUN:
        return None
    return Path(str(hc.sweep.dir)).name or None


def choice_tags() -> list[str]:
    """``model:vitmemad_cpu``, ``data:demo``, ``ablation:m_ca``, ``experiment:...`` from Hydra's choices."""
    hc = _hydra_config()
    if hc is None:
        return []
    choices = hc.runtime.choices
    return [f"{k}:{choices[k]}" for k in ("data", "model", "ablation", "experiment", "hparams_search")
            if choices.get(k) not in (None, "null")][:20]


def _offline(kwargs: dict[str, Any]) -> bool:
    return bool(kwargs.get("offline")) or os.environ.get("WANDB_MODE", "").lower() in ("offline", "dryrun", "disabled")


def quiet_settings(offline: bool) -> Any:
    """W&B settings without its console chatter (start banner, run history and summary at the end).

    Offline, W&B is ``silent`` (nothing can go wrong on a network; the results table names the run folder);
    online it is only ``quiet``, so its warnings and the run's address still show.
    """
    import wandb

    return wandb.Settings(quiet=True, silent=offline)


def wandb_logger(*, save_dir: str, group: str | None = None, tags: Iterable[str] = (), **kwargs: Any):
    """A Lightning ``WandbLogger``; ``group`` defaults to the sweep folder's name in a multirun."""
    from lightning.pytorch.loggers import WandbLogger

    Path(save_dir).mkdir(parents=True, exist_ok=True)
    all_tags = list(dict.fromkeys([*(tags or []), *choice_tags()]))
    kwargs.setdefault("settings", quiet_settings(_offline(kwargs)))
    logger = WandbLogger(save_dir=save_dir, group=group or sweep_group(), tags=all_tags, **kwargs)
    init = getattr(logger, "_wandb_init", {})
    if init.get("anonymous", "") is None:  # Lightning passes anonymous=None, which W&B >= 0.2x warns about
        del init["anonymous"]
    return logger


def run_notes(loggers: Iterable[Any]) -> list[str]:
    """One line per W&B run: where it is and, offline, how to upload it (W&B itself is quiet)."""
    notes = []
    for logger in wandb_loggers(loggers):
        run = logger.experiment
        if getattr(run, "offline", False):  # run.url would warn that an offline run has none
            notes.append(f"W&B run: {run.sync_dir} (upload with: wandb sync {run.sync_dir})")
        elif getattr(run, "url", None):
            notes.append(f"W&B run: {run.url}")
    return notes


def wandb_loggers(loggers: Iterable[Any]) -> list[Any]:
    if "lightning.pytorch.loggers.wandb" not in sys.modules:
        return []
    from lightning.pytorch.loggers import WandbLogger

    return [lg for lg in loggers or [] if isinstance(lg, WandbLogger)]


def _bars(values: list[float]) -> Any:
    """A histogram whose bar i is item i's value."""
    import numpy as np
    import wandb

    return wandb.Histogram(np_histogram=(np.asarray(values, dtype=float), np.arange(len(values) + 1, dtype=float)))


def log_test_results(loggers: Iterable[Any], record: dict[str, Any], output_dir: str | Path,
                     examples_file: str = "examples.png") -> None:
    """Log the test metrics, examples grid, per-category table and memory diagnostics to every W&B logger."""
    for logger in wandb_loggers(loggers):
        try:
            _log_one(logger, record, Path(output_dir) / examples_file)
        except Exception as err:  # a logging failure must not lose a finished run's metrics.json
            log.warning("W&B logging of the test results failed: %s", err)


def _log_one(logger: Any, record: dict[str, Any], examples: Path) -> None:
    import wandb

    run = logger.experiment
    summary: dict[str, Any] = {f"test/{k}": record[k] for k in ("image_AUROC", "pixel_AUROC", "PRO")
                               if record.get(k) is not None}
    summary["test/num_test_images"] = record.get("num_test_images")
    summary.update({k: record.get(k) for k in ("category", "dataset", "model", "ablation", "seed")})
    memory = record.get("memory")
    media: dict[str, Any] = {}
    if memory:
        summary.update({f"test/memory/{k}": memory[k] for k in MEMORY_SCALARS if k in memory})
        media["test/memory/usage"] = _bars(memory["usage"])
        media["test/memory/top1_usage"] = _bars(memory["top1_usage"])
    reconstruction = record.get("reconstruction") or {}
    summary.update({f"test/reconstruction/{k}": reconstruction[k] for k in RECONSTRUCTION_SCALARS
                    if k in reconstruction})
    media["test/summary"] = wandb.Table(columns=list(SUMMARY_COLUMNS),
                                        data=[[record.get(c) for c in SUMMARY_COLUMNS]])
    media["test/per_defect"] = wandb.Table(
        columns=["category", "defect", "image_AUROC"],
        data=[[record.get("category"), d, v] for d, v in sorted((record.get("per_defect") or {}).items())],
    )
    media.update(_charts(record))
    if examples.is_file():
        media["test/examples"] = wandb.Image(
            str(examples), caption="input | reconstruction | anomaly map | ground truth")
    run.log(media)
    run.summary.update(summary)


def _charts(record: dict[str, Any]) -> dict[str, Any]:
    """The curves as W&B line plots and the per-defect image AUROC as a bar plot."""
    import wandb

    charts: dict[str, Any] = {}
    for key, (ykey, title) in CURVE_PLOTS.items():
        curve = (record.get("curves") or {}).get(key)
        if curve:
            table = wandb.Table(columns=["fpr", ykey], data=[list(p) for p in zip(curve["fpr"], curve[ykey])])
            charts[f"test/curves/{key}"] = wandb.plot.line(table, "fpr", ykey,
                                                           title=f"{title}: {record.get('category')}")
    defects = sorted((record.get("per_defect") or {}).items())
    if defects:
        table = wandb.Table(columns=["defect", "image_AUROC"], data=[list(d) for d in defects])
        charts["test/charts/per_defect"] = wandb.plot.bar(table, "defect", "image_AUROC",
                                                         title=f"Image AUROC per defect: {record.get('category')}")
    return charts


def finish(exit_code: int | None = None) -> None:
    """End the active W&B run (if any): every job of a multirun gets its own run."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=exit_code)
