"""The run folder's state with real processes: last.ckpt after a plateau, SIGTERM/SIGINT, two runs into one folder,
stale locks, failed runs."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import torch

from helpers import REPO_ROOT
from test_cli_errors import assert_one_line_error, run_cli
from test_resume import RUN_ARGS, kill_after_checkpoint
from vitmemad import run_state

LONG = ["trainer.max_epochs=200"]  # far more than a test waits for


def status(run_dir: Path) -> dict:
    return json.loads((run_dir / "status.json").read_text())


def ckpt_epoch(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])


def start_run(run_dir: Path, *extra: str) -> subprocess.Popen:
    """A training subprocess; its stdout and stderr go to files beside ``run_dir`` (a pipe could fill and block)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "WANDB_MODE": "offline"}
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    name = f"{run_dir.name}-{len(list(run_dir.parent.glob('*.err')))}"
    with open(run_dir.parent / f"{name}.out", "wb") as out, open(run_dir.parent / f"{name}.err", "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "vitmemad.train", *RUN_ARGS, *extra,
                                 f"hydra.run.dir={run_dir}"], cwd=REPO_ROOT, env=env, stdout=out, stderr=err)
    proc.stderr_path = run_dir.parent / f"{name}.err"  # type: ignore[attr-defined]
    return proc


def stderr_of(proc: subprocess.Popen, timeout: float = 120) -> str:
    proc.wait(timeout=timeout)
    return proc.stderr_path.read_text()  # type: ignore[attr-defined]


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, stderr_of(proc)[-3000:]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_last_ckpt_holds_the_latest_epoch_after_a_plateau(tmp_path):
    """`mode=max` on val/loss: a falling loss never 'improves', so the best stays early while training goes on."""
    run_dir = tmp_path / "run"
    stopped_at = kill_after_checkpoint(run_dir, 5, "callbacks.model_checkpoint.mode=max", "trainer.max_epochs=30")
    best = [ckpt_epoch(p) for p in (run_dir / "checkpoints").glob("best-*.ckpt")]
    assert stopped_at >= 5 and best and max(best) < stopped_at - 1, (stopped_at, best)  # a plateau of 2+ epochs
    assert status(run_dir)["state"] == "running"  # SIGKILL: nothing could record the end, and the lock is stale
    assert run_state.live_owner(status(run_dir)) is None

    resumed = run_cli("vitmemad.train", *RUN_ARGS, "callbacks.model_checkpoint.mode=max",
                      f"trainer.max_epochs={stopped_at}", f"hydra.run.dir={run_dir}", "ckpt_path=last")
    assert_one_line_error(resumed, f"trainer.max_epochs={stopped_at}", f"{stopped_at + 1} epochs")  # fewer: refused
    assert "Error executing job" not in resumed.stderr


def test_sigterm_ends_the_run_interrupted_with_143_and_says_how_to_resume(tmp_path):
    run_dir = tmp_path / "run"
    kept = kill_after_checkpoint(run_dir, 1, "trainer.max_epochs=200", sig=signal.SIGTERM)
    lines = [line for line in (tmp_path / "killed.log").read_text().splitlines() if line.strip()]
    assert "stopped by SIGTERM" in lines[-1] and f"hydra.run.dir={run_dir}" in lines[-1]
    assert lines[-1].endswith("ckpt_path=last") and f"holds {kept + 1} completed epochs" in lines[-1]
    state = status(run_dir)
    assert (state["state"], state["exit_code"]) == ("interrupted", 143)
    assert not (run_dir / "metrics.json").exists() and "stopped by SIGTERM" in (run_dir / "train.log").read_text()

    resumed = run_cli("vitmemad.train", *RUN_ARGS, f"trainer.max_epochs={kept + 2}", f"hydra.run.dir={run_dir}",
                      "ckpt_path=last")
    assert resumed.code == 0, resumed.stderr[-3000:]
    assert ckpt_epoch(run_dir / "checkpoints" / "last.ckpt") == kept + 1
    assert status(run_dir)["state"] == "finished" and json.loads((run_dir / "metrics.json").read_text())["epochs"]


