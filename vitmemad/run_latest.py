"""``<paths.root>/<task>/latest``: a link to the last finished run of a task, e.g. ``outputs/train/latest``.

Only a run whose folder lies below ``<paths.root>/<task>/`` moves the link (the root is taken from the current
directory, as Hydra's run folders are): a run written elsewhere (``hydra.run.dir=/tmp/x``) leaves every
``latest`` alone, since a link in the current directory's ``outputs/`` to a folder outside it would surprise more
than help. Failed and interrupted runs never move it. The link is relative (the outputs folder can be moved) and
is replaced atomically: a new link, then ``os.replace`` over the old one, so a reader sees the old run or the new.
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

log = logging.getLogger(__name__)

LATEST = "latest"


def latest_link(run_dir: str | Path, root: str | Path | None, task: str | None) -> Path | None:
    """Where the ``latest`` link of ``run_dir``'s task is, or None when ``run_dir`` is not below ``root/task``."""
    if not root or not task:
        return None
    base = (Path(root).expanduser() / str(task)).resolve()
    try:
        inside = Path(run_dir).resolve().relative_to(base)
    except ValueError:
        return None
    if not inside.parts or inside.parts[0] == LATEST:
        return None
    return base / LATEST


def point_latest(link: Path, run_dir: str | Path) -> bool:
    """Make ``link`` point to ``run_dir`` (atomically); a failure is a warning, never the run's failure."""
    tmp = link.with_name(f".{link.name}.{os.getpid()}.{threading.get_ident()}")
    try:
        if tmp.is_symlink():
            tmp.unlink()
        tmp.symlink_to(os.path.relpath(Path(run_dir).resolve(), link.parent), target_is_directory=True)
        os.replace(tmp, link)
    except OSError as err:
        log.warning("could not point %s to %s: %s", link, run_dir, err)
        if tmp.is_symlink():
            tmp.unlink()
        return False
    log.debug("%s -> %s", link, run_dir)
    return True
