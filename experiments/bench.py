"""`make bench`: speed and memory figures measured side by side in one run -> bench/results.json.

    python experiments/bench.py [--out bench/results.json] [--quick] [--no-compile] [--compile-paper]

Every figure is measured in this one run, and the figures that are compared are timed in interleaved
rounds (A B C A B C ..., best of each), so that a machine whose load changes (other jobs) affects them
alike: compare the ratios, not the absolute times.

Figures (see README "Benchmarks"):
- ``matmul``: dense fp32 2048x2048 matmul GFLOP/s, this machine's yardstick; measured at the start, in
  every timing round of the presets and at the end; the best of all is the limit the ratios use.
- per preset (``vitmemad_cpu``, ``vitmemad_paper``), each in a fresh child process:
  - training-step and inference (image -> anomaly map) images/s; forward-pass images/s;
  - FLOPs of the forward pass and of the training step (forward + backward of the loss), counted with
    ``torch.utils.flop_counter`` (the CPU fused-attention kernels added, which it does not count), and the
    achieved GFLOP/s of each as a fraction of the matmul rate;
  - step time of +M+CA over Base (memory module + coordinate attention);
  - peak resident memory (RSS) of inference and of training, measured first in the fresh process: the
    kernel's high-water mark (/proc/self/status VmHWM), reset to the current RSS (/proc/self/clear_refs)
    before each phase; reported as the peak and as the extra over the RSS after building the model,
    optimiser and batch. tracemalloc would miss torch's allocations;
  - channels_last: the ViT hands the decoder a channels_last (NHWC) feature map (a reshape of the tokens),
    so its transposed convolutions run in that layout; timed against the same model with the map made
    NCHW-contiguous, in the same rounds (time ratios channels_last / NCHW, and the largest output difference);
  - torch.compile (the ``compile`` key of conf/train.yaml) on the training step: compile time and
    compiled/eager step-time ratio, with the loss difference; CPU preset only by default (compiling
    the paper preset takes minutes on 2 cores: ``--compile-paper``). A failure is recorded, not raised;
  - whether timm's attention blocks run torch's fused scaled_dot_product_attention.
- ``loader``: data-loader images/s of the demo and, when ``../shared/data/mvtec/bottle`` exists, of
  MVTec bottle at 128 and 384 px: first epoch (decode + resize, which also fills the cache) and cached
  epochs, against the matching preset's training images/s.
- ``metrics``: exact PRO against the numpy port of the official algorithm (experiments/bench_metrics.py).
- ``inference``: PyTorch against ONNX Runtime (vitmemad.export.benchmark_inference).
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "experiments"))
sys.path.insert(0, str(REPO))

from gpu_check import count_flops, rss_mib  # noqa: E402  (FLOPs, with the CPU fused-attention kernels counted)
SHARED = Path(os.environ.get("VITMEMAD_SHARED", REPO.parent / "shared"))
MVTEC_ROOT = SHARED / "data" / "mvtec"

# (preset, batch, timing rounds): a few steps suffice for the paper preset on a CPU.
PRESETS = {"vitmemad_cpu": (16, 5), "vitmemad_paper": (2, 3)}
MATMUL_N = 2048


# ------------------------------------------------------------------ helpers
def matmul_gflops(n: int = MATMUL_N, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    return 2 * n**3 / min(_timed(lambda: a @ b) for _ in range(repeats)) / 1e9


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def contention_probe(threads: int) -> dict[str, Any]:
    """Many small parallel ops on 1 thread and on ``threads``: where other jobs hold the cores, every parallel
    region waits for a descheduled thread and ``threads`` is slower than 1 (speedup < 1)."""
    x = torch.randn(192, 192)

    def work() -> None:
        for _ in range(300):
            x @ x

    times = {}
    for n in (1, threads, 1, threads):
        torch.set_num_threads(n)
        times[n] = min(times.get(n, float("inf")), _timed(work))
    torch.set_num_threads(threads)
    return {"threads": threads, "seconds_1_thread": times[1], "seconds_n_threads": times[threads],
            "speedup": times[1] / times[threads], "contended": threads > 1 and times[threads] > times[1]}


def interleaved_best(fns: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Best time of each callable over ``rounds`` rounds that run them one after another."""
    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            best[name] = min(best[name], _timed(fn))
    return best




