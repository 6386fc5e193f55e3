"""`make bench`: speed and memory figures measured side by side in one run -> bench/results.json.

Figures (ratios are what to compare across machines; absolute times are context):
- matmul: dense fp32 2048x2048 matmul GFLOP/s, this machine's yardstick;
- model: training and inference images/s, peak RSS, and for the forward pass of each preset the FLOPs
  (torch.utils.flop_counter) and achieved GFLOP/s as a fraction of the matmul rate;
- overhead: step time of +M+CA over Base for each preset (memory module + coordinate attention);
- metrics: exact PRO against the numpy port of the official algorithm (experiments/bench_metrics.py);
- loader: demo data-loader images/s against the model's training images/s;
- inference: PyTorch against ONNX Runtime (vitmemad.export.benchmark_inference).
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "experiments"))

from vitmemad.models.lightning_module import AnomalyModule  # noqa: E402


def preset_config(model: str, ablation: str) -> dict[str, Any]:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model}", f"ablation={ablation}"])
    cfg.paths.output_dir = "/tmp/unused"
    return OmegaConf.to_container(cfg, resolve=True)


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def model_figures(model: str, ablation: str, batch: int, steps: int) -> dict[str, Any]:
    torch.manual_seed(0)
    cfg = preset_config(model, ablation)
    module = AnomalyModule(cfg)
    size = cfg["data"]["image_size"]
    x = torch.rand(batch, 3, size, size) * 2 - 1
    opt = torch.optim.Adam(module.parameters(), lr=1e-4)

    def train_step() -> None:
        terms, _ = module._loss(x)
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        opt.step()

    module.train()
    train_step()  # warm-up (allocations, oneDNN primitives)
    train_s = min(_timed(train_step) for _ in range(steps))
    module.eval()
    with torch.inference_mode():
        module.score(x)
        infer_s = min(_timed(lambda: module.score(x)) for _ in range(steps))
        with FlopCounterMode(display=False) as counter:
            module.model(x)
        forward_s = min(_timed(lambda: module.model(x)) for _ in range(steps))
    flops = counter.get_total_flops()
    return {
        "model": model, "ablation": ablation, "image_size": size, "batch": batch,
        "train_images_per_s": batch / train_s, "infer_images_per_s": batch / infer_s,
        "train_step_s": train_s, "forward_s": forward_s,
        "forward_gflop": flops / 1e9, "forward_gflops_per_s": flops / forward_s / 1e9,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def loader_images_per_s(image_size: int, batch: int) -> float:
    from vitmemad.data import DemoDataModule

    dm = DemoDataModule(image_size=image_size, batch_size=batch)
    dm.setup("fit")
    for _ in dm.train_dataloader():  # first epoch decodes and caches
        pass
    n = len(dm.train_dataset)
    return n / _timed(lambda: [b for b in dm.train_dataloader()])


def run(quick: bool = False) -> dict[str, Any]:
    torch.set_num_threads(torch.get_num_threads())
    results: dict[str, Any] = {"threads": torch.get_num_threads(), "matmul_gflops": matmul_gflops()}
    presets = [("vitmemad_cpu", 16, 3)] + ([] if quick else [("vitmemad_paper", 2, 2)])
    for model, batch, steps in presets:
        base = model_figures(model, "base", batch, steps)
        full = model_figures(model, "m_ca", batch, steps)
        full["forward_fraction_of_matmul"] = full["forward_gflops_per_s"] / results["matmul_gflops"]
        results[model] = {
            "m_ca": full, "base": base,
            "m_ca_over_base_train_step": full["train_step_s"] / base["train_step_s"],
        }
    cpu = results["vitmemad_cpu"]["m_ca"]
    loader = loader_images_per_s(cpu["image_size"], cpu["batch"])
    results["loader"] = {"demo_images_per_s": loader, "over_model_train_images_per_s": loader / cpu["train_images_per_s"]}

    import bench_metrics

    results["metrics"] = bench_metrics.run(repeats=1 if quick else 3)
    from vitmemad.export import benchmark_inference

    results["inference"] = benchmark_inference("vitmemad_cpu", batch_size=8, rounds=3 if quick else 10)
    return results


def print_summary(r: dict[str, Any]) -> None:
    print(f"matmul fp32 2048^2: {r['matmul_gflops']:.1f} GFLOP/s ({r['threads']} threads)")
    for model in ("vitmemad_cpu", "vitmemad_paper"):
        if model not in r:
            continue
        m = r[model]["m_ca"]
        print(
            f"{model:15s} train {m['train_images_per_s']:7.2f} img/s | infer {m['infer_images_per_s']:7.2f} img/s | "
            f"forward {m['forward_gflops_per_s']:6.1f} GFLOP/s = {m.get('forward_fraction_of_matmul', 0):.2f} x matmul | "
            f"+M+CA/Base step {r[model]['m_ca_over_base_train_step']:.3f} | peak RSS {m['peak_rss_mib']:.0f} MiB"
        )
    print(f"demo loader: {r['loader']['demo_images_per_s']:.0f} img/s = {r['loader']['over_model_train_images_per_s']:.1f} x training")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "bench" / "results.json"))
    parser.add_argument("--quick", action="store_true", help="CPU preset only, fewer repeats")
    args = parser.parse_args(argv)
    results = run(quick=args.quick)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=float) + "\n")
    print_summary(results)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
