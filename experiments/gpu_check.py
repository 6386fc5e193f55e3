"""Train the paper preset for a fixed number of steps on synthetic batches; record images/s and memory.

Called by experiments/gpu_check.sh. It needs only torch, timm (which brings
pyyaml) and kornia, with the project on PYTHONPATH: no Hydra, Lightning, W&B, dataset or network. The
preset is read from conf/model/vitmemad_paper.yaml (plus conf/ablation/<ablation>.yaml, conf/loss/default.yaml
and conf/anomaly_map/default.yaml) with plain yaml, so it is the one `model=vitmemad_paper` trains.

    python experiments/gpu_check.py                              # CUDA, bf16 autocast, 384x384, batch 8
    python experiments/gpu_check.py --compile                    # the same with torch.compile
    python experiments/gpu_check.py --device cpu --tiny --steps 2 --warmup 1   # smoke test anywhere

What is timed: Adam training steps (forward, loss = L2 + SSIM + entropy, backward, step) under
``torch.autocast(dtype=bfloat16)`` on CUDA, and inference (forward + anomaly map) in inference mode; both
on a few fixed random batches in [-1, 1] that live on the device. Peak memory is
``torch.cuda.max_memory_allocated`` (and ``_reserved``) of each phase on CUDA, the peak resident set size
on a CPU. The JSON also holds the FLOPs of a training step (torch.utils.flop_counter), the achieved
TFLOP/s, a dense matmul yardstick in the same precision, versions, the device name and the date.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
import types
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# FLOPs and RSS come from the bench's measuring module (torch and the standard library only)
from vitmemad.bench.measure import count_flops, flop_mapping, reset_peak_rss, rss_mib  # noqa: E402,F401

#: packages the check must not need (the bare GPU machine does not have them). Where wandb is installed,
#: timm imports it by itself (optional): the test blocks them all to prove the check runs without them.
HEAVY = ("hydra", "omegaconf", "lightning", "lightning_fabric", "pytorch_lightning", "wandb", "torchmetrics",
         "sklearn", "skimage", "onnx", "onnxruntime", "optuna")
#: small overrides for a smoke test on any machine (seconds on a CPU)
TINY = {"data": {"image_size": 32, "batch_size": 2},
        "model": {"net": {"encoder": {"embed_dim": 32, "depth": 1, "num_heads": 2}, "memory": {"size": 8},
                          "decoder": {"channels": [16, 8, 8, 8, 8]}}}}


# ------------------------------------------------------------------ config (plain yaml, no Hydra)
def _yaml(rel: str) -> dict[str, Any]:
    import yaml  # a dependency of timm

    return yaml.safe_load((REPO / "conf" / rel).read_text())


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def paper_config(model: str = "vitmemad_paper", ablation: str = "m_ca") -> dict[str, Any]:
    """The preset (merged over the presets in its defaults list), ablation, loss and anomaly-map groups, as
    `python -m vitmemad.train model=<model>` composes them (interpolations are left as they are)."""
    preset = _yaml(f"model/{model}.yaml")
    merged: dict[str, Any] = {}
    for parent in preset.get("defaults", []):
        if parent not in ("_self_", "_reconstruction"):
            merged = _merge(merged, paper_config(parent, ablation)["preset"])
    merged = _merge(merged, {k: v for k, v in preset.items() if k != "defaults"})
    return {"preset": merged, "ablation": _yaml(f"ablation/{ablation}.yaml"),
            "loss": _plain(_yaml("loss/default.yaml")), "anomaly_map": _plain(_yaml("anomaly_map/default.yaml")),
            "optimizer": _merge(_yaml("model/_reconstruction.yaml")["optimizer"], merged["model"].get("optimizer", {}))}


def _plain(node: dict[str, Any]) -> dict[str, Any]:
    """A config node's constructor arguments: no ``_target_``/``_partial_``, no interpolations."""
    return {k: v for k, v in node.items() if not k.startswith("_") and not (isinstance(v, str) and "${" in v)}


