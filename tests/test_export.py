"""`vitmemad.export`: ONNX of the scoring graph equals PyTorch within 1e-4, any batch size; never
overwrites silently; the throughput benchmark runs both runtimes."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from omegaconf import OmegaConf

from helpers import read_metrics, run_here
from vitmemad.build import build_module
from vitmemad.checkpoint import load_checkpoint, load_state_dict_strict
from vitmemad.export import benchmark_inference, export, export_onnx, onnx_session
from vitmemad.inference import calibrated_thresholds, image_size_of, load_module
from vitmemad.models import AnomalyModule
from vitmemad.onnx_model import PREPROCESS, read_metadata


@pytest.fixture(scope="module")
def ckpt(smoke_run, tmp_path_factory) -> str:
    """The shared smoke run's best checkpoint, copied: the export CLI writes model.onnx beside it."""
    run_dir = tmp_path_factory.mktemp("train") / "run"
    shutil.copytree(smoke_run, run_dir)
    return str(run_dir / Path(read_metrics(smoke_run)["ckpt_path"]).relative_to(smoke_run))


def images(batch: int, size: int, seed: int) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def assert_matches_torch(onnx_path: Path, module: AnomalyModule) -> None:
    session = onnx_session(onnx_path)
    size = image_size_of(module)
    for seed, batch in enumerate((1, 3)):
        x = images(batch, size, seed)
        with torch.inference_mode():
            ref, _ = module.score(x)
        (got,) = session.run(["maps"], {"images": x.numpy()})
        assert got.shape == (batch, size, size)
        np.testing.assert_allclose(got, ref.numpy(), rtol=0, atol=1e-4)


def test_export_cli_default_path_and_no_silent_overwrite(tmp_path, ckpt):
    default = Path(ckpt).parent / "model.onnx"
    assert not default.exists()
    run_here("vitmemad.export", f"ckpt_path={ckpt}", "format=onnx", f"hydra.run.dir={tmp_path / 'run1'}")
    assert default.is_file()

    module = load_module(ckpt)
    assert not module.training
    assert_matches_torch(default, module)
    meta = {p.key: p.value for p in onnx.load(str(default)).metadata_props}
    image_thr, _ = calibrated_thresholds(module)
    assert float(meta["vitmemad.image_threshold"]) == pytest.approx(image_thr)
    assert int(meta["vitmemad.image_size"]) == image_size_of(module)
    # What predict needs beyond the graph travels with it (vitmemad.onnx_model.read_metadata).
    assert read_metadata(default, meta)["image_size"] == image_size_of(module)
    assert json.loads(meta["vitmemad.preprocess"]) == PREPROCESS and json.loads(meta["vitmemad.postprocess"])
    parity = json.loads(meta["vitmemad.parity"])
    assert parity["atol"] == 1e-4 and 0 <= parity["max_abs_diff"] <= 1e-4 and parity["batch_sizes"] == [1, 3]

    before = default.read_bytes()
    refused = run_here("vitmemad.export", f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'run2'}", check=False)
    assert refused.returncode != 0 and "already exists" in refused.stderr + refused.stdout
    assert default.read_bytes() == before

    run_here("vitmemad.export", f"ckpt_path={ckpt}", "overwrite=true", f"output={tmp_path / 'out' / 'm.onnx'}",
               f"hydra.run.dir={tmp_path / 'run3'}")
    assert_matches_torch(tmp_path / "out" / "m.onnx", module)
    assert not list((tmp_path / "out").glob(".*.tmp"))  # no temporary file left behind


@pytest.mark.parametrize("source", ["both", "all"])
def test_ssim_anomaly_maps_export(tmp_path, ckpt, source):
    """The 1 - SSIM and 1 - MSGMS terms (kornia's SSIM and filters) export too."""
    raw = load_checkpoint(ckpt)
    cfg = raw["hyper_parameters"]["cfg"]
    cfg["anomaly_map"] = {**cfg["anomaly_map"], "source": source}
    cfg["model"]["anomaly_map"] = {**cfg["model"]["anomaly_map"], "source": source}  # the module's copy
    module = build_module(cfg["model"])
    load_state_dict_strict(module, raw["state_dict"], ckpt)
    module.run_config = cfg  # as load_module sets it: the ONNX metadata come from it
    module.eval()
    assert module.anomaly_map.source == source
    info = export_onnx(module, tmp_path / "ssim.onnx")
    assert info["max_abs_diff"] <= 1e-4 and info["verified_batch_sizes"] == [1, 3]
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "ssim.onnx")).metadata_props}
    assert f'"source": "{source}"' in meta["vitmemad.anomaly_map"] and "_target_" not in meta["vitmemad.anomaly_map"]
    assert_matches_torch(tmp_path / "ssim.onnx", module)
    with pytest.raises(FileExistsError, match="already exists"):
        export_onnx(module, tmp_path / "ssim.onnx")


def test_unknown_format_is_refused(ckpt):
    with pytest.raises(ValueError, match="format=tensorrt is not supported"):
        export(OmegaConf.create({"ckpt_path": ckpt, "format": "tensorrt", "output": None}))


def test_benchmark_reports_both_runtimes():
    result = benchmark_inference("vitmemad_cpu", batch_size=2, rounds=2, warmup=1, threads=1, overrides=("debug=smoke",))
    assert result["torch_images_per_s"] > 0 and result["onnxruntime_images_per_s"] > 0
    assert result["image_size"] == 64 and result["max_abs_diff"] <= 1e-4
