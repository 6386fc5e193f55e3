"""Which checkpoint a training run resumes from, and the refusal to train into a finished run's folder.

``ckpt_path``: unset/null starts a new run (refused where a run already is), ``last`` resumes, a path resumes
from that checkpoint, and ``auto`` makes a command re-runnable (a sweep of many long jobs): a finished run is
skipped, an interrupted one resumes from its ``last.ckpt``, and a new one starts. A sweep names its job folders
by their overrides, so the same command after a change of preset (or of a default) would find the old runs under
the same names: ``check_same_run`` refuses to skip or resume a run whose recorded configuration differs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from omegaconf import OmegaConf

from vitmemad.config_check import ABSENT, select
from vitmemad.errors import VitmemadError

METRICS_FILE = "metrics.json"


class RunDirError(VitmemadError, FileExistsError):
    """The output directory already holds a finished run."""


AUTO = "auto"

# The keys that make a run what it is; a run folder whose recorded run differs in one of them holds another run.
# Where the data and outputs are, threads and loggers do not count. ``trainer.max_epochs`` counts for a finished
# run only: an interrupted one may be resumed to more epochs (``config_check.check_resume``).
RUN_IDENTITY = ("seed", "model", "loss", "corruption", "anomaly_map", "ablation", "callbacks.memory_training",
                "data.name", "data.category", "data.image_size", "data.batch_size", "data.augment",
                "data.val_fraction", "data.seed", "trainer.precision", "trainer.max_epochs")
# How a memory is trained: no part of a run without a memory (ablation=base|ca, the CAE).
MEMORY_TRAINING = frozenset({"memory_training", "lambda_mem", "mem_commitment"})


def finished_run(ckpt_path: str | None, output_dir: Path) -> bool:
    """``ckpt_path=auto`` and ``output_dir`` holds a finished run: the job has nothing left to do."""
    return ckpt_path == AUTO and (Path(output_dir) / METRICS_FILE).is_file()


def resume_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    if ckpt_path == AUTO:
        if finished_run(ckpt_path, output_dir):
            return None
        last = output_dir / "checkpoints" / "last.ckpt"
        return str(last) if last.is_file() else None
    if ckpt_path in (None, ""):
        if (output_dir / METRICS_FILE).exists():
            raise RunDirError(
                f"{output_dir} already holds a finished run ({METRICS_FILE}); choose another "
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
    from vitmemad.checkpoint import check_file

    return str(check_file(ckpt_path))  # a folder lists the checkpoints inside it


def recorded_config(output_dir: Path) -> dict[str, Any] | None:
    """The run config stored in the newest checkpoint of ``output_dir`` (``last.ckpt`` first); None without one."""
    folder = Path(output_dir) / "checkpoints"
    newest_last = lambda p: (p.name == "last.ckpt", p.stat().st_mtime)  # noqa: E731
    ckpts = sorted(folder.glob("*.ckpt"), key=newest_last) if folder.is_dir() else []
    if not ckpts:
        return None
    from vitmemad.checkpoint import load_checkpoint

    return load_checkpoint(ckpts[-1])["hyper_parameters"]["cfg"]


def _differences(old: Any, new: Any, key: str) -> list[tuple[str, Any, Any]]:
    if isinstance(old, Mapping) and isinstance(new, Mapping):  # keys only one side has do not count
        return [d for k in old if k in new for d in _differences(old[k], new[k], f"{key}.{k}")]
    return [] if old == new else [(key, old, new)]


def config_differences(recorded: Mapping[str, Any], current: Mapping[str, Any], keys=RUN_IDENTITY,
                       ignore: frozenset[str] = frozenset()) -> list[str]:
    """``key: recorded != current`` for every leaf under ``keys`` that both configs have and that differs, but for
    leaves with a part of their key in ``ignore``.

    A key only one side has (added to the config since the run was made) does not count."""
    recorded, current = OmegaConf.create(dict(recorded)), OmegaConf.create(dict(current))
    diffs = []
    for key in keys:
        old, new = select(recorded, key), select(current, key)
        if ABSENT not in (old, new):
            diffs += [f"{k}: {a!r} != {b!r}" for k, a, b in _differences(old, new, key)
                      if not ignore & set(k.split("."))]
    return diffs


def check_same_run(ckpt_path: str | None, output_dir: Path, current: Mapping[str, Any]) -> None:
    """``ckpt_path=auto`` skips or resumes what ``output_dir`` holds only if it is a run of ``current``'s config."""
    if ckpt_path != AUTO:
        return
    recorded = recorded_config(output_dir)
    if recorded is None:
        return
    finished = finished_run(ckpt_path, output_dir)
    keys = RUN_IDENTITY if finished else tuple(k for k in RUN_IDENTITY if k != "trainer.max_epochs")
    has_memory = any(select(cfg, "model.net.memory") not in (None, ABSENT) for cfg in (recorded, current))
    diffs = config_differences(recorded, current, keys, ignore=frozenset() if has_memory else MEMORY_TRAINING)
    if diffs:
        shown = "; ".join(diffs[:3]) + (f"; and {len(diffs) - 3} more" if len(diffs) > 3 else "")
        raise RunDirError(
            f"{output_dir} holds {'a finished' if finished else 'an unfinished'} run of another configuration "
            f"({shown}); ckpt_path=auto will not {'skip' if finished else 'resume'} it as this job: choose another "
            "hydra.sweep.dir (or hydra.run.dir), or move that run away"
        )
