"""`make bench`: speed and memory figures measured side by side in one run -> bench/results.json.

    python -m vitmemad.bench [--out bench/results.json] [--quick] [--no-compile] [--compile-paper] ...
    python experiments/bench.py ...           # the same (kept at its old path)

Every figure is measured in this one run, and the figures that are compared are timed in interleaved rounds
(A B C A B C ..., best of each), so that a machine whose load changes (other jobs) affects them alike: compare
the ratios, not the absolute times. "bf16" is what ``trainer.precision=bf16-mixed`` does on a CPU:
``torch.autocast("cpu", dtype=torch.bfloat16)`` around the forward pass and the loss, fp32 weights, backward
and Adam outside it.

Figures (see README "Benchmarks"):
- ``contention_probe``: many small matmuls on 1 thread and on one per core, at the ``start``, ``after_<preset>``
  and at the ``end``; where one per core is slower (``contended``), other jobs held the cores: figures measured
  then are low and their ratios noisy. ``machine.threads``: 1 when the start probe finds contention.
- ``matmul``: dense 2048x2048 matmul GFLOP/s in fp32 (``gflops_measured``, peak ``gflops``) and in bf16 (bf16
  tensors: ``bf16_gflops_measured``, peak ``bf16_gflops``), this machine's yardsticks, interleaved with each other;
  measured at the start, in every timing round of the presets and at the end; the best of all is each
  precision's peak, which the fractions use. ``bf16_over_fp32``: the ratio of the peaks.
- per preset (``vitmemad_cpu``, ``vitmemad_paper``, and ``vitmemad_real``, the model of ``experiment=cpu_real`` at
  its batch 8 and 128 px), each in a fresh child process:
  - training-step and inference (image -> anomaly map) images/s; forward-pass images/s;
  - FLOPs of the forward pass and of the training step (forward + backward of the loss), counted with
    ``torch.utils.flop_counter`` (the CPU fused-attention kernels added, which it does not count), and the
    achieved GFLOP/s of each as a fraction of the fp32 matmul peak (``forward_fraction_of_matmul``,
    ``train_fraction_of_matmul``);
  - ``precision``: the +M+CA model in ``fp32`` and in ``bf16``, timed in the same interleaved rounds (with both
    matmuls, ``matmul_gflops_in_rounds`` and ``matmul_bf16_gflops_in_rounds``); each has ``train_step_s``
    (forward + backward + Adam), ``forward_s``, ``infer_s``, images/s, ``train_gflops_per_s`` and
    ``forward_gflops_per_s`` (the same FLOP counts: autocast changes precision, not work), ``peak_gflops`` (its
    own precision's matmul peak) and ``train_fraction_of_peak`` / ``forward_fraction_of_peak`` of it; fp32 also
    has ``*_fraction_of_bf16_peak`` (against this CPU's true limit). ``bf16_over_fp32_train_step``,
    ``bf16_over_fp32_forward``, ``bf16_over_fp32_infer``: time ratios (< 1: bf16 is faster).
    ``bf16_max_abs_diff_reconstruction``: bf16 against fp32 on the same weights;
  - step time of +M+CA over Base (memory module + coordinate attention);
  - peak resident memory (RSS) of inference and of training (fp32), measured first in the fresh process: the
    kernel's high-water mark (/proc/self/status VmHWM), reset to the current RSS (/proc/self/clear_refs)
    before each phase; reported as the peak and as the extra over the RSS after building the model,
    optimiser and batch. tracemalloc would miss torch's allocations;
  - ``channels_last``: the ViT hands the decoder a channels_last (NHWC) feature map (a reshape of the tokens),
    so its transposed convolutions run in that layout; timed against the same model with the map made
    NCHW-contiguous, in the same rounds: time ratios channels_last / NCHW in fp32 (``train_step_ratio``,
    ``forward_ratio``) and in bf16 (``bf16_train_step_ratio``, ``bf16_forward_ratio``), and the largest output
    difference;
  - ``compile`` (fp32) and ``compile_bf16``: torch.compile (the ``compile`` key of conf/train.yaml) on the
    training step: compile time and compiled/eager step-time ratio, with the loss difference; CPU preset only
    by default (compiling the paper preset takes minutes on 2 cores: ``--compile-paper``). A failure is
    recorded, not raised;
  - whether timm's attention blocks run torch's fused scaled_dot_product_attention;
  - ``seconds``: the wall time of the preset's child process.
- ``vitmemad_real.profile``: torch.profiler (CPU) of fp32 and bf16 training steps (alternating rounds, the
  least-time round of each kept): per precision ``top_ops`` (the 10 ops with the most self CPU time: ``op``,
  ``self_ms``, ``share``, ``calls``; bf16's also ``fp32_self_ms``, the same op in the fp32 step),
  ``category_ms`` and ``category_share`` of the self time in matmul/linear/attention, conv, transposed conv,
  layer norm, softmax, BatchNorm, loss + SSIM, Adam, autocast's dtype casts and other
  (vitmemad.bench.step_profile says how ops are assigned); ``bf16_over_fp32_by_category``; and
  ``not_faster_under_bf16``: the categories with >= 2 % of the bf16 step that are not >= 10 % faster than fp32.
- ``vitmemad_real.attention``: torch's fused attention, forward + backward, at the shape of the model's first
  attention block (``shape_bhnd``), in fp32 and bf16 on the flash kernel and on the math path, interleaved
  (``forward_backward_ms``; ``bf16_over_fp32_flash``, ``bf16_over_fp32_math``, ``bf16_math_over_bf16_flash``).
- ``bf16``: the bf16 findings at a glance: the matmul peak ratio; per preset the bf16/fp32 time ratios, the
  bf16 fractions of the bf16 peak, channels_last / NCHW and compiled / eager in both precisions; and from the
  profile, ``not_faster_under_bf16``, ``bf16_over_fp32_by_category``, ``bf16_step_share_by_category`` and the
  attention kernel's ``attention_bf16_over_fp32_flash``.
- ``loader``: data-loader images/s of the demo and, when ``../shared/data/mvtec/bottle`` exists, of
  MVTec bottle at 128 and 384 px: first epoch (decode + resize, which also fills the cache) and cached
  epochs, against the matching preset's training images/s.
- ``metrics``: exact PRO against the numpy port of the official algorithm (vitmemad.bench.metrics).
- ``inference``: PyTorch against ONNX Runtime (vitmemad.export.benchmark_inference).
- ``targets``: each target's value and whether it is met: ``paper_forward_fraction_of_matmul`` (the paper
  preset's fp32 forward pass >= 0.6 of the fp32 peak), the same stated against both peaks,
  ``paper_forward_fp32_fraction_of_fp32_matmul`` and ``paper_forward_bf16_fraction_of_bf16_matmul``;
  ``paper_m_ca_over_base_train_step`` <= 1.10; ``pro_exact_speedup`` >= 5; ``loader_not_bottleneck`` >= 1.

The module imports nothing heavy: ``vitmemad.bench.measure`` (FLOPs, RSS, timing) serves experiments/gpu_check.py
on a machine with only torch and timm.
"""
from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """Run the bench with command-line ``argv`` (default: sys.argv[1:]); see ``python -m vitmemad.bench --help``."""
    from .cli import main as cli_main

    return cli_main(argv)
