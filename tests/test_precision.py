"""``trainer.precision=bf16-mixed`` on CPU: the encoder computes in bfloat16, the weights stay float32, and the
loss, memory addressing, anomaly maps and metrics stay full precision; a CPU without bf16 falls back to fp32."""
from __future__ import annotations

import logging

import lightning as L
import pytest
import torch
from torch import nn

from helpers import TINY_DEMO
from vitmemad import trainer_precision
from vitmemad.build import build_callbacks, build_datamodule, build_module
from vitmemad.models.anomaly_map import AnomalyMapGenerator
from vitmemad.models.loss import ReconstructionLoss
from vitmemad.models.memory import MemoryModule

BF16 = torch.bfloat16
needs_bf16 = pytest.mark.skipif(not trainer_precision.cpu_bf16_supported(), reason="this CPU has no bf16")


def _record_output_dtypes(net: nn.Module) -> set[torch.dtype]:
    """Output dtypes of every linear and convolution layer of ``net`` (filled by forward hooks)."""
    seen: set[torch.dtype] = set()

    def hook(_module, _inputs, output):
        if isinstance(output, torch.Tensor):
            seen.add(output.dtype)

    for layer in net.modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            layer.register_forward_hook(hook)
    return seen


@needs_bf16
@pytest.mark.parametrize("model", ["vitmemad_cpu", "cae", "patchcore", "vitmemad_feat"])
def test_bf16_mixed_trains_and_tests_on_cpu_with_full_precision_maps(compose_plain, tmp_path, model):
    cfg = compose_plain(f"model={model}", *TINY_DEMO, "trainer.max_epochs=1", output_dir=str(tmp_path))
    L.seed_everything(0)
    module, datamodule = build_module(cfg["model"]), build_datamodule(cfg["data"])
    dtypes = _record_output_dtypes(module.net)
    maps_seen: list[torch.dtype] = []
    update = module.evaluator.update
    module.evaluator.update = lambda maps, batch, scores=None: (maps_seen.append(maps.dtype),
                                                                update(maps, batch, scores))[1]
    trainer = L.Trainer(accelerator="cpu", precision="bf16-mixed", max_epochs=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, limit_train_batches=2, num_sanity_val_steps=0,
                        callbacks=[c for c in build_callbacks(cfg["callbacks"])
                                   if type(c).__name__ in ("ThresholdCalibration", "MemoryTraining")])
    trainer.fit(module, datamodule=datamodule)
    assert BF16 in dtypes, f"no layer of {model} computed in bfloat16: {dtypes}"
    assert {p.dtype for p in module.parameters()} == {torch.float32}, "weights must stay float32"

    trainer.test(module, datamodule=datamodule, verbose=False)
    assert maps_seen and set(maps_seen) == {torch.float32}, maps_seen
    assert module.evaluator.image_auroc.compute().dtype == torch.float64
    assert all(isinstance(module.test_results[k], float) for k in ("image_AUROC", "pixel_AUROC", "PRO"))


def test_loss_maps_and_memory_ignore_autocast():
    """Under autocast the full-precision parts give exactly their float32 results (bf16 would differ ~1e-3)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1
    recon = (x + 0.1 * torch.randn(2, 3, 32, 32, generator=gen)).clamp(-1, 1)
    features = torch.randn(2, 16, 4, 4, generator=gen)
    loss, maps, memory = ReconstructionLoss(), AnomalyMapGenerator("both", sigma=2.0), MemoryModule(50, 16)

    def compute():
        read, weights = memory(features)
        return {"loss": loss(x, recon)["loss"], "map": maps(x, recon), "read": read, "weights": weights}

    full = compute()
    with torch.autocast("cpu", dtype=BF16):
        mixed = compute()
    for key, value in full.items():
        assert mixed[key].dtype == torch.float32, key
        torch.testing.assert_close(mixed[key], value, rtol=0, atol=0, msg=key)


def test_bf16_falls_back_to_fp32_on_a_cpu_without_it(monkeypatch, caplog, compose):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": False, "amx_bf16": False})
    cfg = compose(*TINY_DEMO, "trainer.precision=bf16-mixed")
    with caplog.at_level(logging.WARNING, logger="vitmemad"):
        trainer_precision.resolve_trainer(cfg.trainer)
    assert cfg.trainer.precision == "32-true"
    lines = [r.getMessage() for r in caplog.records if "precision" in r.getMessage()]
    assert len(lines) == 1 and "avx512_bf16" in lines[0] and "32-true" in lines[0], lines
    # fp32 passes through untouched; a GPU's bf16 is Lightning's to check
    assert trainer_precision.resolve("32-true", "cpu") == "32-true"
    assert trainer_precision.resolve("bf16-mixed", "gpu") == "bf16-mixed"


def test_bf16_is_kept_where_the_cpu_has_it(monkeypatch):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": False, "amx_bf16": True})
    assert trainer_precision.resolve("bf16-mixed", "cpu") == "bf16-mixed"


def test_cpu_attention_is_timms_without_autocast_and_float32_inside_it():
    from timm.layers.attention import Attention

    from vitmemad.models.encoder import CPUFloat32Attention

    torch.manual_seed(0)
    reference, ours = Attention(64, num_heads=4, qkv_bias=True), CPUFloat32Attention(64, num_heads=4, qkv_bias=True)
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(2, 17, 64)
    torch.testing.assert_close(ours(x), reference(x), rtol=0, atol=0)
    with torch.autocast("cpu", dtype=BF16):
        mixed = ours(x)
    assert mixed.dtype == BF16  # the output projection still runs in bf16
    torch.testing.assert_close(mixed.float(), reference(x), rtol=0.05, atol=0.02)


def test_cpu_attention_under_autocast_is_timms_forward_with_float32_attention(monkeypatch):
    """The autocast path re-states timm's forward; it must stay timm's, bit for bit, but for the one op it moves
    to float32 (checked forward and backward, so a timm change to that forward shows up here)."""
    from types import SimpleNamespace

    import torch.nn.functional as F
    from timm.layers import attention as timm_attention
    from timm.layers.attention import Attention

    from vitmemad.models.encoder import CPUFloat32Attention
    from vitmemad.models.precision import float32_region

    def float32_attention(q, k, v, **kwargs):
        with float32_region(q, k, v) as (q, k, v):
            return F.scaled_dot_product_attention(q, k, v, **kwargs)

    torch.manual_seed(0)
    reference, ours = Attention(64, num_heads=4, qkv_bias=True), CPUFloat32Attention(64, num_heads=4, qkv_bias=True)
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(2, 17, 64)
    with torch.autocast("cpu", dtype=BF16):
        mixed = ours(x)
        monkeypatch.setattr(timm_attention, "F", SimpleNamespace(scaled_dot_product_attention=float32_attention))
        expected = reference(x)
    torch.testing.assert_close(mixed, expected, rtol=0, atol=0)
    mixed.float().square().sum().backward()
    expected.float().square().sum().backward()
    for (name, a), b in zip(ours.named_parameters(), reference.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0, msg=name)