def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def preset_config(model: str, ablation: str) -> dict[str, Any]:
    from vitmemad.config import compose, to_plain

    cfg = compose("train", [f"model={model}", f"ablation={ablation}"])
    cfg.paths.output_dir = "/tmp/unused"
    return to_plain(cfg)


def preset_module(model: str, ablation: str) -> torch.nn.Module:
    from vitmemad.build import build_module

    return build_module(preset_config(model, ablation)["model"])


def loss_terms(module: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The training loss terms of a batch rebuilt from itself (no corruption)."""
    return module.loss.terms(x, module.net(x))


def fused_attention_report(model: torch.nn.Module) -> dict[str, Any]:
    from timm.layers import use_fused_attn

    flags = [bool(m.fused_attn) for m in model.modules() if hasattr(m, "fused_attn")]
    return {"timm_use_fused_attn": bool(use_fused_attn()), "attention_modules": len(flags),
            "fused": sum(flags), "all_fused": bool(flags) and all(flags)}


def nchw_decoder(module: torch.nn.Module) -> torch.nn.Module:
    """The decoder fed an NCHW-contiguous feature map: the ViT's own map is channels_last (a reshape of the
    (B, N, D) tokens), so the decoder's convolutions already run in that layout; this is the alternative."""
    module.net.decoder.register_forward_pre_hook(lambda _m, args: (args[0].contiguous(),))
    return module


# ------------------------------------------------------------------ one preset (child process)
class Variant:
    """A module with its own optimiser, a fixed batch and the callables that are timed."""

    def __init__(self, module, x: torch.Tensor) -> None:
        self.module, self.x = module, x
        self.opt = torch.optim.Adam(module.parameters(), lr=1e-4)
        self.last_loss = float("nan")

    def train_step(self) -> None:
        self.module.train()
        terms = loss_terms(self.module, self.x)
        self.opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        self.opt.step()
        self.last_loss = float(terms["loss"].detach())

    def forward(self) -> None:
        self.module.eval()
        with torch.inference_mode():
            self.module.net(self.x)

    def infer(self) -> None:
        self.module.eval()
        with torch.inference_mode():
            self.module.score(self.x)


def preset_figures(model: str, batch: int, rounds: int, threads: int, compile_model: bool) -> dict[str, Any]:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = preset_config(model, "m_ca")
    size = int(cfg["data"]["image_size"])
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    full = Variant(preset_module(model, "m_ca"), x)
    out: dict[str, Any] = {"model": model, "image_size": size, "batch": batch, "rounds": rounds,
                           "parameters_M": sum(p.numel() for p in full.module.parameters()) / 1e6}

    # 1. peak memory, first, in this fresh process (inference before training: training peaks higher)
    mem: dict[str, Any] = {"method": "VmHWM reset by /proc/self/clear_refs" if reset_peak_rss()
                           else "ru_maxrss (lifetime peak: the inference figure is an upper bound)",
                           "rss_after_build_MiB": rss_mib()}
    reset_peak_rss()
    full.infer()
    mem["inference_peak_MiB"] = rss_mib("VmHWM")
    reset_peak_rss()
    full.train_step()
    full.train_step()  # the second step holds Adam's state from the start
    mem["train_peak_MiB"] = rss_mib("VmHWM")
    mem["inference_extra_MiB"] = mem["inference_peak_MiB"] - mem["rss_after_build_MiB"]
    mem["train_extra_MiB"] = mem["train_peak_MiB"] - mem["rss_after_build_MiB"]
    out["memory"] = mem

    # 2. FLOPs (model forward; training step = forward + backward of the loss; optimiser excluded)
    full.module.eval()
    with torch.inference_mode():
        out["forward_gflop"] = count_flops(lambda: full.module.net(x)) / 1e9
    full.module.train()
    out["train_step_gflop"] = count_flops(lambda: loss_terms(full.module, x)["loss"].backward()) / 1e9
    full.opt.zero_grad(set_to_none=True)
    out["fused_attention"] = fused_attention_report(full.module.net)

    # 3. variants timed in the same rounds: Base (no M, no CA) and the decoder fed an NCHW map
    torch.manual_seed(0)
    base = Variant(preset_module(model, "base"), x)
    cl = Variant(nchw_decoder(copy.deepcopy(full.module)), x)
    cl.opt.load_state_dict(full.opt.state_dict())
    full.module.eval(), cl.module.eval()
    with torch.inference_mode():
        ref = full.module.net(x)["reconstruction"]
        cl_diff = float((cl.module.net(x)["reconstruction"] - ref).abs().max())
    base.train_step()
    cl.train_step()  # warm-up (allocations, oneDNN primitives)
    a, b = torch.randn(MATMUL_N, MATMUL_N), torch.randn(MATMUL_N, MATMUL_N)
    train = interleaved_best({"m_ca": full.train_step, "base": base.train_step, "m_ca_nchw_decoder": cl.train_step,
                              "matmul": lambda: a @ b}, rounds)
    fwd = interleaved_best({"m_ca": full.forward, "base": base.forward, "m_ca_nchw_decoder": cl.forward,
                            "matmul": lambda: a @ b}, rounds + 1)
    infer = interleaved_best({"m_ca": full.infer, "base": base.infer}, rounds + 1)
    out["matmul_gflops_in_rounds"] = 2 * MATMUL_N**3 / min(train["matmul"], fwd["matmul"]) / 1e9
    out["train_step_s"] = {k: v for k, v in train.items() if k != "matmul"}
    out["forward_s"] = {k: v for k, v in fwd.items() if k != "matmul"}
    out["infer_s"] = infer
    out["train_images_per_s"] = batch / train["m_ca"]
    out["infer_images_per_s"] = batch / infer["m_ca"]
    out["forward_images_per_s"] = batch / fwd["m_ca"]
    out["base_train_images_per_s"] = batch / train["base"]
    out["forward_gflops_per_s"] = out["forward_gflop"] / fwd["m_ca"]
    out["train_gflops_per_s"] = out["train_step_gflop"] / train["m_ca"]
    out["m_ca_over_base_train_step"] = train["m_ca"] / train["base"]
    out["m_ca_over_base_forward"] = fwd["m_ca"] / fwd["base"]
    out["m_ca_over_base_infer"] = infer["m_ca"] / infer["base"]
    out["channels_last"] = {"train_step_ratio": train["m_ca"] / train["m_ca_nchw_decoder"],
                            "forward_ratio": fwd["m_ca"] / fwd["m_ca_nchw_decoder"],
                            "max_abs_diff_reconstruction": cl_diff}
    del cl, base

    # 4. torch.compile of the model (as the `compile` key does) on the training step, against eager
    out["compile"] = compile_figures(full, rounds) if compile_model else {"skipped": "not requested (--compile-paper)"}
    return out


