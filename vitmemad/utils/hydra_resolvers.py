"""OmegaConf resolvers used by conf/ (registered by vitmemad.config.register_resolvers).

``${vitmemad.sweep:LIST}`` turns a config list into a Hydra sweep value: every item quoted, comma separated,
so ``["01", "02"]`` becomes ``'01','02'`` and BTAD products stay strings. conf/categories/all.yaml uses it
to sweep ``data.category`` over the dataset's ``data.categories``.
"""
from __future__ import annotations

from typing import Any, Iterable

from omegaconf import OmegaConf

SWEEP = "vitmemad.sweep"


def sweep_values(items: Iterable[Any]) -> str:
    if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
        raise TypeError(f"{SWEEP} needs a list (e.g. data.categories), got {items!r}")
    values = [str(v) for v in items]
    if not values:
        raise ValueError(f"{SWEEP}: the list is empty")
    for v in values:
        if "'" in v or "\\" in v:
            raise ValueError(f"{SWEEP}: cannot quote {v!r}")
    return ",".join(f"'{v}'" for v in values)


def register() -> None:
    if not OmegaConf.has_resolver(SWEEP):
        OmegaConf.register_new_resolver(SWEEP, sweep_values)


