"""The bench's measuring tools: FLOP counts, resident memory, interleaved timing and the matmul yardsticks.

Only torch and the standard library: experiments/gpu_check.py imports this on a bare GPU machine (no Hydra,
Lightning or W&B), and importing it must stay that light.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

import torch

from vitmemad.trainer_precision import cpu_bf16_supported

MATMUL_N = 2048
#: without avx512_bf16 or AMX, bf16 matmuls are emulated, some 500x slower (a 2048^2 one took 44 s on one thread):
#: there the bf16 yardstick is timed at this size, so the bench finishes; its n is recorded beside the figure
EMULATED_BF16_MATMUL_N = 256


def bf16_matmul_n() -> int:
    return MATMUL_N if cpu_bf16_supported() else EMULATED_BF16_MATMUL_N


# ------------------------------------------------------------------ FLOPs
def flop_mapping() -> dict[Any, Any]:
    """FLOP formulas for the CPU fused-attention kernels, which FlopCounterMode does not count."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    mapping: dict[Any, Any] = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        # the counter passes shapes in place of tensors
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = (
            lambda q, k, v, *a, out_shape=None, **kw: fc.sdpa_flop_count(q, k, v))
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = (
            lambda g, q, k, v, *a, out_shape=None, **kw: fc.sdpa_backward_flop_count(g, q, k, v))
    return mapping


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of ``fn()`` (multiply-adds count 2), the fused CPU attention kernels included."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping=flop_mapping()) as counter:
        fn()
    return int(counter.get_total_flops())


# ------------------------------------------------------------------ memory
def rss_mib(field: str = "VmRSS") -> float:
    """Current (VmRSS) or peak (VmHWM) resident memory of this process in MiB (Linux /proc; else the lifetime peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so that the next peak is the next phase's; False where not."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# ------------------------------------------------------------------ timing
def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved_best(fns: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Best time of each callable over ``rounds`` rounds that run them one after another (A B C A B C ...), so
    that a change of machine load hits every callable alike."""
    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            best[name] = min(best[name], timed(fn))
    return best


def contention_probe(threads: int) -> dict[str, Any]:
    """Many small parallel ops on 1 thread and on ``threads``: where other jobs hold the cores, every parallel
    region waits for a descheduled thread and ``threads`` is slower than 1 (speedup < 1)."""
    x = torch.randn(192, 192)

    def work() -> None:
        for _ in range(300):
            x @ x

    times: dict[int, float] = {}
    for n in (1, threads, 1, threads):
        torch.set_num_threads(n)
        times[n] = min(times.get(n, float("inf")), timed(work))
    torch.set_num_threads(threads)
    return {"threads": threads, "seconds_1_thread": times[1], "seconds_n_threads": times[threads],
            "speedup": times[1] / times[threads], "contended": threads > 1 and times[threads] > times[1]}


# ------------------------------------------------------------------ the matmul yardsticks
def matmul_callables(n: int = MATMUL_N) -> dict[str, Callable[[], Any]]:
    """Dense square matmuls, one per precision: fp32 tensors (n x n), and bf16 tensors (``bf16_matmul_n()``
    square: the bf16 limit, what autocast's matmuls reach at best, without the casts of their fp32 inputs).
    Keys ``matmul`` and ``matmul_bf16``."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    m = bf16_matmul_n()
    a16, b16 = a[:m, :m].bfloat16(), b[:m, :m].bfloat16()
    a @ b, a16 @ b16  # warm-up (oneDNN primitives)
    return {"matmul": lambda: a @ b, "matmul_bf16": lambda: a16 @ b16}


def gflops_of_matmul(seconds: float, n: int = MATMUL_N) -> float:
    return 2 * n**3 / seconds / 1e9


def matmul_rates(n: int = MATMUL_N, rounds: int = 5) -> dict[str, float]:
    """GFLOP/s of the fp32 and the bf16 matmul, timed in interleaved rounds (best of each)."""
    best = interleaved_best(matmul_callables(n), rounds)
    return {"fp32": gflops_of_matmul(best["matmul"], n),
            "bf16": gflops_of_matmul(best["matmul_bf16"], bf16_matmul_n())}


# ------------------------------------------------------------------ where the source tree and its data are
#: the project root of a source checkout (the bench runs from one); the data and oracle live beside it in shared/
REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("VITMEMAD_SHARED", REPO.parent / "shared"))


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child ``python -m vitmemad...``: this same package first on its path."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}
