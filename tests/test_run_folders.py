"""Run folders named by what they hold, sweep jobs named by their overrides, and ``outputs/<task>/latest``."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from helpers import TINY_DEMO, read_metrics, run_here
from vitmemad.pipeline import ablation_name, model_name
from vitmemad.run_latest import latest_link, point_latest

TIME = r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d-\d{6}"


def status(run_dir: Path) -> dict:
    return json.loads((run_dir / "status.json").read_text())


@pytest.mark.parametrize("overrides, name", [
    ((), "vitmemad_cpu/demo-brick/m_ca-s0"),
    (("ablation=base", "seed=2"), "vitmemad_cpu/demo-brick/base-s2"),
    (("model=vitmemad_paper", "ablation=ca", "data=mvtec", "data.category=metal_nut"),
     "vitmemad_paper/mvtec-metal_nut/ca-s0"),
    (("model=cae", "data=btad", "data.category='01'", "seed=1"), "cae/btad-01/cae-s1"),
    (("model=patchcore", "ablation=base"), "patchcore/demo-brick/patchcore-s0"),
])
def test_a_training_run_folder_names_model_data_variant_and_seed(compose, compose_plain, overrides, name):
    run_dir = str(compose(*overrides, hydra_config=True).hydra.run.dir)
    assert re.fullmatch(f"outputs/train/{name}/{TIME}", run_dir), run_dir
    # the variant is metrics.json's `ablation`, or the model's name where that is null
    plain = compose_plain(*overrides)
    plain["choices"] = {"model": name.split("/")[0]}
    assert name.split("/")[2] == f"{ablation_name(plain) or model_name(plain)}-s{plain['seed']}"


def test_eval_predict_and_export_folders_are_the_task_and_the_time(compose):
    for task, extra in (("eval", ()), ("predict", ("input=a.png", "output=preds")), ("export", ())):
        run_dir = str(compose("ckpt_path=x.ckpt", *extra, config_name=task, hydra_config=True).hydra.run.dir)
        assert re.fullmatch(f"outputs/{task}/{TIME}", run_dir), run_dir
    moved = compose("paths.root=/data/runs", hydra_config=True).hydra.run.dir
    assert re.fullmatch(f"/data/runs/train/vitmemad_cpu/demo-brick/m_ca-s0/{TIME}", str(moved))


def test_latest_link_only_below_the_tasks_folder_and_replaced_atomically(tmp_path):
    outputs = tmp_path / "outputs"
    first, second = outputs / "train" / "a" / "1", outputs / "train" / "b" / "2"
    for d in (first, second):
        d.mkdir(parents=True)
    link = latest_link(first, outputs, "train")
    assert link == (outputs / "train" / "latest").resolve()
    assert latest_link(tmp_path / "elsewhere", outputs, "train") is None  # hydra.run.dir outside outputs/train
    assert latest_link(outputs / "eval" / "1", outputs, "train") is None  # another task's folder
    assert latest_link(outputs / "train", outputs, "train") is None
    assert point_latest(link, first) and link.resolve() == first.resolve()
    assert point_latest(link, second) and link.resolve() == second.resolve()
    assert os.readlink(link) == os.path.join("b", "2")  # relative: the outputs folder can move
    assert sorted(p.name for p in link.parent.iterdir()) == ["a", "b", "latest"]  # no temporary link left


def test_smoke_runs_land_in_named_folders_and_latest_follows_finished_runs_only(tmp_path):
    train = tmp_path / "outputs" / "train"
    run_here("vitmemad.train", *TINY_DEMO, "num_threads=1", cwd=tmp_path)
    (first,) = train.glob("vitmemad_cpu/demo-brick/m_ca-s0/*")
    assert re.fullmatch(TIME, first.name)
    record = read_metrics(first)
    assert record["ablation"] == "m_ca" and record["debug"] == "smoke" and status(first)["state"] == "finished"
    latest = train / "latest"
    assert latest.is_symlink() and latest.resolve() == first.resolve()
    assert read_metrics(latest) == record

    # a run that fails inside its folder leaves `latest` where it was
    failed = run_here("vitmemad.train", "debug=smoke", "data=mvtec", f"data.root={tmp_path / 'no_mvtec'}",
                      cwd=tmp_path, check=False)
    assert failed.returncode == 2, failed.stderr[-2000:]
    (failed_dir,) = train.glob("vitmemad_cpu/mvtec-bottle/m_ca-s0/*")
    assert status(failed_dir)["state"] == "failed" and not (failed_dir / "metrics.json").exists()
    assert latest.resolve() == first.resolve()

    # eval from the link: its own named folder and its own `latest`; the next finished training run moves train's
    run_here("vitmemad.eval", f"ckpt_path={latest / 'checkpoints' / 'last.ckpt'}", "num_threads=1", cwd=tmp_path)
    (evaluated,) = (tmp_path / "outputs" / "eval").glob("2*")
    assert (tmp_path / "outputs" / "eval" / "latest").resolve() == evaluated.resolve()
    assert read_metrics(evaluated)["image_AUROC"] == pytest.approx(record["image_AUROC"])  # one epoch: best is last
    run_here("vitmemad.train", "model=cae", *TINY_DEMO, "num_threads=1", cwd=tmp_path)
    (cae,) = train.glob("cae/demo-brick/cae-s0/*")
    assert read_metrics(cae)["ablation"] is None and latest.resolve() == cae.resolve()

    # a run written elsewhere never creates or moves a link
    elsewhere = tmp_path / "elsewhere"
    run_here("vitmemad.eval", f"ckpt_path={cae / 'checkpoints' / 'last.ckpt'}", "num_threads=1",
             f"hydra.run.dir={elsewhere}", cwd=tmp_path)
    assert read_metrics(elsewhere)["model"] == "cae"
    assert (tmp_path / "outputs" / "eval" / "latest").resolve() == evaluated.resolve()
    assert not (elsewhere / "latest").exists()


def test_sweep_jobs_are_named_by_their_overrides_and_resume_and_refusal_still_work(tmp_path):
    sweep = tmp_path / "sweep"
    overrides = ("ablation=base,m_ca", *TINY_DEMO, "num_threads=1", "data.num_workers=0")  # the last two: excluded
    run_here("vitmemad.train", "-m", *overrides, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    tiny = "data.crop_size-64+data.n_test_defect-6+data.n_test_good-6+data.n_train-24+debug-smoke"
    jobs = {a: sweep / f"ablation-{a}+{tiny}" for a in ("base", "m_ca")}
    assert sorted(p for p in sweep.iterdir() if p.is_dir()) == sorted(jobs.values())
    for ablation, job in jobs.items():
        assert read_metrics(job)["ablation"] == ablation and status(job)["state"] == "finished"
    assert not (tmp_path / "outputs").exists()  # the sweep folder is the configured one; no link outside it

    # the job's folder name goes into an override unquoted: resume it with one more epoch
    job = jobs["m_ca"]
    run_here("vitmemad.train", "ablation=m_ca", *TINY_DEMO, "num_threads=1", "trainer.max_epochs=2",
             f"hydra.run.dir={job}", "ckpt_path=last", cwd=tmp_path)
    assert read_metrics(job)["epochs"] == 2 and (job / "metrics.previous.json").is_file()
    refused = run_here("vitmemad.train", "ablation=base", *TINY_DEMO, f"hydra.run.dir={jobs['base']}",
                       cwd=tmp_path, check=False)
    assert refused.returncode == 2 and "already holds a finished run" in refused.stderr


@pytest.mark.parametrize("folder", ["/runs/sweep/ablation-base+seed-0", "/runs/my sweep/ablation=base,seed=0",
                                    '/runs/odd "name"\\x', '/runs/a\\"b', '/runs/end\\'])
def test_the_printed_resume_command_gives_hydra_the_folder_back(folder):
    import shlex

    from hydra.core.override_parser.overrides_parser import OverridesParser

    from vitmemad.run_state import resume_command

    words = shlex.split(resume_command(["ablation=base"], Path(folder)))
    (run_dir,) = [w for w in words if w.startswith("hydra.run.dir=")]
    assert OverridesParser.create().parse_overrides([run_dir])[0].value() == folder
    assert words[-1] == "ckpt_path=last" and "ablation=base" in words