def compile_figures(eager: Variant, rounds: int) -> dict[str, Any]:
    compiled = Variant(copy.deepcopy(eager.module), eager.x)
    compiled.opt.load_state_dict(eager.opt.state_dict())
    res: dict[str, Any] = {}
    try:
        compiled.module.net.compile()  # in place, as vitmemad.train applies `compile: true`
        start = time.perf_counter()
        compiled.train_step()  # compiles forward and backward
        res["first_step_s"] = time.perf_counter() - start
        eager.train_step()  # same weights and state before this step: the losses should agree
        res["first_step_loss_abs_diff"] = abs(compiled.last_loss - eager.last_loss)
        compiled.train_step()  # a BatchNorm/eval switch may still recompile: keep it out of the timing
        eager.train_step()
        t = interleaved_best({"eager": eager.train_step, "compiled": compiled.train_step}, rounds)
        res.update(ok=True, eager_step_s=t["eager"], compiled_step_s=t["compiled"],
                   compiled_over_eager_train_step=t["compiled"] / t["eager"],
                   compile_s=res["first_step_s"] - t["compiled"])
    except Exception as exc:  # noqa: BLE001 - the reason is the figure
        res.update(ok=False, error=f"{type(exc).__name__}: {str(exc)[:800]}")
    return res


