"""Helpers for tests that run the real entry points."""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import runpy
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# A tiny demo: the smoke preset plus a handful of crops. Seconds per run on 2 cores.
TINY_DEMO = ["debug=smoke", "data.n_train=24", "data.n_test_good=6", "data.n_test_defect=6", "data.crop_size=64"]


def run_module(module: str, *overrides: str, timeout: float = 300, check: bool = True,
               cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    """``python -m module overrides`` in ``cwd`` (the checkout's package first on the path, wherever ``cwd`` is)."""
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "2", "PYTHONWARNINGS": "ignore"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, "-m", module, *overrides], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} {' '.join(overrides)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


@dataclass
class CliResult:
    """What an entry point run by ``run_cli`` gave: its exit status and its captured output."""

    code: int
    stdout: str
    stderr: str

    @property
    def last_line(self) -> str:
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        return lines[-1] if lines else ""


@contextlib.contextmanager
def _restored_process_state():
    """Undo what an in-process run changes globally: logging handlers, torch flags, env, argv."""
    import torch

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    env, argv = dict(os.environ), sys.argv
    try:
        yield
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)
        os.environ.clear()
        os.environ.update(env)
        sys.argv = argv


def run_cli(module: str, *overrides: str, script: Path | None = None) -> CliResult:
    """``python -m module overrides...`` (or ``python script overrides...``) in this process; returns exit status
    and captured output.

    Exceptions the CLI does not handle (bugs) propagate to the test.
    """
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with _restored_process_state(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")  # runpy: "found in sys.modules", Lightning's tips
        sys.argv = [str(script or module), *overrides]
        try:
            if script is not None:
                runpy.run_path(str(script), run_name="__main__")
            else:
                runpy.run_module(module, run_name="__main__", alter_sys=False)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    return CliResult(code, out.getvalue(), err.getvalue())


def run_here(module: str, *overrides: str, check: bool = True, cwd: Path | None = None,
             script: Path | None = None) -> subprocess.CompletedProcess:
    """``run_module`` in this process (``run_cli``, in ``cwd`` if given): the same entry point and the same result
    fields, without the interpreter and import start-up of a subprocess (most of a smoke run's time). For tests
    where a real subprocess is not itself what is checked."""
    with contextlib.chdir(cwd) if cwd is not None else contextlib.nullcontext():
        result = run_cli(module, *overrides, script=script)
    if check and result.code != 0:
        raise AssertionError(f"{module} {' '.join(overrides)} failed ({result.code}):\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-5000:]}")
    return subprocess.CompletedProcess([module, *overrides], result.code, result.stdout, result.stderr)


def read_metrics(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "metrics.json").read_text())


def load_report():
    """experiments/report.py as a module (it is a script, not part of the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("vitmemad_report_script", REPO_ROOT / "experiments" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_real_png(path: Path) -> None:
    """A PNG that decodes, of a readable size (>= 300 x 200 px), that is not one flat colour."""
    from PIL import Image

    assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as img:
        img.load()
        assert img.format == "PNG" and img.width >= 300 and img.height >= 200, (path, img.size)
        assert any(lo != hi for lo, hi in img.convert("RGB").getextrema()), f"{path} is a single colour"
