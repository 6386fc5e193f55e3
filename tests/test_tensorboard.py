"""logger=tensorboard: a smoke run's event files hold the loss terms, validation and test metrics, the run config
with the test metrics (HParams), memory and per-defect scalars and the run's figures; `logger=[csv,tensorboard]`
writes both."""
from __future__ import annotations

import csv
import math

import pytest

from helpers import TINY_DEMO, read_metrics, run_here
from vitmemad.errors import ConfigError
from vitmemad.utils import tensorboard_logging

pytest.importorskip("tensorboard")


def _events(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = run_dir / "tensorboard" / "version_0"
    assert list(folder.glob("events.out.tfevents.*")), sorted(p.name for p in run_dir.rglob("*"))
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_a_smoke_run_writes_real_scalars_hparams_and_images(tmp_path):
    from tensorboard.plugins.hparams import plugin_data_pb2

    run_here("vitmemad.train", *TINY_DEMO, "logger=[csv,tensorboard]", f"hydra.run.dir={tmp_path}")
    record = read_metrics(tmp_path)
    acc = _events(tmp_path)
    tags = acc.Tags()
    scalars = {tag: [e.value for e in acc.Scalars(tag)] for tag in tags["scalars"]}
    for tag in ("train/loss", "train/l2", "val/loss", "val/image_score", "test/image_AUROC", "test/pixel_AUROC",
                "test/PRO", "test/memory/mean_entropy", "val/recon_r2", "test/reconstruction/r2"):
        assert scalars.get(tag) and all(math.isfinite(v) for v in scalars[tag]), (tag, sorted(scalars))
    for key in ("image_AUROC", "pixel_AUROC", "PRO"):  # the same numbers as metrics.json
        assert scalars[f"test/{key}"][-1] == pytest.approx(record[key], abs=1e-6)
    for defect, value in record["per_defect"].items():
        assert scalars[f"test/per_defect/{defect}"] == [pytest.approx(value, abs=1e-6)]
    assert "hp_metric" not in scalars
    assert set(tags["images"]) == {"test/examples", "test/curves"}
    examples = acc.Images("test/examples")[0]
    assert examples.width >= 100 and examples.height >= 100

    content = acc.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert [m.name.tag for m in experiment.metric_infos] == ["test/image_AUROC", "test/pixel_AUROC", "test/PRO"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["cfg/seed"].number_value == 0 and start.hparams["cfg/debug"].string_value == "smoke"
    assert start.hparams["cfg/model/net/memory/size"].number_value == 16  # debug=smoke's memory

    with open(tmp_path / "csv" / "version_0" / "metrics.csv", newline="") as f:  # the CSV logger beside it
        rows = list(csv.DictReader(f))
    assert any(r.get("val/loss") for r in rows) and any(r.get("test/image_AUROC") for r in rows)


def test_a_missing_tensorboard_package_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(tensorboard_logging.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"pip install 'vitmemad\[tensorboard\]'"):
        tensorboard_logging.tensorboard_logger(save_dir=str(tmp_path))


def test_flat_params_gives_values_the_hparams_plugin_takes():
    flat = tensorboard_logging.flat_params({"cfg": {"seed": 0, "data": {"root": None, "sizes": [1, 2]}, "ok": True}})
    assert flat == {"cfg/seed": 0, "cfg/data/root": "None", "cfg/data/sizes": "[1, 2]", "cfg/ok": True}
