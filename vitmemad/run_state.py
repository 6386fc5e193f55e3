"""The state of a run folder: ``status.json``, which doubles as the folder's lock, with a heartbeat.

``status.json`` holds ``state`` (``running``, ``finished``, ``failed``, ``interrupted``), ``host``, ``pid``,
``started``, ``heartbeat`` (ISO times, UTC), ``exit_code`` (null while running) and ``slurm_job_id``. A run claims
its folder before Hydra writes into it (Hydra callback ``TrackRunState``) and refuses a folder whose run is alive:
``running`` with a fresh heartbeat and, on this host, a live pid. A stale claim (dead pid here, or a heartbeat older
than ``STALE_SECONDS``) does not block a resume, nor does one left by the same SLURM job (a requeue, possibly on
another node). DDP worker ranks (relaunched by Lightning into the same folder) never touch the file.
``metrics.json`` exists only while the state is ``finished``: a resume moves a finished run's file aside
(``metrics.previous.json``), a run that fails after writing one moves it to ``metrics.unfinished.json``.
A finished run moves its task's ``latest`` link to its folder (``vitmemad.run_latest``).
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import socket
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vitmemad.errors import VitmemadError
from vitmemad.run_latest import latest_link, point_latest
from vitmemad.utils.io import write_json

log = logging.getLogger(__name__)

STATUS_FILE = "status.json"
METRICS_FILE = "metrics.json"
HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 180.0
RANK_ENV = ("LOCAL_RANK", "RANK", "SLURM_PROCID")
EXIT_STATES = {0: "finished", 130: "interrupted", 143: "interrupted"}


class RunFolderBusy(VitmemadError, OSError):
    """Another live run owns the folder."""


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def is_child_rank() -> bool:
    """A DDP/SLURM worker rank > 0: it shares rank 0's folder and leaves the status to it."""
    for key in RANK_ENV:
        value = os.environ.get(key, "0").strip() or "0"
        if value.isdigit() and int(value) > 0:
            return True
    return False


