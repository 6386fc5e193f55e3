"""``ckpt_path=auto``: the same sweep command, run again, skips finished jobs and resumes interrupted ones."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import TINY_DEMO, read_metrics, run_here
from vitmemad.run_dir import RunDirError, check_same_run, config_differences, finished_run, resume_path


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


def test_config_differences_name_the_keys_both_runs_have_and_ignore_new_keys():
    recorded = {"seed": 0, "model": {"net": {"memory": {"size": 400, "top_k": 1}}}, "num_threads": 1,
                "data": {"category": "tire", "root": "/a"}}
    current = {"seed": 0, "model": {"net": {"memory": {"size": 1000, "top_k": 1, "new_key": 3}}}, "num_threads": 2,
               "data": {"category": "tire", "root": "/b"}}
    assert config_differences(recorded, current) == ["model.net.memory.size: 400 != 1000"]
    assert config_differences(recorded, recorded) == []
    assert config_differences({"trainer": {"max_epochs": 150}}, {"trainer": {"max_epochs": 200}}) == [
        "trainer.max_epochs: 150 != 200"]


def test_auto_refuses_to_skip_or_resume_a_run_of_another_configuration(tmp_path):
    run = tmp_path / "run"
    command = (*TINY_DEMO, "num_threads=1", "ckpt_path=auto", f"hydra.run.dir={run}")
    run_here("vitmemad.train", *command, cwd=tmp_path)
    finished = (run / "metrics.json").read_bytes()

    changed = run_here("vitmemad.train", *command, "loss.lambda_ssim=0.5", cwd=tmp_path, check=False)
    out = changed.stdout + changed.stderr
    assert changed.returncode == 2, out[-2000:]
    assert "holds a finished run of another configuration (" in out and "lambda_ssim: 1.0 != 0.5" in out, out
    assert (run / "metrics.json").read_bytes() == finished  # the finished run is left as it was
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
    assert run_here("vitmemad.train", *command, "num_threads=2", cwd=tmp_path).returncode == 0  # threads: same run

    (run / "metrics.json").unlink()  # as if interrupted: an unfinished run of seed 0
    other_seed = run_here("vitmemad.train", *command, "seed=1", cwd=tmp_path, check=False)
    assert other_seed.returncode == 2
    assert "holds an unfinished run of another configuration (seed: 0 != 1" in other_seed.stderr, other_seed.stderr
    check_same_run("auto", run, {"trainer": {"max_epochs": 10_000}})  # an unfinished run may be resumed to more
    (run / "metrics.json").write_bytes(finished)
    with pytest.raises(RunDirError, match=r"trainer\.max_epochs: \d+ != 10000"):  # a finished one is another run
        check_same_run("auto", run, {"trainer": {"max_epochs": 10_000}})


def test_how_a_memory_is_trained_is_no_part_of_a_run_without_a_memory(tmp_path):
    def run(memory, lambda_mem):
        return {"model": {"net": {"memory": memory}, "loss": {"lambda_mem": lambda_mem}},
                "loss": {"lambda_mem": lambda_mem}, "callbacks": {"memory_training": {"restart_every": 50 * (
                    lambda_mem > 0)}}}
    (tmp_path / "checkpoints").mkdir()
    recorded = run(None, 0.0)
    torch.save({"state_dict": {}, "hyper_parameters": {"cfg": recorded}}, tmp_path / "checkpoints" / "last.ckpt")
    check_same_run("auto", tmp_path, run(None, 0.2))  # ablation=base before and after the preset's memory changed
    with pytest.raises(RunDirError, match=r"model\.net\.memory: None != \{'size': 400\}"):
        check_same_run("auto", tmp_path, run({"size": 400}, 0.0))
    recorded["model"]["net"]["memory"] = {"size": 400}
    torch.save({"state_dict": {}, "hyper_parameters": {"cfg": recorded}}, tmp_path / "checkpoints" / "last.ckpt")
    with pytest.raises(RunDirError, match=r"lambda_mem: 0\.0 != 0\.2"):
        check_same_run("auto", tmp_path, run({"size": 400}, 0.2))
