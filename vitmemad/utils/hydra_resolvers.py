"""OmegaConf resolvers used by conf/ (registered by vitmemad.config.register_resolvers, at run time).

``${vitmemad.sweep:LIST}`` turns a config list into a Hydra sweep value: every item quoted, comma separated,
so ``["01", "02"]`` becomes ``'01','02'`` and BTAD products stay strings. conf/categories/all.yaml uses it
to sweep ``data.category`` over the dataset's ``data.categories``.

``${vitmemad.run_name:TIME}`` (conf/hydra/default.yaml) names a training run's folder by what it is,
``<model>/<dataset>-<category>/<ablation or model>-s<seed>/TIME``; a config without a model and a dataset
(eval, predict, export) gets ``TIME`` alone. ``${vitmemad.job_name:DIRNAME,NUM}`` names a sweep job's folder by its
overrides (Hydra's ``override_dirname``), or by its number when it has none, shortened with a hash when too long.
"""
from __future__ import annotations

import hashlib
import re
from typing import Any, Iterable

from omegaconf import OmegaConf

SWEEP = "vitmemad.sweep"
RUN_NAME = "vitmemad.run_name"
JOB_NAME = "vitmemad.job_name"
MAX_JOB_NAME = 160  # well below the 255 bytes a file name may have
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")  # what a folder name keeps; Hydra parses all of these unquoted


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


def safe_name(value: Any) -> str:
    """``value`` as one folder name: characters other than letters, digits and ``._+-`` become ``_``."""
    return _UNSAFE.sub("_", str(value)).strip("_") or "_"


def variant_name(cfg: Any, model: str) -> str:
    """The ablation (base, m, ca, m_ca) of a model that has one, the model's name for the others (cae, patchcore),
    as metrics.json's ``ablation`` (vitmemad.pipeline.ablation_name)."""
    from vitmemad.config import net_parts

    ablation = OmegaConf.select(cfg, "ablation.name", default=None) if net_parts(cfg) else None
    return str(ablation or model)


def run_name(time: str, *, _root_: Any) -> str:
    model = OmegaConf.select(_root_, "hydra.runtime.choices.model", default=None)
    dataset = OmegaConf.select(_root_, "data.name", default=None)
    if model in (None, "null") or dataset is None or _root_.get("model") is None:
        return str(time)
    category = OmegaConf.select(_root_, "data.category", default=None)
    seed = OmegaConf.select(_root_, "seed", default=None)
    data = safe_name(dataset if category is None else f"{dataset}-{category}")
    variant = safe_name(f"{variant_name(_root_, str(model))}-s{seed}")
    return f"{safe_name(model)}/{data}/{variant}/{time}"


def job_name(override_dirname: Any, num: Any) -> str:
    name = _UNSAFE.sub("_", str(override_dirname or "")) or str(num)
    if len(name) > MAX_JOB_NAME:  # keep it unique and below the file-name limit
        digest = hashlib.sha1(name.encode()).hexdigest()[:10]
        name = f"{name[:MAX_JOB_NAME - 11]}-{digest}"
    return name


def register() -> None:
    for name, resolver in ((SWEEP, sweep_values), (RUN_NAME, run_name), (JOB_NAME, job_name)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)
