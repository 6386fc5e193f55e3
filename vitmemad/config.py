"""Where the configs are, how a composed config becomes a run config, and the old spellings of moved keys.

- ``CONF_DIR``: ``conf/`` at the project root in a source checkout, or the copy inside an installed wheel.
- ``rewrite_overrides``: command-line keys that moved keep working (``model.epochs=5`` is
  ``trainer.max_epochs=5``, ``model.memory.size=50`` is ``model.net.memory.size=50``, ...; see ``ALIASES``).
- ``prepare``: the ablation switches and the debug preset's sizes are applied to the parts of ``model.net`` that
  the model has (``ablation=base`` makes ``model.net.memory`` and ``model.net.coord_attention`` null).
- ``compose``: one composition for every caller outside a Hydra main (tests, export, bench).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable, Sequence

from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)

_PACKAGE = Path(__file__).resolve().parent
CONF_DIR = _PACKAGE / "conf" if (_PACKAGE / "conf" / "train.yaml").is_file() else _PACKAGE.parent / "conf"

#: old key (or key prefix, ending in ".") -> where it lives now; the most specific match wins
ALIASES = {
    "model.epochs": "trainer.max_epochs",
    "model.image_size": "data.image_size",
    "model.batch_size": "data.batch_size",
    "model.memory.warmup_epochs": "callbacks.memory_training.warmup_epochs",
    "model.memory.restart_every": "callbacks.memory_training.restart_every",
    "model.memory.restart_min_share": "callbacks.memory_training.restart_min_share",
    "model.optimizer.warmup_epochs": "model.scheduler.warmup_epochs",
    "model.encoder.": "model.net.encoder.",
    "model.memory.": "model.net.memory.",
    "model.coord_attention.": "model.net.coord_attention.",
    "model.decoder.": "model.net.decoder.",
}
#: parts of ``model.net`` that the ``ablation`` group switches off
ABLATION_PARTS = ("memory", "coord_attention")


def new_key(key: str) -> str:
    """The current spelling of a config key (itself when it did not move)."""
    for old in sorted(ALIASES, key=len, reverse=True):
        if key == old or (old.endswith(".") and key.startswith(old)):
            return ALIASES[old] + key[len(old):] if old.endswith(".") else ALIASES[old]
    return key


def rewrite_overrides(overrides: Iterable[str]) -> list[str]:
    """Command-line overrides with moved keys renamed (``+``/``++``/``~`` prefixes and values kept)."""
    out = []
    for override in overrides:
        prefix = override[: len(override) - len(override.lstrip("+~"))]
        key, sep, value = override[len(prefix):].partition("=")
        renamed = new_key(key)
        if renamed != key:
            log.info("config key %s is now %s", key, renamed)
        out.append(f"{prefix}{renamed}{sep}{value}")
    return out


def register_resolvers() -> None:
    """``${vitmemad.sweep:LIST}`` (conf/categories/all.yaml): a config list as a Hydra sweep value."""
    from vitmemad.utils.hydra_resolvers import register

    register()


def net_parts(cfg: Any) -> set[str]:
    """The switchable parts a model's net config has (``memory``, ``coord_attention``); empty for cae/patchcore."""
    net = (cfg.get("model") or {}).get("net") or {}
    return {part for part in ABLATION_PARTS if part in net}


def prepare(cfg: DictConfig, overrides: Sequence[str] = ()) -> DictConfig:
    """Apply ``debug_net`` and the ``ablation`` switches to the parts of ``model.net`` the model has (in place).

    ``overrides`` are the command line's: a key given there wins over the debug preset's size for it.
    """
    net = cfg.model.get("net") if cfg.get("model") is not None else None
    if net is None:
        return cfg
    given = {o.lstrip("+~").partition("=")[0] for o in overrides}
    with open_dict(cfg):
        for part, values in (cfg.get("debug_net") or {}).items():
            if net.get(part) is not None:
                keep = {k: v for k, v in values.items() if f"model.net.{part}.{k}" not in given}
                net[part] = OmegaConf.merge(net[part], keep)
        ablation = cfg.get("ablation") or {}
        for part in net_parts(cfg):
            if not ablation.get(part, True):
                net[part] = None
    return cfg


def compose(config_name: str = "train", overrides: Sequence[str] = (), *, hydra_config: bool = False) -> DictConfig:
    """The config a Hydra main would see for ``overrides``, prepared (old spellings accepted)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        overrides = rewrite_overrides(overrides)
        cfg = hydra_compose(config_name, overrides=overrides, return_hydra_config=hydra_config)
    return prepare(cfg, overrides) if config_name == "train" else cfg


def to_plain(cfg: DictConfig, choices: dict[str, Any] | None = None) -> dict[str, Any]:
    """Resolved plain-container copy of a run config plus the chosen group names (saved in checkpoints)."""
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    assert isinstance(container, dict)
    container.pop("hydra", None)
    container["choices"] = {k: v for k, v in (choices or {}).items() if not k.startswith("hydra")}
    return container
