"""Config nodes -> objects, with ``hydra.utils.instantiate``: the module (handed its net and parts), the
datamodule, the callbacks and the loggers."""
from __future__ import annotations

from typing import Any, Mapping

import hydra
import lightning as L

from vitmemad.callbacks import ThresholdCalibration
from vitmemad.errors import ConfigError

#: data config keys that describe the dataset rather than configure its datamodule
DATA_METADATA = ("name", "categories")


def build_module(model_cfg: Mapping[str, Any]) -> L.LightningModule:
    """The ``model`` node: a LightningModule with its net, loss, anomaly map, optimizer and scheduler."""
    return hydra.utils.instantiate(model_cfg, _convert_="all")


def build_datamodule(data_cfg: Mapping[str, Any]) -> L.LightningDataModule:
    return hydra.utils.instantiate({k: v for k, v in data_cfg.items() if k not in DATA_METADATA}, _convert_="all")


def build_callbacks(callbacks_cfg: Mapping[str, Any] | None) -> list[L.Callback]:
    """The ``callbacks`` node's callbacks; refuses a set without threshold calibration (predict needs it)."""
    callbacks = [hydra.utils.instantiate(c) for c in (callbacks_cfg or {}).values() if c is not None]
    if not any(isinstance(c, ThresholdCalibration) for c in callbacks):
        raise ConfigError("callbacks.threshold_calibration is missing: predict needs the thresholds it calibrates "
                          "(keep `callbacks: default`, or add vitmemad.callbacks.ThresholdCalibration)")
    return callbacks


def build_loggers(logger_cfg: Mapping[str, Any] | None) -> list[Any]:
    return [hydra.utils.instantiate(c) for c in (logger_cfg or {}).values() if c is not None]