def run_child(args: dict[str, Any]) -> dict[str, Any]:
    """Run ``preset_figures`` in a fresh process so that its memory figures are its own."""
    proc = subprocess.run([sys.executable, __file__, "--_child", json.dumps(args)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0:
        return {"error": f"child failed ({proc.returncode}): {proc.stderr[-3000:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ data loading
def loader_figures(dm) -> dict[str, Any]:
    """Train-loader images/s: the first epoch decodes + resizes (and fills the cache), later ones are cached."""
    start = time.perf_counter()
    dm.setup("fit")
    setup_s = time.perf_counter() - start
    n = len(dm.train_dataset)

    def epoch() -> None:
        for _ in dm.train_dataloader():
            pass

    first = _timed(epoch)
    cached = min(_timed(epoch) for _ in range(2))
    return {"images": n, "image_size": dm.image_size, "batch": dm.batch_size, "setup_s": setup_s,
            "first_epoch_images_per_s": n / first, "cached_epoch_images_per_s": n / cached,
            "cache_speedup": first / cached}


def loader_section(results: dict[str, Any]) -> dict[str, Any]:
    from vitmemad.data import DemoDataModule, MVTecDataModule

    def vs_model(fig: dict[str, Any], preset: str) -> dict[str, Any]:
        train = results.get(preset, {}).get("train_images_per_s")
        if train:
            fig["model_preset"] = preset
            fig["model_train_images_per_s"] = train
            fig["first_epoch_over_model"] = fig["first_epoch_images_per_s"] / train
            fig["cached_over_model"] = fig["cached_epoch_images_per_s"] / train
        return fig

    batch_cpu, batch_paper = PRESETS["vitmemad_cpu"][0], 8  # the paper preset's training batch
    out: dict[str, Any] = {"demo_128": vs_model(loader_figures(DemoDataModule(image_size=128, batch_size=batch_cpu)),
                                                "vitmemad_cpu")}
    if (MVTEC_ROOT / "bottle" / "train" / "good").is_dir():
        out["mvtec_bottle_128"] = vs_model(
            loader_figures(MVTecDataModule(root=MVTEC_ROOT, category="bottle", image_size=128, batch_size=batch_cpu)),
            "vitmemad_cpu")
        out["mvtec_bottle_384"] = vs_model(
            loader_figures(MVTecDataModule(root=MVTEC_ROOT, category="bottle", image_size=384, batch_size=batch_paper)),
            "vitmemad_paper")
    else:
        out["mvtec"] = f"skipped: {MVTEC_ROOT / 'bottle'} not found"
    return out


# ------------------------------------------------------------------ the whole run
def run(quick: bool = False, compile_cpu: bool = True, compile_paper: bool = False,
        threads: int | None = None) -> dict[str, Any]:
    import timm

    start = time.perf_counter()
    cores = os.cpu_count() or 1
    probe = contention_probe(int(threads or cores))
    if threads:
        choice = "--threads"
    elif probe["contended"]:  # n threads slower than one: every figure would measure the other jobs
        threads, choice = 1, f"1 of {cores}: the contention probe found {cores} threads slower than one"
    else:
        threads, choice = cores, "one per core"
    torch.set_num_threads(int(threads))
    results: dict[str, Any] = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": {"threads": threads, "threads_choice": choice, "cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
                    "load_average_start": os.getloadavg()},
        "quick": quick,
        "contention_probe": {"start": probe},
    }
    matmul = [matmul_gflops()]
    presets = ["vitmemad_cpu"] + ([] if quick else ["vitmemad_paper"])
    for model in presets:
        batch, rounds = PRESETS[model]
        compile_model = compile_cpu if model == "vitmemad_cpu" else compile_paper
        results[model] = run_child({"model": model, "batch": batch, "rounds": 2 if quick else rounds,
                                    "threads": threads, "compile_model": compile_model})
        matmul.append(results[model].get("matmul_gflops_in_rounds", 0.0))
    results["loader"] = loader_section(results)

    import bench_metrics

    results["metrics"] = bench_metrics.run(repeats=1 if quick else 3, oracle=not quick)
    from vitmemad.export import benchmark_inference

    results["inference"] = benchmark_inference("vitmemad_cpu", batch_size=8, rounds=3 if quick else 10,
                                               threads=threads)
    matmul.append(matmul_gflops())
    results["matmul"] = {"n": MATMUL_N, "gflops_measured": matmul, "gflops": max(matmul)}
    limit = results["matmul"]["gflops"]
    for model in presets:
        r = results[model]
        if "forward_gflops_per_s" in r:  # against the best matmul of the whole run: the conservative ratio
            r["forward_fraction_of_matmul"] = r["forward_gflops_per_s"] / limit
            r["train_fraction_of_matmul"] = r["train_gflops_per_s"] / limit
    results["machine"]["load_average_end"] = os.getloadavg()
    results["contention_probe"]["end"] = contention_probe(cores)
    torch.set_num_threads(int(threads))
    results["seconds"] = time.perf_counter() - start
    results["targets"] = targets(results)
    return results


def targets(r: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, met or not (a benchmark's verdict, never a test's)."""
    paper = r.get("vitmemad_paper", {})

    def check(value: float | None, op: str, limit: float) -> dict[str, Any]:
        met = None if value is None else (value >= limit if op == ">=" else value <= limit)
        return {"value": value, "target": f"{op} {limit}", "met": met}

    return {
        "paper_forward_fraction_of_matmul": check(paper.get("forward_fraction_of_matmul"), ">=", 0.6),
        "paper_m_ca_over_base_train_step": check(paper.get("m_ca_over_base_train_step"), "<=", 1.10),
        "pro_exact_speedup": check(r["metrics"]["pro_exact"]["speedup"], ">=", 5.0),
        "loader_not_bottleneck": check(min((v["first_epoch_over_model"] for v in r["loader"].values()
                                            if isinstance(v, dict) and "first_epoch_over_model" in v), default=None),
                                       ">=", 1.0),
    }


def print_summary(r: dict[str, Any]) -> None:
    for when, p in r["contention_probe"].items():
        print(f"contention probe ({when}): {p['threads']} threads {p['speedup']:.2f}x one thread"
              + (" -> CONTENDED: other jobs hold the cores; absolute figures are low" if p["contended"] else ""))
    print(f"matmul fp32 {MATMUL_N}^2: {r['matmul']['gflops']:.1f} GFLOP/s best of "
          f"{', '.join(f'{g:.0f}' for g in r['matmul']['gflops_measured'])} ({r['machine']['threads']} threads)")
    for model in ("vitmemad_cpu", "vitmemad_paper"):
        m = r.get(model)
        if not m:
            continue
        if "error" in m:
            print(f"{model}: {m['error']}")
            continue
        c = m["compile"]
        comp = (f"compiled/eager step {c['compiled_over_eager_train_step']:.2f} (compile {c['compile_s']:.0f} s)"
                if c.get("ok") else c.get("error") or c.get("skipped"))
        print(f"{model} (batch {m['batch']}): train {m['train_images_per_s']:.2f} img/s "
              f"({m['train_fraction_of_matmul']:.2f} x matmul) | infer {m['infer_images_per_s']:.2f} img/s | "
              f"forward {m['forward_gflops_per_s']:.1f} GFLOP/s = {m['forward_fraction_of_matmul']:.2f} x matmul | "
              f"+M+CA/Base step {m['m_ca_over_base_train_step']:.3f} | peak RSS train {m['memory']['train_peak_MiB']:.0f} "
              f"MiB (+{m['memory']['train_extra_MiB']:.0f}), infer {m['memory']['inference_peak_MiB']:.0f} MiB | "
              f"channels_last/NCHW decoder step {m['channels_last']['train_step_ratio']:.2f} | {comp}")
    for name, v in r["loader"].items():
        if isinstance(v, dict):
            print(f"loader {name}: first epoch {v['first_epoch_images_per_s']:.0f} img/s, cached "
                  f"{v['cached_epoch_images_per_s']:.0f} img/s = {v.get('cached_over_model', float('nan')):.0f} x "
                  f"{v.get('model_preset', '?')} training ({v.get('first_epoch_over_model', float('nan')):.0f} x uncached)")
        else:
            print(f"loader: {v}")
    pe = r["metrics"]["pro_exact"]
    print(f"PRO exact {pe['fast_seconds']:.2f} s vs reference {pe['reference_seconds']:.2f} s = {pe['speedup']:.1f}x")
    inf = r["inference"]
    print(f"ONNX Runtime / PyTorch inference: {inf['onnxruntime_speedup']:.2f}")
    for name, t in r["targets"].items():
        print(f"target {name}: {t['value'] if t['value'] is None else round(t['value'], 3)} {t['target']} -> "
              f"{'met' if t['met'] else 'NOT met' if t['met'] is not None else 'n/a'}")
    print(f"total {r['seconds']:.0f} s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "bench" / "results.json"))
    parser.add_argument("--quick", action="store_true", help="CPU preset only, fewer repeats (a check of the script)")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (CPU preset)")
    parser.add_argument("--compile-paper", action="store_true", help="also compile the paper preset (minutes)")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads (default: one per core, or 1 when the contention probe finds "
                             "the cores busy with other jobs)")
    parser.add_argument("--_child", dest="child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(preset_figures(**json.loads(args.child)), default=float))
        return
    results = run(quick=args.quick, compile_cpu=not args.no_compile, compile_paper=args.compile_paper,
                  threads=args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=float) + "\n")
    print_summary(results)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