def build_net(net: dict[str, Any], image_size: int, ablation: dict[str, Any]) -> torch.nn.Module:
    """The ViT net of a preset's ``model.net`` node, built without Hydra (what instantiate would build)."""
    from vitmemad.models.coord_attention import CoordinateAttention
    from vitmemad.models.decoder import TransposedConvDecoder
    from vitmemad.models.encoder import ViTEncoder
    from vitmemad.models.memory import MemoryModule
    from vitmemad.models.vitmemad import ViTMemAE

    enc = _plain(net["encoder"])
    dim, patch = enc["embed_dim"], enc["patch_size"]
    encoder = ViTEncoder(image_size=image_size, **enc)
    memory = MemoryModule(dim=dim, **_plain(net["memory"])) if ablation["memory"] else None
    ca = CoordinateAttention(dim, **_plain(net["coord_attention"])) if ablation["coord_attention"] else None
    decoder = TransposedConvDecoder(dim, patch_size=patch, **_plain(net["decoder"]))
    return ViTMemAE(encoder, decoder, memory, ca)


# ------------------------------------------------------------------ helpers
def ensure_kornia_rs() -> str:
    """kornia imports kornia_rs (a compiled wheel) for kornia.io only; stub it where it is missing."""
    try:
        import kornia_rs  # noqa: F401

        return "installed"
    except ImportError:
        stub = types.ModuleType("kornia_rs")
        stub.io = types.ModuleType("kornia_rs.io")
        sys.modules["kornia_rs"], sys.modules["kornia_rs.io"] = stub, stub.io
        return "stub (kornia.io unusable; not needed here)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        reset_peak_rss()


def _peak(device: torch.device) -> dict[str, float]:
    if device.type == "cuda":
        return {"max_memory_allocated_MiB": torch.cuda.max_memory_allocated(device) / 2**20,
                "max_memory_reserved_MiB": torch.cuda.max_memory_reserved(device) / 2**20}
    return {"peak_rss_MiB": rss_mib("VmHWM")}


def matmul_tflops(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 10) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12


