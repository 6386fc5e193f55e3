"""DDP inside a Hydra multirun: start each job's worker ranks as single runs of that job.

Lightning starts DDP ranks 1..N-1 by re-running the script (``_hydra_subprocess_cmd``) with the ORIGINAL
command line plus ``hydra.run.dir=<HydraConfig.run.dir>``. Inside a multirun that command line still holds
``-m`` and the sweep (``ablation=base,m,ca,m_ca``; or an experiment that sets ``hydra.mode: MULTIRUN``), so
every worker would start a whole sweep of its own, in the wrong folder. ``install()`` replaces that function:
a worker gets this job's own overrides (``hydra.overrides.task``: the swept values of this job), the job's
output folder as its run dir, and ``hydra.mode=RUN``. Outside a multirun the command is equivalent to
Lightning's. SLURM/submitit jobs do not use it: there, ranks are SLURM tasks (``hydra.launcher.tasks_per_node``).
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Iterator, Sequence

_CONFIG_FLAGS = ("--config-path", "--config-name", "--config-dir", "-cp", "-cn", "-cd")


def _config_flags(argv: Sequence[str]) -> list[str]:
    """The --config-path/--config-name/--config-dir arguments of the original command line."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name = arg.split("=", 1)[0]
        if name in _CONFIG_FLAGS:
            if "=" in arg:
                out.append(arg)
            elif i + 1 < len(argv):
                out += [arg, argv[i + 1]]
                i += 1
        i += 1
    return out


def hydra_subprocess_cmd(local_rank: int) -> tuple[Sequence[str], str]:
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd, to_absolute_path

    import __main__

    if __main__.__spec__ is None:  # pragma: no cover  (python path/to/script.py)
        command = [sys.executable, to_absolute_path(sys.argv[0])]
    else:
        command = [sys.executable, "-m", __main__.__spec__.name]
    hc = HydraConfig.get()
    command += _config_flags(sys.argv[1:])
    command += list(hc.overrides.task)
    command += [
        f'hydra.run.dir="{hc.runtime.output_dir}"',
        f"hydra.job.name=train_ddp_process_{local_rank}",
        "hydra.output_subdir=null",
        "hydra.mode=RUN",
    ]
    return command, get_original_cwd()


def install() -> None:
    """Make Lightning's subprocess DDP launcher use ``hydra_subprocess_cmd`` (idempotent)."""
    try:
        from lightning.fabric.strategies.launchers import subprocess_script as fabric_launcher
        from lightning.pytorch.strategies.launchers import subprocess_script as pytorch_launcher
    except ImportError:  # pragma: no cover
        return
    for module in (fabric_launcher, pytorch_launcher):
        if hasattr(module, "_hydra_subprocess_cmd"):
            module._hydra_subprocess_cmd = hydra_subprocess_cmd


#: what Lightning's subprocess launcher writes into the main process's environment when it starts the ranks
LAUNCHER_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "GROUP_RANK", "RANK")


@contextmanager
def restored_environ(keys: Sequence[str] = LAUNCHER_ENV) -> Iterator[None]:
    """Undo the launcher's environment after a job: with LOCAL_RANK left set, the next job of a multirun would
    believe its ranks were started externally and wait for them forever."""
    saved = {k: os.environ.get(k) for k in keys}
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
