"""`python -m vitmemad.eval ckpt_path=PATH [overrides]`: test a checkpoint, write metrics.json."""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from vitmemad import cli, config, pipeline, trainer_precision
from vitmemad.build import build_datamodule, build_module
from vitmemad.callbacks import ExampleGrid, LogProgress, MemoryDiagnostics, ThresholdCalibration
from vitmemad.checkpoint import load_checkpoint, load_state_dict_strict
from vitmemad.errors import ConfigError

log = logging.getLogger(__name__)
OVERRIDABLE = ("data", "anomaly_map", "metrics")


def apply_overrides(run_cfg: dict[str, Any], cfg: DictConfig) -> dict[str, Any]:
    """Replace the checkpoint's values by the non-null keys the user gave on the command line."""
    for section in OVERRIDABLE:
        given = OmegaConf.to_container(cfg.get(section) or {}, resolve=True)
        run_cfg.setdefault(section, {}).update({k: v for k, v in given.items() if v is not None})
    # the module's copies of the map and the PRO limit (the saved config is resolved: no interpolation links them)
    model = run_cfg["model"]
    model["anomaly_map"] = {**model.get("anomaly_map", {}), **run_cfg["anomaly_map"]}
    model["pro_fpr_limit"] = float(run_cfg["metrics"].get("pro_fpr_limit", model.get("pro_fpr_limit", 0.3)))
    return run_cfg


def apply_registration(run_cfg: dict[str, Any], cfg: DictConfig) -> None:
    """``registration=shift|none`` on the command line replaces the checkpoint's test-time registration, so a run
    trained before (or with) registration can be scored either way; absent, the checkpoint's own is kept."""
    if "registration" not in cfg:
        return
    if not str(run_cfg["model"].get("_target_", "")).endswith("ReconstructionModule"):  # PatchCore, the mean image
        raise ConfigError(f"registration={'none' if cfg.registration is None else 'shift'}: {cfg.ckpt_path} is not a "
                          "reconstruction model (a ReconstructionModule: the ViT models, the CAE); registration "
                          "applies only to those")
    given = None
    if cfg.registration is not None:
        given = OmegaConf.to_container(cfg.registration, resolve=False)
        given["image_size"] = int(run_cfg["data"]["image_size"])  # the run's input size, not eval's (unset) one
    run_cfg["registration"] = run_cfg["model"]["registration"] = given


# Buffers of scoring options eval may switch: present in the module but not the checkpoint, they start fresh and are
# calibrated before testing; present only in the checkpoint, they belong to an option switched off.
SCORING_BUFFERS = ("registration.", "anomaly_map.")


def load_weights(module, state_dict: dict[str, Any], source: str) -> None:
    """The checkpoint's weights, with the scoring buffers of the options eval has switched on or off."""
    own = module.state_dict()
    scoring = {k for k in set(own) | set(state_dict) if k.startswith(SCORING_BUFFERS)}
    state_dict = {k: v for k, v in state_dict.items() if k not in scoring or k in own}
    state_dict.update({k: own[k] for k in scoring & set(own) - set(state_dict)})
    load_state_dict_strict(module, state_dict, source)


def scoring(run_cfg: dict[str, Any]) -> tuple:
    """What decides how a checkpoint's images are scored: its map and its registration."""
    return copy.deepcopy((run_cfg.get("anomaly_map"), run_cfg["model"].get("registration")))


def recalibrate(cfg: DictConfig, run_cfg: dict[str, Any], module, datamodule) -> None:
    """A changed map or registration gets the statistics of normal validation images and the thresholds a run
    computes at every validation (ThresholdCalibration), not the stale ones saved for the checkpoint's own map. A
    registration the checkpoint did not carry first gets its reference, the mean normal validation image, as a run
    sets it at fit start."""
    registration = getattr(module, "registration", None)
    if registration is not None and not bool(registration.ready):
        datamodule.setup("fit")
        registration.reference_from(datamodule, torch.device("cpu"))
    calibration = ThresholdCalibration(**run_cfg.get("threshold", {}))
    trainer = hydra.utils.instantiate(cfg.trainer, logger=False, max_epochs=1, callbacks=[calibration],
                                      enable_progress_bar=False)
    trainer.validate(module, datamodule=datamodule, verbose=False)
    log.info("scoring differs from the checkpoint's: normal statistics and thresholds recalibrated on the "
             "validation images (image threshold %.4g)", float(module.image_threshold))


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    ckpt = load_checkpoint(cfg.ckpt_path)
    saved = scoring(ckpt["hyper_parameters"]["cfg"])
    run_cfg = apply_overrides(ckpt["hyper_parameters"]["cfg"], cfg)
    apply_registration(run_cfg, cfg)
    L.seed_everything(run_cfg.get("seed", 0), workers=True)
    pipeline.configure_threads(cfg.get("num_threads"))
    module = build_module(run_cfg["model"])
    datamodule = build_datamodule(run_cfg["data"])
    load_weights(module, ckpt["state_dict"], cfg.ckpt_path)
    if not getattr(datamodule, "has_anomalies", True):
        raise ConfigError(f"nothing to test: the test set of {cfg.ckpt_path} has no abnormal images; "
                          "give data.abnormal_dir=DIR [data.mask_dir=DIR]")
    trainer_precision.resolve_trainer(cfg.trainer)
    if scoring(run_cfg) != saved:
        recalibrate(cfg, run_cfg, module, datamodule)
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer, logger=False, max_epochs=1, callbacks=[ExampleGrid(), MemoryDiagnostics(), LogProgress()]
    )  # LogProgress: no progress bar without a terminal
    trainer.test(module, datamodule=datamodule, verbose=False)  # the results table of write_test_outputs instead
    record = pipeline.metrics_record(
        run_cfg, module, epochs=int(ckpt.get("epoch", -1)) + 1, train_seconds=None,
        ckpt_path=str(Path(cfg.ckpt_path).resolve()),
    )
    pipeline.write_test_outputs(output_dir, record)
    return record


@hydra.main(version_base="1.3", config_path=str(config.CONF_DIR), config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    cli.run(main)  # user errors: one line on stderr, exit 2 (vitmemad/cli.py)
