"""Speed work behaves: the GPU check runs without the heavy stack, the FLOP count includes
fused attention, the decoder gets a channels_last map, and `compile` compiles in place.

Speed itself is measured by `make bench`, never asserted here.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import REPO_ROOT, TINY_DEMO, run_module

sys.path.insert(0, str(REPO_ROOT / "experiments"))
import gpu_check  # noqa: E402

# A sitecustomize that makes these packages absent, as on a bare machine with only torch and timm.
BLOCKER = '''
import importlib.abc, importlib.machinery, sys
BLOCK = set(%r)
class _Absent(importlib.abc.Loader):
    def create_module(self, spec):
        raise ModuleNotFoundError(f"No module named {spec.name!r} (blocked)", name=spec.name)
    def exec_module(self, module):
        pass
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        return importlib.machinery.ModuleSpec(name, _Absent()) if name.split(".")[0] in BLOCK else None
sys.meta_path.insert(0, _Block())
'''


def test_gpu_check_trains_on_a_cpu_without_hydra_lightning_or_wandb(tmp_path):
    blocked = [*gpu_check.HEAVY, "kornia_rs"]
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(BLOCKER % (blocked,))
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "experiments" / "gpu_check.py"), "--device", "cpu", "--tiny",
         "--steps", "2", "--warmup", "1", "--infer-steps", "1", "--out", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["heavy_modules_imported"] == []
    assert res["kornia_rs"].startswith("stub")  # kornia imports without its compiled helper
    assert res["device"] == "cpu" and res["bf16_autocast"] is False
    assert res["losses_finite"] and res["train"]["images_per_s"] > 0 and res["train"]["peak_rss_MiB"] > 0
    assert res["inference"]["map_shape"] == [2, 32, 32]
    assert res["train_step_gflop"] > 0 and res["fused_attention"] is True
    assert res["model_config"]["encoder"]["depth"] == 1  # the tiny override, not the paper preset
    assert "[gpu_check]" in proc.stdout


def test_gpu_check_reads_the_paper_preset_as_hydra_composes_it(compose):
    from omegaconf import OmegaConf

    cfg = compose("model=vitmemad_paper", "ablation=m_ca")
    plain = gpu_check.paper_config()
    preset = plain["preset"]
    # interpolations are left as they are on both sides
    assert preset["model"]["net"] == OmegaConf.to_container(cfg.model.net)
    assert plain["optimizer"] == OmegaConf.to_container(cfg.model.optimizer)
    assert {k: preset["data"][k] for k in ("image_size", "batch_size")} == {
        k: cfg.data[k] for k in ("image_size", "batch_size")}
    assert preset["trainer"]["max_epochs"] == cfg.trainer.max_epochs
    assert plain["ablation"] == OmegaConf.to_container(cfg.ablation)
    for group in ("loss", "anomaly_map"):  # constructor arguments: no _target_, no interpolations
        assert plain[group] == gpu_check._plain(OmegaConf.to_container(cfg[group])), group
        assert "source" in plain["anomaly_map"] and "lambda_ent" in plain["loss"]
    enc = preset["model"]["net"]["encoder"]
    assert (preset["data"]["image_size"], preset["data"]["batch_size"], enc["embed_dim"], enc["depth"],
            enc["num_heads"]) == (384, 8, 768, 12, 8)


def test_flop_count_includes_the_fused_attention_kernel():
    from timm.models.vision_transformer import Block

    block = Block(64, 4).eval()
    x = torch.randn(2, 17, 64)
    counts = {}
    for fused in (True, False):
        block.attn.fused_attn = fused
        with torch.inference_mode():
            counts[fused] = gpu_check.count_flops(lambda: block(x))
    assert counts[True] == counts[False] > 0  # the fused kernel is counted like the math path


@pytest.mark.parametrize("ablation,memory,coord_attention",
                         [("base", False, False), ("m", True, False), ("ca", False, True), ("m_ca", True, True)])
def test_the_vit_hands_the_decoder_a_channels_last_map(compose_plain, ablation, memory, coord_attention):
    """The decoder's convolutions run in channels_last because the feature map is a reshape of the tokens
    (docs/results.md "Benchmarks": forcing it NCHW is slower); a .contiguous() in between would lose that."""
    from vitmemad.build import build_module

    cfg = compose_plain("model=vitmemad_cpu", f"ablation={ablation}", "debug=smoke", "data.image_size=32")
    model = build_module(cfg["model"]).net.eval()
    assert (model.memory is not None, model.coord_attention is not None) == (memory, coord_attention)
    seen = []
    model.decoder.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    with torch.no_grad():
        model(torch.rand(2, 3, 32, 32) * 2 - 1)
    x = seen[0]
    assert x.stride(1) == 1 and x.stride(3) == x.shape[1]  # channels innermost: NHWC


def test_compile_option_compiles_in_place_and_keeps_checkpoint_keys():
    from vitmemad.pipeline import compile_model

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
    keys = list(model.state_dict())
    assert compile_model(model, False) is False and compile_model(model, None) is False
    assert model._compiled_call_impl is None
    assert compile_model(model, True) is True
    assert model._compiled_call_impl is not None and list(model.state_dict()) == keys
    with pytest.raises(RuntimeError, match="mode"):
        compile_model(torch.nn.Linear(2, 2), "no-such-mode")


@pytest.mark.slow
def test_training_with_compile_writes_a_checkpoint_an_eager_model_loads(tmp_path):
    """About 2 minutes on 2 cores (compilation)."""
    from vitmemad.build import build_module
    from vitmemad.checkpoint import load_checkpoint

    run_dir = tmp_path / "run"
    run_module("vitmemad.train", *TINY_DEMO, "compile=true", "num_threads=1", f"hydra.run.dir={run_dir}", timeout=900)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["image_AUROC"] is not None
    ckpt = load_checkpoint(str(run_dir / "checkpoints" / "last.ckpt"))
    module = build_module(ckpt["hyper_parameters"]["cfg"]["model"])
    module.load_state_dict(ckpt["state_dict"], strict=True)  # no `_orig_mod.` prefixes
    assert Path(run_dir / "checkpoints" / "last.ckpt").is_file()
