"""The whole bench run: threads, matmul peaks, the presets (each in a child process), loader, metrics, ONNX."""
from __future__ import annotations

import datetime as dt
import os
import platform
import time
from typing import Any, Sequence

import torch

from vitmemad.trainer_precision import cpu_bf16_features

from .measure import MATMUL_N, bf16_matmul_n, contention_probe, matmul_rates
from .preset import run_child
from .report import bf16_summary, targets
from .variants import PRESETS

#: the preset whose bf16 training step is profiled (the model of experiment=cpu_real)
PROFILED = "vitmemad_real"
TINY = ("debug=smoke",)
CORES = os.cpu_count() or 1


def choose_threads(threads: int | None) -> tuple[int, str, dict[str, Any]]:
    probe = contention_probe(int(threads or CORES))
    if threads:
        return threads, "--threads", probe
    if probe["contended"]:  # n threads slower than one: every figure would measure the other jobs
        return 1, f"1 of {CORES}: the contention probe found {CORES} threads slower than one", probe
    return CORES, "one per core", probe


def add_fractions(results: dict[str, Any], presets: Sequence[str]) -> None:
    """Achieved GFLOP/s as fractions of the best matmul of the whole run (the conservative ratio): fp32 figures of
    the fp32 peak (and of the bf16 peak, this CPU's true limit), bf16 figures of the bf16 peak."""
    peak32, peak16 = results["matmul"]["gflops"], results["matmul"]["bf16_gflops"]
    for model in presets:
        r = results[model]
        if "forward_gflops_per_s" not in r:
            continue
        for name, peak in (("fp32", peak32), ("bf16", peak16)):
            p = r["precision"][name]
            p["peak_gflops"] = peak
            p["train_fraction_of_peak"] = p["train_gflops_per_s"] / peak
            p["forward_fraction_of_peak"] = p["forward_gflops_per_s"] / peak
        fp32 = r["precision"]["fp32"]
        r["forward_fraction_of_matmul"] = fp32["forward_fraction_of_peak"]  # the first names of the same figures
        r["train_fraction_of_matmul"] = fp32["train_fraction_of_peak"]
        fp32["train_fraction_of_bf16_peak"] = fp32["train_gflops_per_s"] / peak16
        fp32["forward_fraction_of_bf16_peak"] = fp32["forward_gflops_per_s"] / peak16


def run(quick: bool = False, compile_cpu: bool = True, compile_paper: bool = False, threads: int | None = None,
        presets: Sequence[str] | None = None, rounds: int | None = None, batch: int | None = None,
        tiny: bool = False, presets_only: bool = False) -> dict[str, Any]:
    import timm

    start = time.perf_counter()
    threads, choice, probe = choose_threads(threads)
    torch.set_num_threads(int(threads))
    results: dict[str, Any] = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": {"threads": threads, "threads_choice": choice, "cpus": CORES,
                    "processor": platform.processor() or platform.machine(), "python": platform.python_version(),
                    "torch": torch.__version__, "timm": timm.__version__, "load_average_start": os.getloadavg(),
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_bf16_flags": cpu_bf16_features()},
        "quick": quick, "tiny": tiny,
        "contention_probe": {"start": probe},
    }
    rates = [matmul_rates()]
    presets = list(presets or (["vitmemad_cpu"] if quick else list(PRESETS)))
    for model in presets:
        _, preset_batch, preset_rounds = PRESETS[model]
        compile_model = {"vitmemad_cpu": compile_cpu, "vitmemad_paper": compile_paper}.get(model, False)
        child_start = time.perf_counter()
        results[model] = run_child({"model": model, "batch": batch or preset_batch,
                                    "rounds": rounds or (2 if quick else preset_rounds), "threads": threads,
                                    "compile_model": compile_model, "profile": model == PROFILED,
                                    "overrides": list(TINY if tiny else ())})
        results[model]["seconds"] = time.perf_counter() - child_start
        # did other jobs take the cores meanwhile? (then this preset's absolute figures are low, its ratios noisy)
        results["contention_probe"][f"after_{model}"] = contention_probe(CORES)
        torch.set_num_threads(int(threads))
        if "matmul_gflops_in_rounds" in results[model]:
            rates.append({"fp32": results[model]["matmul_gflops_in_rounds"],
                          "bf16": results[model]["matmul_bf16_gflops_in_rounds"]})
    if not presets_only:
        from vitmemad.export import benchmark_inference

        from . import metrics
        from .loader import loader_section

        results["loader"] = loader_section(results)
        results["metrics"] = metrics.run(repeats=1 if quick else 3, oracle=not quick)
        results["inference"] = benchmark_inference("vitmemad_cpu", batch_size=8, rounds=3 if quick else 10,
                                                   threads=threads)
    rates.append(matmul_rates())
    results["matmul"] = {"n": MATMUL_N, "bf16_n": bf16_matmul_n(), "gflops_measured": [r["fp32"] for r in rates],
                         "gflops": max(r["fp32"] for r in rates),
                         "bf16_gflops_measured": [r["bf16"] for r in rates],
                         "bf16_gflops": max(r["bf16"] for r in rates)}
    results["matmul"]["bf16_over_fp32"] = results["matmul"]["bf16_gflops"] / results["matmul"]["gflops"]
    add_fractions(results, presets)
    results["bf16"] = bf16_summary(results, presets)
    results["machine"]["load_average_end"] = os.getloadavg()
    results["contention_probe"]["end"] = contention_probe(CORES)
    torch.set_num_threads(int(threads))
    results["seconds"] = time.perf_counter() - start
    results["targets"] = targets(results)
    return results
