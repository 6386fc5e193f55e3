"""`python -m vitmemad.train [overrides]`: train on normal images, then test a checkpoint.

Only instantiates and runs; the pieces live in ``vitmemad.pipeline``.
"""
from __future__ import annotations

from vitmemad.errors import VitmemadError

import logging
import os
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from vitmemad import cli, config_check, pipeline
from vitmemad.checkpoint import check_file, check_state_dict, load_checkpoint
from vitmemad.data import labelled_split
from vitmemad.models.lightning_module import AnomalyModule
from vitmemad.utils import ddp_hydra, hydra_resolvers, wandb_logging  # noqa: F401  (registers ${vitmemad.sweep:...})
from vitmemad.utils.checkpoint_io import AtomicCheckpointIO

log = logging.getLogger(__name__)
os.environ.setdefault("WANDB_MODE", "offline")
ddp_hydra.install()  # DDP worker ranks inside a multirun run this job only


class RunDirError(VitmemadError, FileExistsError):
    """The output directory already holds a finished run."""


def resume_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    if ckpt_path in (None, ""):
        if (output_dir / pipeline.METRICS_FILE).exists():
            raise RunDirError(
                f"{output_dir} already holds a finished run ({pipeline.METRICS_FILE}); choose another "
                "hydra.run.dir, or pass ckpt_path=last to resume it"
            )
        if (output_dir / "checkpoints" / "last.ckpt").exists():  # never start over an unfinished run by mistake
            raise RunDirError(
                f"{output_dir} holds the checkpoints of an unfinished run; pass ckpt_path=last to resume it, "
                "or choose another hydra.run.dir"
            )
        return None
    if ckpt_path == "last":
        last = output_dir / "checkpoints" / "last.ckpt"
        if not last.is_file():
            raise FileNotFoundError(f"ckpt_path=last but {last} does not exist: nothing to resume in {output_dir}")
        return str(last)
    return str(check_file(ckpt_path))  # a folder lists the checkpoints inside it


def build_callbacks(cfg: DictConfig) -> list[L.Callback]:
    return [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]


def build_loggers(cfg: DictConfig) -> list[Any]:
    return [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]


def train(cfg: DictConfig) -> dict[str, Any]:
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    resume = resume_path(cfg.get("ckpt_path"), output_dir)
    config_check.check_train(cfg, resume)  # one-line errors naming the key, before any data set-up
    labelled_split.check_optimized_metric(cfg.get("optimized_metric"), cfg.get("data"))
    L.seed_everything(cfg.seed, workers=True)
    pipeline.configure_threads(cfg.get("num_threads"))
    run_cfg = pipeline.resolved_config(cfg)
    datamodule = pipeline.build_datamodule(run_cfg["data"])
    module = AnomalyModule(run_cfg)
    pipeline.compile_model(module.model, cfg.get("compile"))
    if resume is not None:  # another model config's checkpoint: an error naming the keys, not Lightning's traceback
        check_state_dict(module, load_checkpoint(resume)["state_dict"], resume, optional=frozenset())
    callbacks = build_callbacks(cfg) + labelled_split.callbacks_for(datamodule)  # val/image_AUROC if labelled
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=build_loggers(cfg) or False,
        plugins=[AtomicCheckpointIO()],  # a kill or a full disk never leaves a truncated checkpoint
    )

    with pipeline.Timer() as timer:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    metric = trainer.callback_metrics.get(cfg.get("optimized_metric", "val/loss"))
    result: dict[str, Any] = {"optimized_metric": float(metric) if metric is not None else None}

    if not cfg.get("test_ckpt"):
        return result
    ckpt = pipeline.checkpoint_for_test(trainer, cfg.test_ckpt)
    test_trainer = pipeline.single_device_trainer(trainer)
    if test_trainer is not None:  # rank 0 (or the only process) scores every test image once
        test_trainer.test(module, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
        record = pipeline.metrics_record(
            run_cfg, module, epochs=trainer.current_epoch, train_seconds=round(timer.seconds, 2), ckpt_path=ckpt
        )
        pipeline.write_test_outputs(output_dir, record, module)
        wandb_logging.log_test_results(test_trainer.loggers, record, output_dir)
        result["metrics"] = record
    return result


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        with ddp_hydra.restored_environ():  # the next job of a multirun starts its own DDP ranks
            return train(cfg)["optimized_metric"]
    finally:
        wandb_logging.finish()  # each job of a multirun gets its own W&B run


if __name__ == "__main__":
    cli.run(main)  # user errors: one line on stderr, exit 2 (vitmemad/cli.py)