# ------------------------------------------------------------------ the check
def run(device: str = "auto", steps: int = 50, warmup: int = 10, infer_steps: int = 20, batch: int | None = None,
        image_size: int | None = None, bf16: bool | None = None, compile_model: bool = False, tiny: bool = False,
        ablation: str = "m_ca", seed: int = 0) -> dict[str, Any]:
    wall = time.perf_counter()
    kornia_rs = ensure_kornia_rs()
    import kornia
    import timm

    from vitmemad.models.anomaly_map import AnomalyMapGenerator
    from vitmemad.models.loss import ReconstructionLoss

    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       "cpu" if device == "auto" else device)
    use_bf16 = dev.type == "cuda" if bf16 is None else bool(bf16)
    cfg = paper_config(ablation=ablation)
    preset = _merge(cfg["preset"], TINY) if tiny else cfg["preset"]
    size = int(image_size or preset["data"]["image_size"])
    batch = int(batch or preset["data"]["batch_size"])
    torch.manual_seed(seed)
    model = build_net(preset["model"]["net"], size, cfg["ablation"]).to(dev)
    criterion = ReconstructionLoss(**cfg["loss"])
    anomaly_map = AnomalyMapGenerator(**cfg["anomaly_map"])
    opt_cfg = cfg["optimizer"]
    optimizer = torch.optim.Adam(model.parameters(), lr=float(opt_cfg["lr"]),
                                 weight_decay=float(opt_cfg.get("weight_decay", 0.0)))
    gen = torch.Generator(device="cpu").manual_seed(seed)
    batches = [(torch.rand(batch, 3, size, size, generator=gen) * 2 - 1).to(dev) for _ in range(4)]
    autocast = lambda: torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16)  # noqa: E731
    losses: list[float] = []

    def train_step(x: torch.Tensor) -> torch.Tensor:
        with autocast():
            out = model(x)
            terms = criterion(x, out["reconstruction"], out["memory_weights"])
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()
        return terms["loss"].detach()

    res: dict[str, Any] = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "device": str(dev), "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else
        (platform.processor() or platform.machine()),
        "torch": torch.__version__, "cuda": torch.version.cuda, "timm": timm.__version__,
        "kornia": kornia.__version__, "kornia_rs": kornia_rs, "python": platform.python_version(),
        "threads": torch.get_num_threads() if dev.type == "cpu" else None,
        "preset": "tiny smoke test (not the paper preset)" if tiny else "vitmemad_paper", "ablation": ablation,
        "image_size": size, "batch": batch, "bf16_autocast": use_bf16, "compile": compile_model,
        "steps": steps, "warmup": warmup, "infer_steps": infer_steps,
        "model_config": preset["model"]["net"], "parameters_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "fused_attention": all(m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")),
    }
    model.train()
    res["train_step_gflop"] = count_flops(lambda: train_step(batches[0])) / 1e9  # also the first (eager) step
    if compile_model:
        model.compile()
    _reset_peak(dev)
    start = time.perf_counter()
    for i in range(warmup):
        losses.append(float(train_step(batches[i % len(batches)])))
    _sync(dev)
    res["warmup_s"] = time.perf_counter() - start  # with --compile: mostly compilation
    start = time.perf_counter()
    last = None
    for i in range(steps):
        last = train_step(batches[i % len(batches)])
    _sync(dev)
    train_s = time.perf_counter() - start
    losses.append(float(last) if last is not None else float("nan"))
    res["train"] = {"seconds": train_s, "step_s": train_s / max(steps, 1), "images_per_s": steps * batch / train_s,
                    **_peak(dev)}
    res["train"]["achieved_tflops"] = res["train_step_gflop"] / res["train"]["step_s"] / 1e3
    res["losses_first_last"] = [losses[0], losses[-1]]
    res["losses_finite"] = all(map(lambda v: v == v and abs(v) != float("inf"), losses))

    model.eval()
    _reset_peak(dev)
    with torch.inference_mode():
        for i in range(min(warmup, 2) + 1):  # warm-up (and, compiled, the inference graph)
            with autocast():
                anomaly_map(batches[0], model(batches[0])["reconstruction"])
        _sync(dev)
        start = time.perf_counter()
        for i in range(infer_steps):
            x = batches[i % len(batches)]
            with autocast():
                maps = anomaly_map(x, model(x)["reconstruction"])
        _sync(dev)
        infer_s = time.perf_counter() - start
    res["inference"] = {"seconds": infer_s, "images_per_s": infer_steps * batch / max(infer_s, 1e-9),
                        "map_shape": list(maps.shape), **_peak(dev)}
    dtype = torch.bfloat16 if use_bf16 else torch.float32
    res["matmul_tflops"] = {"dtype": str(dtype), "n": 8192 if dev.type == "cuda" else 1024,
                            "value": matmul_tflops(dev, dtype, 8192 if dev.type == "cuda" else 1024)}
    res["train"]["fraction_of_matmul"] = res["train"]["achieved_tflops"] / res["matmul_tflops"]["value"]
    res["heavy_modules_imported"] = sorted({m.split(".")[0] for m in sys.modules} & set(HEAVY))
    res["wall_s"] = time.perf_counter() - wall
    return res


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA when present) | cuda | cuda:N | cpu")
    parser.add_argument("--steps", type=int, default=50, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=10, help="untimed training steps first")
    parser.add_argument("--infer-steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=None, help="default: the preset's (8)")
    parser.add_argument("--image-size", type=int, default=None, help="default: the preset's (384)")
    parser.add_argument("--no-bf16", dest="bf16", action="store_false", default=None, help="fp32 on CUDA")
    parser.add_argument("--bf16", dest="bf16", action="store_true", help="bf16 autocast also on a CPU")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (as `compile: true`)")
    parser.add_argument("--tiny", action="store_true", help="a tiny model: smoke test, not the paper preset")
    parser.add_argument("--ablation", default="m_ca", choices=["base", "m", "ca", "m_ca"])
    parser.add_argument("--out", default=None, help="JSON file (default: print only)")
    args = parser.parse_args(argv)
    res = run(args.device, args.steps, args.warmup, args.infer_steps, args.batch, args.image_size, args.bf16,
              args.compile, args.tiny, args.ablation)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=2) + "\n")
    mem = res["train"].get("max_memory_allocated_MiB", res["train"].get("peak_rss_MiB"))
    print(f"[gpu_check] {res['device_name']} {res['preset']} {res['image_size']}px batch {res['batch']} "
          f"bf16={res['bf16_autocast']} compile={res['compile']}: train {res['train']['images_per_s']:.1f} img/s "
          f"({res['train']['achieved_tflops']:.1f} TFLOP/s = {res['train']['fraction_of_matmul']:.2f} x matmul), "
          f"peak {mem:.0f} MiB; inference {res['inference']['images_per_s']:.1f} img/s; warm-up {res['warmup_s']:.1f} s"
          + (f" -> {args.out}" if args.out else ""))
    return res


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
