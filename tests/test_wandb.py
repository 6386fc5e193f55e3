"""logger=wandb: what an offline W&B run holds (read back from its .wandb file), and the memory diagnostics."""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest
import torch
from PIL import Image

from helpers import TINY_DEMO, assert_real_png, read_metrics, run_here
from vitmemad.models.memory import MemoryModule
from vitmemad.models.memory_stats import MemoryUsage, MemoryUsageHook
from vitmemad.utils import wandb_logging


# ------------------------------------------------------------------ reading an offline run
def wandb_records(path: Path):
    """Protobuf records of a .wandb file (a LevelDB-style log: 7-byte header, 32 KiB blocks of chunks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", "not a .wandb file"
    block, pos, pending = 32768, 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0:
            continue
        if kind in (1, 4):  # FULL, LAST
            record = pb.Record()
            record.ParseFromString(pending + chunk if kind == 4 else chunk)
            pending = b""
            yield record
        else:  # FIRST, MIDDLE
            pending = (pending if kind == 3 else b"") + chunk


def _update(target: dict, items) -> None:
    """Apply W&B key/value items; a nested key (e.g. a histogram's ["test/memory/usage", "values"]) nests."""
    for item in items:
        path = [item.key] if item.key else list(item.nested_key)
        node = target
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = json.loads(item.value_json)


def read_offline_run(run_dir: Path) -> dict:
    """{'group', 'config', 'history' (list of dicts), 'summary' (last value of every key)} of an offline run."""
    (wandb_file,) = run_dir.glob("run-*.wandb")
    out = {"group": None, "config": {}, "history": [], "summary": {}}
    for r in wandb_records(wandb_file):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out["group"] = r.run.run_group
        elif kind == "config":
            _update(out["config"], r.config.update)
        elif kind == "history":
            step: dict = {}
            _update(step, r.history.item)
            out["history"].append(step)
        elif kind == "summary":
            _update(out["summary"], r.summary.update)
    return out


# ------------------------------------------------------------------ the offline runs of a sweep
@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    sweep_dir = tmp_path_factory.mktemp("wandb") / "2026-01-01_00-00-00-000000_wandb_sweep"
    run_here("vitmemad.train", "-m", "logger=wandb", "categories=all", "data.categories=[brick,grass]",
             *TINY_DEMO, f"hydra.sweep.dir={sweep_dir}")
    return sweep_dir


def _job(sweep_dir: Path, category: str) -> Path:
    """The sweep job folder (named by its overrides) of one category."""
    (job_dir,) = [d for d in sweep_dir.iterdir() if (d / "metrics.json").exists()
                  and read_metrics(d)["category"] == category]
    return job_dir


def _run(job_dir: Path) -> tuple[Path, dict]:
    (run_dir,) = (job_dir / "wandb").glob("offline-run-*")
    return run_dir, read_offline_run(run_dir)


@pytest.mark.parametrize("job,category", [(0, "brick"), (1, "grass")])
def test_offline_run_holds_hyperparameters_losses_metrics_and_memory(sweep, job, category):
    metrics = read_metrics(_job(sweep, category))
    run_dir, run = _run(_job(sweep, category))
    # one W&B run per job, grouped by the sweep folder's name
    assert run["group"] == sweep.name
    # hyperparameters: the resolved run config
    cfg = run["config"]["cfg"]["value"] if "value" in run["config"]["cfg"] else run["config"]["cfg"]
    assert cfg["data"]["category"] == category and cfg["loss"]["lambda_ent"] == 0.001
    assert cfg["model"]["net"]["memory"]["size"] == 16 and cfg["model"]["loss"]["lambda_ent"] == 0.001
    # loss terms, per epoch
    logged = set().union(*run["history"])
    assert {"train/loss", "train/l2", "train/ssim", "train/entropy", "val/loss", "val/l2", "val/ssim"} <= logged
    summary = run["summary"]
    # the three metrics, exactly as in metrics.json
    for key in ("image_AUROC", "pixel_AUROC", "PRO"):
        assert summary[f"test/{key}"] == pytest.approx(metrics[key], abs=1e-12)
    assert summary["category"] == category and summary["model"] == "vitmemad_cpu" and summary["ablation"] == "m_ca"
    assert summary["test/num_test_images"] == 12
    # memory diagnostics
    memory = metrics["memory"]
    assert memory["num_items"] == 16 and memory["num_queries"] == 12 * 16  # 12 images x (64/16)^2 positions
    for key in ("mean_entropy", "unused_fraction", "never_top1_fraction", "mean_active_items", "used_fraction",
                "feature_relative_error", "readout_image_share"):
        assert summary[f"test/memory/{key}"] == pytest.approx(memory[key])
    for key in ("r2", "image_share"):  # does the reconstruction follow the image
        assert summary[f"test/reconstruction/{key}"] == pytest.approx(metrics["reconstruction"][key])
    assert 0.0 <= summary["test/memory/unused_fraction"] <= 1.0
    assert 0.0 <= summary["test/memory/mean_entropy"] <= math.log(16) + 1e-9
    usage = summary["test/memory/usage"]
    assert usage["_type"] == "histogram" and len(usage["values"]) == 16 and len(usage["bins"]) == 17
    assert sum(usage["values"]) == pytest.approx(1.0, abs=1e-5)
    # the examples grid and the tables, as media files of the run
    (image_path,) = (run_dir / "files" / "media" / "images" / "test").glob("examples_*.png")
    with Image.open(image_path) as logged_img, Image.open(_job(sweep, category) / "examples.png") as written:
        # the same figure (4 columns with labels and a colour bar, vitmemad.utils.visualize)
        assert logged_img.size == written.size and logged_img.tobytes() == written.tobytes()
    assert_real_png(image_path)
    assert summary["test/examples"]["_type"] == "image-file"
    (table_path,) = (run_dir / "files" / "media" / "table" / "test").glob("summary_*.table.json")
    table = json.loads(table_path.read_text())
    row = dict(zip(table["columns"], table["data"][0]))
    assert len(table["data"]) == 1 and row["category"] == category
    assert row["image_AUROC"] == pytest.approx(metrics["image_AUROC"])
    (defects_path,) = (run_dir / "files" / "media" / "table" / "test").glob("per_defect_*.table.json")
    assert {r[1] for r in json.loads(defects_path.read_text())["data"]} == {"patch", "scratch", "spot"}
    # the curves of metrics.json as W&B line plots, the per-defect image AUROC as a bar plot
    visualize = run["config"]["_wandb"]["value"]["visualize"] if "value" in run["config"]["_wandb"] \
        else run["config"]["_wandb"]["visualize"]
    for key, ykey in (("image_roc", "tpr"), ("pixel_roc", "tpr"), ("pro", "pro")):
        panel = visualize[f"test/curves/{key}"]["panel_config"]
        assert panel["panelDefId"] == "wandb/line/v0" and panel["fieldSettings"]["x"] == "fpr"
        assert panel["fieldSettings"]["y"] == ykey
        (curve_path,) = (run_dir / "files" / "media" / "table" / "test" / "curves").glob(f"{key}_table_*.table.json")
        logged_curve = json.loads(curve_path.read_text())
        assert logged_curve["columns"] == ["fpr", ykey]
        stored = metrics["curves"][key]
        assert [r[0] for r in logged_curve["data"]] == pytest.approx(stored["fpr"])
        assert [r[1] for r in logged_curve["data"]] == pytest.approx(stored[ykey])
    bars = visualize["test/charts/per_defect"]["panel_config"]
    assert bars["panelDefId"] == "wandb/bar/v0" and bars["fieldSettings"] == {"label": "defect", "value": "image_AUROC"}
    (chart_path,) = (run_dir / "files" / "media" / "table" / "test" / "charts").glob("per_defect_table_*.table.json")
    assert dict(json.loads(chart_path.read_text())["data"]) == pytest.approx(metrics["per_defect"])


def test_runs_of_one_sweep_are_separate_runs(sweep):
    ids = {_run(_job(sweep, category))[0].name.rsplit("-", 1)[1] for category in ("brick", "grass")}
    assert len(ids) == 2


# ------------------------------------------------------------------ unit tests
def test_memory_usage_statistics():
    usage = MemoryUsage(4)
    # 3 queries: item 0 only; items 0 and 1 half/half; item 1 only. Items 2 and 3 never used.
    w = torch.tensor([[[1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]])
    usage.update(w)
    stats = usage.compute()
    assert stats["num_queries"] == 3
    assert stats["usage"] == pytest.approx([0.5, 0.5, 0.0, 0.0])
    assert stats["unused_fraction"] == 0.5
    assert stats["mean_entropy"] == pytest.approx(math.log(2) / 3)
    assert stats["mean_active_items"] == pytest.approx(4 / 3)
    assert stats["top1_usage"][2:] == [0.0, 0.0] and stats["never_top1_fraction"] == 0.5
    assert stats["feature_relative_error"] is None  # no feature maps given


def test_memory_feature_relative_error_measures_what_the_memory_loses():
    usage = MemoryUsage(2)
    queries = torch.tensor([[3.0, 4.0], [0.0, 5.0]])  # |z|^2 = 25 + 25
    output = torch.tensor([[3.0, 4.0], [0.0, 0.0]])  # first kept exactly, second lost entirely
    usage.update(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), queries, output)
    assert usage.compute()["feature_relative_error"] == pytest.approx(0.5)


def test_memory_hook_sees_every_forward_and_detaches():
    memory = MemoryModule(8, 4, temperature=0.1)
    model = torch.nn.Sequential(memory)
    hook = MemoryUsageHook(model)
    with torch.no_grad():
        memory(torch.randn(2, 4, 3, 3))
        memory(torch.randn(1, 4, 3, 3))
    stats = hook.detach()
    assert stats["num_queries"] == 3 * 9 and sum(stats["usage"]) == pytest.approx(1.0, abs=1e-6)
    assert 0.0 < stats["feature_relative_error"] < 10.0  # random items rebuild random queries badly
    memory(torch.randn(1, 4, 3, 3))  # detached: no longer counted
    assert hook.usage.compute()["num_queries"] == 27
    assert MemoryUsageHook(torch.nn.Linear(2, 2)).detach() is None  # models without a memory module


def test_no_group_and_no_run_outside_a_sweep():
    assert wandb_logging.sweep_group() is None
    wandb_logging.finish()  # nothing active: a no-op
