"""Own images, good ones only: train on data.normal_dir alone, test later with data.abnormal_dir."""
from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from helpers import read_metrics, run_here
from vitmemad.data import FolderDataModule
from vitmemad.data.demo import write_demo_dataset

NO_TEST_LINE = "no test: no abnormal images (give data.abnormal_dir to test"


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> dict[str, Path]:
    """Demo brick crops as a user's folders: good/ (train), bad/<defect>/ (test) and masks/<defect>/."""
    demo = write_demo_dataset(tmp_path_factory.mktemp("demo"), "brick", crop_size=64, n_train=24, n_test_good=4,
                              n_test_defect=6)
    root = demo.parent / "shots"
    shutil.copytree(demo / "train" / "good", root / "good")
    for defect in (p for p in (demo / "test").iterdir() if p.name != "good"):
        shutil.copytree(defect, root / "bad" / defect.name)
    shutil.copytree(demo / "ground_truth", root / "masks")
    return {"good": root / "good", "bad": root / "bad", "masks": root / "masks"}


@pytest.fixture(scope="module")
def good_only_run(shots, tmp_path_factory) -> tuple[Path, str]:
    run_dir = tmp_path_factory.mktemp("good_only") / "run"
    proc = run_here("vitmemad.train", "data=folder", f"data.normal_dir={shots['good']}", "debug=smoke",
                    "num_threads=1", f"hydra.run.dir={run_dir}")
    return run_dir, proc.stdout + proc.stderr


def test_the_split_of_the_good_images_does_not_depend_on_abnormal_dir(shots):
    alone = FolderDataModule(shots["good"], image_size=64, batch_size=8)
    tested = FolderDataModule(shots["good"], shots["bad"], shots["masks"], image_size=64, batch_size=8)
    (train, held), (train_t, test_t) = alone.samples(), tested.samples()
    assert train == train_t and held == [s for s in test_t if s.label == 0] and len(held) == 5  # 20 % of 24
    assert not alone.has_anomalies and tested.has_anomalies
    assert {s.defect for s in test_t if s.label == 1} == {p.name for p in shots["bad"].iterdir()}


def test_training_on_good_images_alone_writes_null_metrics_a_checkpoint_and_thresholds(good_only_run):
    run_dir, output = good_only_run
    record = read_metrics(run_dir)
    assert record["image_AUROC"] is None and record["pixel_AUROC"] is None and record["PRO"] is None
    assert record["dataset"] == "folder" and record["epochs"] == 1 and record["debug"] == "smoke"
    assert output.count(NO_TEST_LINE) == 1, output[-3000:]  # one line says why, and how to test later
    assert (run_dir / "train.log").read_text().count(NO_TEST_LINE) == 1
    assert json.loads((run_dir / "status.json").read_text())["state"] == "finished"
    state = torch.load(record["ckpt_path"], map_location="cpu", weights_only=True)["state_dict"]
    image_thr, pixel_thr = float(state["image_threshold"]), float(state["pixel_threshold"])
    assert math.isfinite(image_thr) and image_thr > 0 and math.isfinite(pixel_thr)  # from held-out good images


def test_predict_and_a_later_eval_with_abnormal_images_use_that_checkpoint(good_only_run, shots, tmp_path):
    run_dir, _ = good_only_run
    ckpt = read_metrics(run_dir)["ckpt_path"]
    run_here("vitmemad.predict", f"ckpt_path={ckpt}", f"input={shots['good']}", f"output={tmp_path / 'preds'}",
             "progress=false", f"hydra.run.dir={tmp_path / 'predict'}")
    with open(tmp_path / "preds" / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 24 and all(r["label"] in ("0", "1") and not r["error"] for r in rows)

    run_here("vitmemad.eval", f"ckpt_path={ckpt}", f"data.abnormal_dir={shots['bad']}",
             f"data.mask_dir={shots['masks']}", "num_threads=1", f"hydra.run.dir={tmp_path / 'eval'}")
    tested = read_metrics(tmp_path / "eval")
    for key in ("image_AUROC", "pixel_AUROC", "PRO"):
        assert 0.0 <= tested[key] <= 1.0, (key, tested[key])
    assert tested["num_test_images"] == 5 + 6  # the 5 good images training held out, and the bad ones
    assert set(tested["per_defect"]) == {p.name for p in shots["bad"].iterdir()}

    run_here("vitmemad.eval", f"ckpt_path={ckpt}", f"data.abnormal_dir={shots['bad']}",
             "num_threads=1", f"hydra.run.dir={tmp_path / 'eval_images'}")
    labels = read_metrics(tmp_path / "eval_images")
    assert labels["image_AUROC"] == pytest.approx(tested["image_AUROC"]) and labels["pixel_AUROC"] is None

    nothing = run_here("vitmemad.eval", f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'eval_none'}",
                       check=False)
    assert nothing.returncode == 2
    assert nothing.stderr.strip().splitlines()[-1].startswith("error: nothing to test") \
        and "data.abnormal_dir=DIR" in nothing.stderr


@pytest.mark.parametrize("case", ["no normal_dir", "empty normal_dir", "mask_dir without abnormal_dir"])
def test_bad_folder_input_is_one_error_line(case, shots, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    given = {
        "no normal_dir": ([], "data.normal_dir is required with data=folder"),
        "empty normal_dir": ([f"data.normal_dir={empty}"], f"Normal folder {empty} contains no images"),
        "mask_dir without abnormal_dir": ([f"data.normal_dir={shots['good']}", f"data.mask_dir={shots['masks']}"],
                                          "data.mask_dir="),
    }
    overrides, message = given[case]
    proc = run_here("vitmemad.train", "data=folder", *overrides, "debug=smoke", f"hydra.run.dir={tmp_path / 'run'}",
                    check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and lines[-1].startswith("error: ") and message in lines[-1], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    if case == "no normal_dir":
        assert not (tmp_path / "run").exists()  # refused before the run folder is written
