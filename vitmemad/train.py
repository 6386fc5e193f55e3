"""`python -m vitmemad.train [overrides]`: train on normal images, then test a checkpoint.

Only instantiates and runs: the module, datamodule, callbacks and loggers come from the config
(``vitmemad.build``); the shared pieces live in ``vitmemad.pipeline``.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from vitmemad import cli, config, config_check, pipeline, trainer_precision
from vitmemad.build import build_callbacks, build_datamodule, build_loggers, build_module
from vitmemad.callbacks import SaveRunConfig
from vitmemad.callbacks.labelled_validation import check_optimized_metric
from vitmemad.checkpoint import check_state_dict, load_checkpoint
from vitmemad.run_dir import METRICS_FILE, check_same_run, finished_run, resume_path
from vitmemad.utils import ddp_hydra, tensorboard_logging, wandb_logging
from vitmemad.utils.checkpoint_io import AtomicCheckpointIO

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, Any]:
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    config.prepare(cfg, HydraConfig.get().overrides.task)
    check_same_run(cfg.get("ckpt_path"), output_dir, pipeline.resolved_config(cfg))
    if finished_run(cfg.get("ckpt_path"), output_dir):
        log.info("%s holds a finished run: skipped (ckpt_path=auto)", output_dir)
        return {"optimized_metric": None, "metrics": json.loads((output_dir / METRICS_FILE).read_text())}
    resume = resume_path(cfg.get("ckpt_path"), output_dir)
    config_check.check_train(cfg, resume)  # one-line errors naming the key, before any data set-up
    check_optimized_metric(cfg.get("optimized_metric"), cfg.get("data"))
    L.seed_everything(cfg.seed, workers=True)
    pipeline.configure_threads(cfg.get("num_threads"))
    trainer_precision.resolve_trainer(cfg.trainer)  # bf16 only where the CPU has it
    run_cfg = pipeline.resolved_config(cfg)
    datamodule = build_datamodule(run_cfg["data"])
    module = build_module(run_cfg["model"])
    pipeline.compile_model(module.net, cfg.get("compile"))
    if resume is not None:  # another model config's checkpoint: an error naming the keys, not Lightning's traceback
        log.info("resuming from %s", resume)
        check_state_dict(module, load_checkpoint(resume)["state_dict"], resume, optional=frozenset())
    callbacks = [*build_callbacks(run_cfg.get("callbacks")), SaveRunConfig(run_cfg)]
    loggers = build_loggers(run_cfg.get("logger"))
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False,
        plugins=[AtomicCheckpointIO()],  # a kill or a full disk never leaves a truncated checkpoint
    )
    for logger in trainer.loggers:
        logger.log_hyperparams({"cfg": run_cfg})

    with pipeline.Timer() as timer:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    metric = trainer.callback_metrics.get(cfg.get("optimized_metric", "val/loss"))
    result: dict[str, Any] = {"optimized_metric": float(metric) if metric is not None else None}

    if not cfg.get("test_ckpt"):
        return result
    ckpt = pipeline.checkpoint_for_test(trainer, cfg.test_ckpt)
    test_trainer = pipeline.single_device_trainer(trainer, callbacks)
    if test_trainer is not None:  # rank 0 (or the only process) scores every test image once
        if pipeline.can_test(datamodule, ckpt):  # else metrics.json holds nulls; the checkpoint and thresholds are kept
            test_trainer.test(module, datamodule=datamodule, ckpt_path=ckpt, weights_only=True, verbose=False)
        record = pipeline.metrics_record(
            run_cfg, module, epochs=trainer.current_epoch, train_seconds=round(timer.seconds, 2), ckpt_path=ckpt
        )
        pipeline.write_test_outputs(output_dir, record, wandb_logging.run_notes(test_trainer.loggers))
        wandb_logging.log_test_results(test_trainer.loggers, record, output_dir)
        tensorboard_logging.log_test_results(test_trainer.loggers, record, output_dir, step=trainer.global_step)
        result["metrics"] = record
    return result


@hydra.main(version_base="1.3", config_path=str(config.CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    os.environ.setdefault("WANDB_MODE", "offline")  # W&B has no server by default: runs stay on disk
    try:
        with ddp_hydra.restored_environ():  # the next job of a multirun starts its own DDP ranks
            return train(cfg)["optimized_metric"]
    finally:
        wandb_logging.finish()  # each job of a multirun gets its own W&B run


def run() -> None:
    ddp_hydra.install()  # DDP worker ranks inside a multirun run this job only
    config.register_resolvers()  # ${vitmemad.sweep:...} of conf/categories/all.yaml, resolved by the sweeper
    cli.run(main)  # user errors: one line on stderr, exit 2 (vitmemad/cli.py)


if __name__ == "__main__":
    run()
