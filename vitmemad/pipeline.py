"""The pieces that train and eval share: threads, compile, the run config, metrics.json, the test trainer."""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from vitmemad import config_check, console
from vitmemad.config import net_parts, to_plain
from vitmemad.report.run_curves import save_run_curves
from vitmemad.run_dir import METRICS_FILE
from vitmemad.utils.io import write_json
from vitmemad.utils.provenance import provenance

log = logging.getLogger(__name__)

CURVES_FILE = "curves.png"

def configure_threads(num_threads: int | None) -> None:
    """Use the cores we have, not a server's default; DDP ranks share them."""
    if num_threads is None:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        num_threads = max(1, (os.cpu_count() or 1) // world)
    torch.set_num_threads(int(num_threads))


def compile_model(model: torch.nn.Module, option: bool | str | None) -> bool:
    """The ``compile`` key: torch.compile ``model`` in place (its state_dict keys, so checkpoints, stay the same).

    ``option`` is false/null (off), true (torch's default mode) or a mode name such as ``max-autotune``.
    """
    if option in (None, False) or str(option).lower() in ("false", "none", "off"):
        return False
    mode = None if option is True or str(option).lower() in ("true", "default") else str(option)
    model.compile(mode=mode)
    log.info("torch.compile(mode=%s): the first steps compile the model", mode or "default")
    return True


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """Plain-container copy of the run config plus the chosen group names (saved in checkpoints)."""
    try:
        choices = dict(HydraConfig.get().runtime.choices)
    except ValueError:  # composed outside a Hydra app (tests)
        choices = {}
    return to_plain(cfg, choices)


def model_name(cfg: dict[str, Any]) -> str:
    return cfg.get("choices", {}).get("model") or "unknown"


def ablation_name(cfg: dict[str, Any]) -> str | None:
    """The ablation variant of a model that has switchable parts; None for the others (cae, patchcore)."""
    return cfg["ablation"]["name"] if net_parts(cfg) and cfg.get("ablation") else None


def metrics_record(
    cfg: dict[str, Any],
    module: L.LightningModule,
    *,
    epochs: int,
    train_seconds: float | None,
    ckpt_path: str | None,
) -> dict[str, Any]:
    """The contract's metrics.json (shared/design/CONTRACT.md)."""
    results = module.test_results
    data_cfg = cfg["data"]
    return {
        "image_AUROC": results.get("image_AUROC"),
        "pixel_AUROC": results.get("pixel_AUROC"),
        "PRO": results.get("PRO"),
        "category": str(data_cfg.get("category")),
        "dataset": data_cfg.get("name"),
        "model": model_name(cfg),
        "ablation": ablation_name(cfg),
        "debug": cfg.get("debug"),
        "seed": cfg.get("seed"),
        "epochs": epochs,
        "train_seconds": train_seconds,
        "ckpt_path": ckpt_path,
        "per_defect": results.get("per_defect", {}),
        "num_test_images": results.get("num_test_images"),
        "labelled_val_fraction": data_cfg.get("labelled_val_fraction"),
        "memory": results.get("memory"),
        "reconstruction": results.get("reconstruction"),
        "image_size": data_cfg.get("image_size"),
        "anomaly_map": {k: v for k, v in (cfg.get("anomaly_map") or {}).items() if k != "_target_"},
        "pro_fpr_limit": cfg.get("metrics", {}).get("pro_fpr_limit", 0.3),
        "provenance": provenance(data_cfg.get("root") or data_cfg.get("normal_dir")),
        "curves": results.get("curves"),
    }


def write_test_outputs(output_dir: Path, record: dict[str, Any], notes: list[str] | tuple[str, ...] = ()) -> None:
    """metrics.json and curves.png; the metrics once on stdout as a table (``vitmemad.console``), ``notes`` below."""
    write_json(output_dir / METRICS_FILE, record)
    save_run_curves(record.get("curves"), output_dir / CURVES_FILE, f"{record['model']} / {record['category']}")
    console.print_results(record, output_dir / METRICS_FILE, notes)


def can_test(datamodule: L.LightningDataModule, ckpt: str | None = None) -> bool:
    """Whether the test set has an anomalous image; without one, say so once (no metric is defined)."""
    if getattr(datamodule, "has_anomalies", True):
        return True
    log.warning("no test: no abnormal images (give data.abnormal_dir to test: python -m vitmemad.eval "
                "ckpt_path=%s data.abnormal_dir=DIR [data.mask_dir=DIR]); the metrics in metrics.json are null",
                ckpt or "CKPT")
    return False


class Timer:
    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def checkpoint_for_test(trainer: L.Trainer, which: str) -> str | None:
    """Path of the `best` (monitored) or `last` checkpoint; falls back to `last`."""
    if which not in ("best", "last"):
        raise ValueError(f"test_ckpt must be 'best', 'last' or null, got {which!r}")
    callback = trainer.checkpoint_callback
    if callback is None:
        return None
    best = getattr(callback, "best_model_path", "") if which == "best" else ""
    config_check.require_best(best, which)  # no silent fallback to last
    return best or getattr(callback, "last_model_path", "") or None


def single_device_trainer(trainer: L.Trainer, callbacks: list[L.Callback] = ()) -> L.Trainer | None:
    """The trainer that tests: the fit trainer itself, or after DDP a fresh one-device trainer on rank 0.

    Lightning's DistributedSampler pads uneven shards with repeated images; testing on one process
    scores every test image exactly once. Other ranks get None and stop.
    """
    if trainer.world_size == 1:
        return trainer
    import torch.distributed as dist

    is_zero = trainer.is_global_zero
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    if not is_zero:
        return None
    return L.Trainer(
        accelerator=trainer.accelerator.__class__.__name__.replace("Accelerator", "").lower() or "cpu",
        devices=1,
        precision=trainer.precision,
        logger=trainer.loggers or False,
        callbacks=list(callbacks),
        default_root_dir=trainer.default_root_dir,
        enable_model_summary=False,
    )