def read_status(run_dir: str | Path) -> dict[str, Any] | None:
    """The folder's status, or None without one (an unreadable file counts as none: it locks nothing)."""
    try:
        status = json.loads((Path(run_dir) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) else None


def _age_seconds(iso: Any) -> float:
    try:
        return (datetime.now(timezone.utc) - datetime.fromisoformat(str(iso))).total_seconds()
    except ValueError:
        return float("inf")


def _pid_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    except (TypeError, ValueError, OSError):
        return False
    return True


def live_owner(status: dict[str, Any] | None) -> str | None:
    """Who holds the folder, as words, when a live run does; None when it is free or the claim is stale."""
    if not status or status.get("state") != "running":
        return None
    age = _age_seconds(status.get("heartbeat"))
    if age > STALE_SECONDS:
        return None
    host, pid = status.get("host"), status.get("pid")
    if host == socket.gethostname():
        if not _pid_alive(pid) or pid == os.getpid():
            return None
    elif status.get("slurm_job_id") and status.get("slurm_job_id") == os.environ.get("SLURM_JOB_ID"):
        return None  # this SLURM job, requeued: its previous node is gone
    return f"pid {pid} on {host}, heartbeat {age:.0f} s ago"


def check_free(run_dir: str | Path) -> None:
    """Raise RunFolderBusy naming the owner when a live run holds ``run_dir`` (read-only)."""
    owner = live_owner(read_status(run_dir))
    if owner is not None:
        raise RunFolderBusy(
            f"{run_dir} is in use by a running run ({owner}); wait for it to end, or choose another hydra.run.dir"
        )


class RunState:
    """This process's claim on a run folder; keeps the heartbeat until ``end``."""

    def __init__(self, run_dir: str | Path, resume_hint: str | None = None, latest: Path | None = None) -> None:
        self.run_dir = Path(run_dir).absolute()
        self.resume_hint = resume_hint
        self.latest = latest  # the task's `latest` link, moved here once the run finishes (vitmemad.run_latest)
        self.status: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def path(self) -> Path:
        return self.run_dir / STATUS_FILE

    def claim(self) -> "RunState":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / ".status.lock", "a") as lock:  # one claimer at a time (this host)
            fcntl.flock(lock, fcntl.LOCK_EX)
            previous = read_status(self.run_dir)
            check_free(self.run_dir)
            metrics = self.run_dir / METRICS_FILE
            if metrics.exists():  # resuming a finished run: it is no longer finished
                os.replace(metrics, self.run_dir / "metrics.previous.json")
            now = now_iso()
            self.status = {
                "state": "running", "host": socket.gethostname(), "pid": os.getpid(), "started": now,
                "heartbeat": now, "exit_code": None, "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            }
            if previous:
                self.status["previous_state"] = previous.get("state")
            write_json(self.path, self.status)
        self._thread = threading.Thread(target=self._beat, name="vitmemad-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            with self._lock:
                if self._stop.is_set():
                    return
                self.status["heartbeat"] = now_iso()
                try:
                    write_json(self.path, self.status)
                except OSError as err:  # a full disk must not kill the run from a side thread
                    log.warning("could not update %s: %s", self.path, err)

    def end(self, exit_code: int) -> None:
        self._stop.set()
        with self._lock:
            state = EXIT_STATES.get(exit_code, "failed")
            metrics = self.run_dir / METRICS_FILE
            if state != "finished" and metrics.exists():  # written by this run, which did not finish
                os.replace(metrics, self.run_dir / "metrics.unfinished.json")
            self.status.update(state=state, heartbeat=now_iso(), exit_code=exit_code)
            write_json(self.path, self.status)
            if state == "finished" and self.latest is not None:
                point_latest(self.latest, self.run_dir)
        log.debug("run state: %s (exit code %d) in %s", state, exit_code, self.path)


_current: RunState | None = None


def current() -> RunState | None:
    return _current


def claim(run_dir: str | Path, resume_hint: str | None = None, latest: Path | None = None) -> RunState | None:
    """Claim ``run_dir`` for this process (rank 0 only); the previous claim of this process is ended first.
    ``latest``: the link to point to ``run_dir`` once it finishes."""
    global _current
    if is_child_rank():
        return None
    if _current is not None:
        end(0)
    _current = RunState(run_dir, resume_hint, latest).claim()
    return _current


def end(exit_code: int) -> None:
    """Record how this process's run ended (no-op without a claim)."""
    global _current
    state, _current = _current, None
    if state is not None:
        state.end(exit_code)


def resume_command(overrides: list[str], run_dir: Path) -> str:
    """The command that resumes a training run in ``run_dir`` with the same overrides."""
    import shlex

    kept = [o for o in overrides if not o.lstrip("+~").startswith(("hydra.run.dir=", "ckpt_path="))]
    folder = str(run_dir)
    if any(not (c.isalnum() or c in "._+-/:") for c in folder):  # e.g. a sweep folder with "=" or ","
        # a quoted Hydra string: only backslashes before a quote or the end are escapes there
        folder = '"' + re.sub(r'(\\*)("|$)', lambda m: m[1] * 2 + ("\\" + m[2] if m[2] else ""), folder) + '"'
    words = ["python", "-m", "vitmemad.train", *kept, f"hydra.run.dir={folder}", "ckpt_path=last"]
    return " ".join(shlex.quote(w) for w in words)


try:  # Hydra is a dependency; keep `import vitmemad.run_state` light
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover
    _HydraCallback = object  # type: ignore[misc,assignment]


class TrackRunState(_HydraCallback):
    """Hydra callback (``conf/hydra/default.yaml``): claim the run folder before Hydra writes into it, record the
    end of each job. Interrupts end outside the job; ``vitmemad.cli.run`` records those."""

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        self._claim(config, Path(str(config.hydra.run.dir)))

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        from hydra.types import RunMode

        if config.hydra.mode == RunMode.MULTIRUN:  # each job of a sweep owns its own folder
            self._claim(config, Path(str(config.hydra.runtime.output_dir)))

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus

        from vitmemad import cli

        if current() is None:
            return
        if getattr(job_return, "status", None) == JobStatus.COMPLETED:
            end(0)
        else:
            err = getattr(job_return, "_return_value", None)
            user = isinstance(err, BaseException) and cli.user_error(err) is not None
            end(cli.EXIT_USER_ERROR if user else 1)

    @staticmethod
    def _claim(config: Any, run_dir: Path) -> None:
        from omegaconf import OmegaConf

        from vitmemad.cli import StopBeforeRun
        from vitmemad.run_dir import finished_run

        hint = None
        if config.get("task_name") == "train" and finished_run(config.get("ckpt_path"), run_dir):
            return  # ckpt_path=auto skips it: the finished run's folder and state stay as they are
        if config.get("task_name") == "train":
            hint = resume_command(list(config.hydra.overrides.task), run_dir.absolute())
        try:
            claim(run_dir, hint, latest_link(run_dir, OmegaConf.select(config, "paths.root"), config.get("task_name")))
        except RunFolderBusy as err:
            raise StopBeforeRun(err) from err


def interrupted_message(signal_name: str) -> str:
    """The line an interrupted run ends with: what was kept and how to resume."""
    state = current()
    if state is None or not state.resume_hint:
        return f"stopped by {signal_name}"
    last = state.run_dir / "checkpoints" / "last.ckpt"
    kept = "no checkpoint was written yet"
    if last.is_file():
        try:
            from vitmemad.checkpoint import read_checkpoint

            epochs = int(read_checkpoint(last, mmap=True)["epoch"]) + 1
            kept = f"{last} holds {epochs} completed epoch{'s' if epochs != 1 else ''}"
        except Exception:  # noqa: BLE001  (the message must not fail)
            kept = f"{last} is kept"
    return f"stopped by {signal_name}; {kept}; resume with: {state.resume_hint}"
