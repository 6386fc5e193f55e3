"""Validate a training config at start-up, before data set-up, so a bad value costs seconds, not an epoch.

Each rule names a key, a test and what was expected; a failure is one ``ConfigError`` line naming the key and its
value (``vitmemad.cli`` prints it, exit 2). Keys a config does not have (another model, another dataset) are skipped.
"""
from __future__ import annotations

import math
from numbers import Real
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from vitmemad.errors import ConfigError

ABSENT = object()  # what `select` returns for a key the config does not have


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool)


def positive_int(v: Any) -> bool:
    return _is_int(v) and v > 0


def non_negative_int(v: Any) -> bool:
    return _is_int(v) and v >= 0


def positive(v: Any) -> bool:
    return _is_number(v) and math.isfinite(v) and v > 0


def non_negative(v: Any) -> bool:
    """NaN passes (a deliberate way to test the NaN-loss guard); negative numbers do not."""
    return _is_number(v) and not v < 0


def probability(v: Any) -> bool:
    return _is_number(v) and 0 <= v <= 1


def one_of(*choices: Any) -> Callable[[Any], bool]:
    return lambda v: v in choices


def optional(rule: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or rule(v)


#: (key, test, what was expected)
TRAIN_RULES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("seed", _is_int, "an integer"),
    ("num_threads", optional(positive_int), "a positive integer or null"),
    ("trainer.max_epochs", lambda v: _is_int(v) and (v >= 1 or v == -1),
     "a positive integer (or -1 for no limit); 0 would train nothing and test an untrained model"),
    ("trainer.max_steps", lambda v: _is_int(v) and (v >= 1 or v == -1),
     "a positive number of optimizer steps (or -1: trainer.max_epochs alone ends the run)"),
    ("data.image_size", positive_int, "a positive integer"),
    ("model.optimizer.lr", positive, "a positive number"),
    ("model.optimizer.weight_decay", non_negative, "a number >= 0"),
    ("model.scheduler.warmup_epochs", non_negative, "a number >= 0"),
    ("model.net.memory.size", positive_int, "a positive integer"),
    ("model.net.memory.temperature", positive, "a positive number"),
    ("callbacks.memory_training.warmup_epochs", non_negative_int, "an integer >= 0"),
    ("loss.lambda_ssim", non_negative, "a number >= 0"),
    ("loss.lambda_ent", non_negative, "a number >= 0"),
    ("loss.lambda_mem", non_negative, "a number >= 0"),
    ("loss.lambda_gms", non_negative, "a number >= 0"),
    ("loss.mem_commitment", non_negative, "a number >= 0"),
    ("anomaly_map.reference", one_of("none", "normal_mean"), "none or normal_mean"),
    ("threshold.image_quantile", probability, "a number in [0, 1]"),
    ("threshold.pixel_quantile", probability, "a number in [0, 1]"),
    ("metrics.pro_fpr_limit", lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]"),
    ("test_ckpt", one_of("best", "last", None), "best, last or null"),
    ("data.val_fraction", lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    ("data.batch_size", positive_int, "a positive integer"),
    ("data.num_workers", non_negative_int, "an integer >= 0"),
)


def select(cfg: DictConfig | dict, key: str) -> Any:
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(cfg)
    try:
        return OmegaConf.select(cfg, key, default=ABSENT, throw_on_missing=False)
    except Exception as err:  # an interpolation that does not resolve: name the key
        raise ConfigError(f"{key}: {err}") from err


def check_keys(cfg: DictConfig, rules=TRAIN_RULES) -> None:
    for key, ok, expected in rules:
        value = select(cfg, key)
        if value is not ABSENT and not ok(value):
            raise ConfigError(f"{key}={value!r}: expected {expected}")


#: what a mandatory data key (``???`` in conf/data/) is, for its error line
REQUIRED_DATA = {"normal_dir": "the folder of normal (good) images to train on, e.g. data.normal_dir=imgs/good"}


def check_required(cfg: DictConfig | dict) -> None:
    """A mandatory ``data`` key that was not given: one line naming it, before Hydra writes the run folder."""
    data = select(cfg, "data")
    if not isinstance(data, DictConfig):
        return
    for key in data:
        if OmegaConf.is_missing(data, key):
            what = REQUIRED_DATA.get(str(key), "a value")
            raise ConfigError(f"data.{key} is required with data={select(cfg, 'data.name')}: {what}")


def check_resume(max_epochs: Any, ckpt_path: str | Path) -> None:
    """A resume must not ask for fewer epochs than the checkpoint has completed."""
    from vitmemad.checkpoint import read_checkpoint

    ckpt = read_checkpoint(ckpt_path, mmap=True)
    epoch = ckpt.get("epoch") if isinstance(ckpt, dict) else None
    completed = int(epoch) + 1 if _is_int(epoch) else None
    if completed is not None and max_epochs != -1 and max_epochs < completed:
        raise ConfigError(
            f"trainer.max_epochs={max_epochs} is below the {completed} epochs checkpoint {ckpt_path} has completed; "
            f"set trainer.max_epochs to {completed} or more to resume or extend it"
        )


def check_train(cfg: DictConfig, resume: str | None) -> None:
    """Every start-up check of ``vitmemad.train``: keys, the test checkpoint choice, the resume epochs."""
    check_required(cfg)
    check_keys(cfg)
    if select(cfg, "test_ckpt") == "best" and select(cfg, "data.val_fraction") == 0:
        raise ConfigError(
            "test_ckpt=best needs validation images to pick the best epoch, but data.val_fraction=0: "
            "use test_ckpt=last, or data.val_fraction > 0"
        )
    if select(cfg, "trainer.max_epochs") == -1 and select(cfg, "trainer.max_steps") in (-1, None, ABSENT):
        raise ConfigError("trainer.max_epochs=-1 needs a budget in steps, trainer.max_steps=N: the run would never end")
    if resume is not None:
        check_resume(select(cfg, "trainer.max_epochs"), resume)


def require_best(best_path: str, which: str) -> None:
    """After training: ``test_ckpt=best`` with no best checkpoint is an error, not a silent fallback to last."""
    if which == "best" and not best_path:
        raise ConfigError(
            "test_ckpt=best but this run has no best checkpoint (val/loss was never computed in it); "
            "use test_ckpt=last"
        )
