"""``ckpt_path=auto``: the same sweep command, run again, skips finished jobs and resumes interrupted ones."""
from __future__ import annotations

import json
from pathlib import Path

from helpers import TINY_DEMO, read_metrics, run_here
from vitmemad.run_dir import finished_run, resume_path


def test_auto_skips_finished_resumes_interrupted_and_starts_new(tmp_path):
    assert resume_path("auto", tmp_path) is None  # nothing there: a new run
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert resume_path("auto", tmp_path) == str(tmp_path / "checkpoints" / "last.ckpt")
    assert not finished_run("auto", tmp_path)
    (tmp_path / "metrics.json").write_text("{}")
    assert finished_run("auto", tmp_path) and not finished_run(None, tmp_path) and not finished_run("last", tmp_path)


def test_a_rerun_sweep_skips_finished_jobs_and_resumes_an_interrupted_one(tmp_path):
    sweep = tmp_path / "sweep"
    command = ("-m", "seed=0,1", *TINY_DEMO, "num_threads=1", "ckpt_path=auto",
               f"hydra.sweep.dir={sweep}")
    run_here("vitmemad.train", *command, cwd=tmp_path)
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [[i for i in j.name.split("+") if i.startswith("seed-")] for j in jobs] == [["seed-0"], ["seed-1"]]
    assert not any("ckpt_path" in j.name for j in jobs)
    finished, interrupted = jobs
    before = {j: (j / "metrics.json").read_bytes() for j in jobs}
    # seed 1 "interrupted" after its epoch: its last.ckpt kept, its metrics.json not yet written
    (interrupted / "metrics.json").unlink()
    (interrupted / "status.json").write_text(json.dumps({"state": "interrupted", "pid": None}))

    rerun = run_here("vitmemad.train", *command, cwd=tmp_path)
    assert "holds a finished run: skipped (ckpt_path=auto)" in rerun.stdout + rerun.stderr
    assert (finished / "metrics.json").read_bytes() == before[finished]  # untouched, not retrained
    assert json.loads((finished / "status.json").read_text())["state"] == "finished"
    assert not (finished / "metrics.previous.json").exists()
    resumed = read_metrics(interrupted)
    assert resumed["seed"] == 1 and resumed["image_AUROC"] == json.loads(before[interrupted])["image_AUROC"]
    assert json.loads((interrupted / "status.json").read_text())["state"] == "finished"
    assert f"resuming from {interrupted / 'checkpoints' / 'last.ckpt'}" in (interrupted / "train.log").read_text()