def test_a_second_run_into_a_running_folder_is_refused_and_sigint_ends_the_first_with_130(tmp_path):
    run_dir = tmp_path / "run"
    first = start_run(run_dir, *LONG)
    try:
        wait_for(lambda: (run_dir / "checkpoints" / "last.ckpt").exists(), first)
        log_before = (run_dir / "train.log").read_bytes()
        config_before = (run_dir / ".hydra" / "config.yaml").read_bytes()
        first.send_signal(signal.SIGSTOP)  # alive, heartbeat fresh; the second's start-up gets the CPU meanwhile
        second = run_cli("vitmemad.train", *RUN_ARGS, "trainer.max_epochs=2", f"hydra.run.dir={run_dir}")
        first.send_signal(signal.SIGCONT)
        assert_one_line_error(second, "in use by a running run", f"pid {first.pid}")
        assert "Error executing job" not in second.stderr
        assert first.poll() is None  # the first run goes on, its files untouched by the second
        assert (run_dir / "train.log").read_bytes().startswith(log_before)
        assert (run_dir / ".hydra" / "config.yaml").read_bytes() == config_before
        assert status(run_dir)["pid"] == first.pid and status(run_dir)["state"] == "running"
        assert not list((run_dir / "checkpoints").glob("last-v*.ckpt"))
    finally:
        first.send_signal(signal.SIGCONT)
        first.send_signal(signal.SIGINT)
        err = stderr_of(first)
    assert first.returncode == 130, err[-3000:]
    assert "stopped by SIGINT" in err.splitlines()[-1] and "ckpt_path=last" in err.splitlines()[-1]
    assert "stopped by SIGINT" in (run_dir / "train.log").read_text()
    assert (status(run_dir)["state"], status(run_dir)["exit_code"]) == ("interrupted", 130)
    assert not (run_dir / "metrics.json").exists()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _ago(seconds: float) -> str:
    return (datetime.now(timezone.utc) - timedelta(seconds=seconds)).isoformat(timespec="seconds")


@pytest.mark.parametrize("case, host, pid, age, job, live", [
    ("this process's parent, alive", "here", "parent", 1, None, True),
    ("dead pid on this host", "here", "dead", 1, None, False),
    ("old heartbeat on this host", "here", "parent", 3600, None, False),
    ("another host, fresh heartbeat", "node-b", 1, 1, None, True),
    ("another host, old heartbeat", "node-b", 1, 3600, None, False),
    ("the same SLURM job, requeued on another node", "node-b", 1, 1, "4242", False),
    ("another SLURM job on another node", "node-b", 1, 1, "999", True),
])
def test_which_claims_block_a_run(monkeypatch, case, host, pid, age, job, live):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    state = {"state": "running", "host": socket.gethostname() if host == "here" else host,
             "pid": os.getppid() if pid == "parent" else _dead_pid() if pid == "dead" else pid,
             "heartbeat": _ago(age), "slurm_job_id": job}
    assert (run_state.live_owner(state) is not None) == live, case
    assert run_state.live_owner({**state, "state": "interrupted"}) is None


def test_a_stale_claim_does_not_block_a_resume(tmp_path, monkeypatch):
    """A run killed on another node of the same SLURM job: its fresh heartbeat does not block the requeued job."""
    run_dir = tmp_path / "run"
    assert run_cli("vitmemad.train", *RUN_ARGS, "trainer.max_epochs=1", f"hydra.run.dir={run_dir}").code == 0
    (run_dir / "metrics.json").unlink()
    stale = {**status(run_dir), "state": "running", "host": "node-b", "heartbeat": _ago(1), "slurm_job_id": "77"}
    (run_dir / "status.json").write_text(json.dumps(stale))
    monkeypatch.setenv("SLURM_JOB_ID", "78")
    refused = run_cli("vitmemad.train", *RUN_ARGS, "trainer.max_epochs=2", f"hydra.run.dir={run_dir}",
                      "ckpt_path=last")
    assert_one_line_error(refused, "in use by a running run", "node-b")
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    resumed = run_cli("vitmemad.train", *RUN_ARGS, "trainer.max_epochs=2", f"hydra.run.dir={run_dir}",
                      "ckpt_path=last")
    assert resumed.code == 0, resumed.stderr[-3000:]
    assert status(run_dir)["state"] == "finished" and status(run_dir)["previous_state"] == "running"
    assert ckpt_epoch(run_dir / "checkpoints" / "last.ckpt") == 1


def test_child_ranks_leave_the_status_to_rank_zero(monkeypatch):
    for key in run_state.RANK_ENV:
        monkeypatch.delenv(key, raising=False)
    assert not run_state.is_child_rank()
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert not run_state.is_child_rank()
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert run_state.is_child_rank() and run_state.claim("/nonexistent/never-created") is None


def test_a_failed_run_keeps_its_folder_its_status_and_its_traceback(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli("vitmemad.train", "data=mvtec", f"data.root={tmp_path / 'missing'}", "debug=smoke",
                     f"hydra.run.dir={run_dir}")
    assert_one_line_error(result, "root folder not found")
    assert (status(run_dir)["state"], status(run_dir)["exit_code"]) == ("failed", 2)
    assert not (run_dir / "metrics.json").exists() and "Traceback" in (run_dir / "train.log").read_text()
