"""The `vitmemad` command: the console script of pyproject.toml, its help (light, no torch at the top level; Hydra's
help template per command), exit codes, and the commands run end to end through it (train, report, bench)."""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
import types

import pytest

from helpers import REPO_ROOT, TINY_DEMO, read_metrics, run_here
from vitmemad import interrupts
from vitmemad import main as console

HYDRA = ("train", "eval", "predict", "export")
HEAVY = ("torch", "lightning", "hydra", "matplotlib", "numpy")


def vitmemad(*args: str, cwd=REPO_ROOT, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m vitmemad ARGS` with this checkout first on the path (what the console script runs)."""
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "2", "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "vitmemad", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_the_console_script_is_declared_and_its_entry_point_imports():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    target = project["scripts"]["vitmemad"]
    module, _, name = target.partition(":")
    assert (module, name) == ("vitmemad.main", "main")
    assert getattr(importlib.import_module(module), name) is console.main
    extras = project["optional-dependencies"]
    assert any(dep.startswith("tensorboard") for dep in extras["tensorboard"])
    assert "tensorboard" in extras["all"][0]


@pytest.mark.parametrize("args", [["--help"], [], ["-h"]])
def test_top_level_help_lists_the_commands_and_imports_nothing_heavy(args):
    code = ("import sys, time; t = time.perf_counter(); from vitmemad.main import main; rc = main(sys.argv[1:]); "
            f"heavy = [m for m in {HEAVY!r} if m in sys.modules]; "
            "print('RESULT', rc, heavy, round(time.perf_counter() - t, 3), file=sys.stderr)")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    wall = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    _, rc, heavy, seconds = proc.stderr.strip().splitlines()[-1].split(" ")
    assert rc == "0" and heavy == "[]", proc.stderr  # no torch (nor the other heavy packages) for the help
    assert float(seconds) < 1.0 and wall < 20, (seconds, wall)
    out = proc.stdout
    assert out.startswith("vitmemad: ") and "usage: vitmemad COMMAND" in out
    for command in (*HYDRA, "report", "bench"):
        assert f"\n  {command} " in out, command
    examples = out.split("examples:\n")[1].split("\n\n")[0].splitlines()
    assert 3 <= len(examples) <= 5 and all(line.startswith("  vitmemad ") for line in examples)


def test_python_m_vitmemad_prints_the_same_help():
    proc = vitmemad("--help", timeout=60)
    assert proc.returncode == 0 and proc.stdout == console.help_text()


def test_an_unknown_command_exits_2_with_one_error_line():
    proc = vitmemad("trian", "debug=smoke", timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown command 'trian'"), proc.stderr
    assert "train, eval, predict, export, report, bench" in lines[0]


def _examples(out: str, command: str) -> list[str]:
    return [line for line in out.split("== Examples ==")[1].splitlines() if line.startswith(f"  vitmemad {command}")]


@pytest.mark.parametrize("command", HYDRA)
def test_hydra_commands_print_a_short_help_with_examples(tmp_path, command):
    code = ("import sys; from vitmemad.main import main; rc = main(sys.argv[1:]); "
            "print('RESULT', rc, 'torch' in sys.modules, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code, command, "--help"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert proc.stderr.strip().splitlines()[-1] == "RESULT 0 False", proc.stderr[-2000:]  # composed, torch not loaded
    out = proc.stdout
    assert out.startswith(f"vitmemad {command} ")
    assert 3 <= len(_examples(out, command)) <= 5, out
    assert "task_name:" not in out and "_target_" not in out and len(out.splitlines()) < 45  # no config dump
    assert "== Keys ==" in out or "== Config groups" in out
    assert not list(tmp_path.iterdir())  # the help writes no run folder
    if command == "train":
        assert "logger: csv, tensorboard, wandb" in out and "\nmodel: " in out and "\ndata: " in out
        same = run_here("vitmemad.train", "--help", cwd=tmp_path)  # in this process: the module imports torch
        assert same.returncode == 0 and same.stdout == out  # `python -m vitmemad.train --help` is the same help
        assert not list(tmp_path.iterdir())


def test_report_help_has_a_description_examples_and_the_debug_flag():
    proc = vitmemad("report", "--help", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: vitmemad report") and "--include-debug" in proc.stdout
    assert len([line for line in proc.stdout.split("examples:")[1].splitlines() if "vitmemad report" in line]) >= 3


def test_report_through_the_command_leaves_debug_runs_out(tmp_path):
    for name, debug, image in (("real", None, 0.8), ("smoke", "smoke", 0.6)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(
            {"category": "brick", "dataset": "demo", "model": "vitmemad_cpu", "ablation": "m_ca", "seed": 0,
             "debug": debug, "image_AUROC": image, "pixel_AUROC": None, "PRO": None}))
    proc = vitmemad("report", str(tmp_path), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "left out 1 debug run(s)" in proc.stderr and "--include-debug" in proc.stderr
    rows = (tmp_path / "results.csv").read_text().splitlines()
    assert len(rows) == 2 and "/real/" in rows[1]
    missing = vitmemad("report", str(tmp_path / "nothing_here"), timeout=60)
    assert missing.returncode == 2 and "error: no metrics.json found" in missing.stderr


def _fake_bench(monkeypatch, main) -> None:
    module = types.ModuleType("vitmemad.bench")
    module.main = main
    monkeypatch.setitem(sys.modules, "vitmemad.bench", module)


def test_bench_gets_the_remaining_arguments_and_its_exit_status(monkeypatch):
    seen = []
    _fake_bench(monkeypatch, lambda argv: seen.append(argv) or 3)
    assert console.main(["bench", "--quick", "--out", "b.json"]) == 3
    assert seen == [["--quick", "--out", "b.json"]]


@pytest.mark.parametrize("raised, code", [(KeyboardInterrupt, 130), (interrupts.Terminated, 143), (SystemExit(4), 4)])
def test_argparse_commands_end_with_the_contract_exit_codes(monkeypatch, capsys, raised, code):
    def main(argv):
        raise raised

    _fake_bench(monkeypatch, main)
    assert console.main(["bench"]) == code
    if code in (130, 143):
        assert capsys.readouterr().err.startswith("interrupted: stopped by SIG")


def test_bench_help_once_the_module_exists():
    pytest.importorskip("vitmemad.bench")
    proc = run_here("vitmemad", "bench", "--help")  # in this process: vitmemad.bench imports torch
    assert proc.returncode == 0 and proc.stdout.startswith("usage:"), proc.stderr[-2000:]


def test_a_user_error_exits_2_with_one_error_line(tmp_path):
    # `python -m vitmemad eval ...` in this process (test_train_runs_end_to_end runs the command in a subprocess)
    proc = run_here("vitmemad", "eval", f"ckpt_path={tmp_path / 'missing.ckpt'}", f"hydra.run.dir={tmp_path / 'eval'}",
                    check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "missing.ckpt" in errors[0]


def test_train_runs_end_to_end(tmp_path):
    run_dir = tmp_path / "run"
    proc = vitmemad("train", *TINY_DEMO, f"hydra.run.dir={run_dir}", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = read_metrics(run_dir)
    assert record["debug"] == "smoke" and record["epochs"] == 1 and 0.0 <= record["image_AUROC"] <= 1.0
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert json.loads((run_dir / "status.json").read_text())["state"] == "finished"


@pytest.mark.ddp
@pytest.mark.slow  # tests/test_ddp.py runs DDP in the default suite
def test_ddp_ranks_rerun_the_same_train_command(tmp_path):
    run_dir = tmp_path / "run"
    proc = vitmemad("train", "trainer=ddp_cpu", *TINY_DEMO, f"hydra.run.dir={run_dir}", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run_dir / "train_ddp_process_1.log").is_file()  # rank 1 ran `vitmemad.train` in this run's folder
    assert read_metrics(run_dir)["num_test_images"] == 12
