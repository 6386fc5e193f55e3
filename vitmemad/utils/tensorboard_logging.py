"""TensorBoard for `logger=tensorboard` (conf/logger/tensorboard.yaml): the logger, and what a run adds after testing.

Event files go to ``<run dir>/tensorboard/version_0/`` (``tensorboard --logdir outputs`` shows every run). During
training Lightning writes the loss terms (``train/*``, ``val/*``) as scalars, after the test ``test/image_AUROC``,
``test/pixel_AUROC`` and ``test/PRO``; the resolved run config goes to ``hparams.yaml`` beside the events.
``log_test_results`` then adds what the W&B logger gets too (vitmemad/utils/wandb_logging.py):

- an HParams entry: the run config, flattened (``cfg/model/memory/size``, ...), with the test metrics, so the runs
  of a sweep line up in one table of TensorBoard's HPARAMS tab (``hp_metric`` is not written: it would be -1);
- ``test/memory/*`` (memory diagnostics), ``test/reconstruction/*`` (metrics.json ``reconstruction``) and
  ``test/per_defect/<defect>`` (image AUROC per defect type) scalars;
- ``test/examples`` (examples.png) and ``test/curves`` (curves.png) images.
"""
from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

from vitmemad.errors import ConfigError
from vitmemad.utils.wandb_logging import MEMORY_SCALARS, RECONSTRUCTION_SCALARS

log = logging.getLogger(__name__)

TEST_METRICS = ("image_AUROC", "pixel_AUROC", "PRO")
IMAGES = {"test/examples": "examples.png", "test/curves": "curves.png"}


def tensorboard_logger(*, save_dir: str, **kwargs: Any):
    """A Lightning ``TensorBoardLogger``, or one clear error when the ``tensorboard`` package is missing."""
    if importlib.util.find_spec("tensorboard") is None and importlib.util.find_spec("tensorboardX") is None:
        raise ConfigError("logger=tensorboard needs the tensorboard package: pip install 'vitmemad[tensorboard]'")
    from lightning.pytorch.loggers import TensorBoardLogger

    kwargs.setdefault("default_hp_metric", False)
    return TensorBoardLogger(save_dir=save_dir, **kwargs)


def tensorboard_loggers(loggers: Iterable[Any]) -> list[Any]:
    if "lightning.pytorch.loggers.tensorboard" not in sys.modules:
        return []
    from lightning.pytorch.loggers import TensorBoardLogger

    return [lg for lg in loggers or [] if isinstance(lg, TensorBoardLogger)]


def flat_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> ``{"cfg/model/memory/size": 16, ...}`` with values TensorBoard's HParams plugin takes."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flat_params(value, f"{name}/"))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:  # None, lists
            flat[name] = str(value)
    return flat


def log_test_results(loggers: Iterable[Any], record: dict[str, Any], output_dir: str | Path, step: int = 0) -> None:
    """Add the HParams entry, memory and per-defect scalars and the run's figures to every TensorBoard logger."""
    for logger in tensorboard_loggers(loggers):
        try:
            _log_one(logger, record, Path(output_dir), step)
        except Exception as err:  # a logging failure must not lose a finished run's metrics.json
            log.warning("TensorBoard logging of the test results failed: %s", err)


def _log_one(logger: Any, record: dict[str, Any], output_dir: Path, step: int) -> None:
    import numpy as np
    from PIL import Image
    from torch.utils.tensorboard.summary import hparams

    writer = logger.experiment  # reopens its event file if the end of testing closed it
    # the HParams table names the metrics; their values are the test/* scalars Lightning wrote into this run
    metrics = {f"test/{k}": float(record[k]) for k in TEST_METRICS if record.get(k) is not None}
    file_writer = writer._get_file_writer()
    for summary in hparams(flat_params(dict(logger.hparams or {})), metrics):
        file_writer.add_summary(summary, step)
    for section, keys in (("memory", MEMORY_SCALARS), ("reconstruction", RECONSTRUCTION_SCALARS)):
        values = record.get(section) or {}
        for key in keys:
            if isinstance(values.get(key), (int, float)) and not isinstance(values.get(key), bool):
                writer.add_scalar(f"test/{section}/{key}", float(values[key]), step)
    for defect, value in sorted((record.get("per_defect") or {}).items()):
        if value is not None:
            writer.add_scalar(f"test/per_defect/{defect}", float(value), step)
    for tag, name in IMAGES.items():
        if (output_dir / name).is_file():
            with Image.open(output_dir / name) as img:
                writer.add_image(tag, np.asarray(img.convert("RGB")), step, dataformats="HWC")
    writer.close()  # flushed: the run's events are complete on disk
