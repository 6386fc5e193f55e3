"""Where a training step's time goes: torch.profiler (CPU) of fp32 and bf16 steps, self CPU time by kind of op.

Each op's self time goes to one category. A forward op takes the category of the scope or op around it: the loss
(the ``bench::loss`` scope: L2, SSIM's Gaussian convolutions, entropy), Adam (``Optimizer.*``), a transposed
convolution (``aten::conv_transpose2d``), autocast's dtype casts, else the innermost named op (matmul/linear/
attention, conv, layer norm, softmax, BatchNorm). A backward op takes the category of the forward op that made
its autograd node (the profiler's sequence numbers link them), so SSIM's backward counts as the loss's.
"""
from __future__ import annotations

import re
from typing import Any, Iterable

import torch
from torch.profiler import ProfilerActivity, profile

from .measure import interleaved_best
from .variants import Variant

CATEGORIES = ("matmul_linear_attention", "conv", "transposed_conv", "layer_norm", "softmax", "batch_norm",
              "loss_ssim", "adam", "dtype_cast", "other")
OPS = {
    "matmul_linear_attention": ("aten::linear", "aten::matmul", "aten::mm", "aten::addmm", "aten::bmm",
                                "aten::baddbmm", "aten::scaled_dot_product_attention",
                                "aten::_scaled_dot_product_flash_attention_for_cpu", "aten::einsum"),
    "conv": ("aten::conv2d", "aten::convolution", "aten::_convolution", "aten::mkldnn_convolution"),
    "layer_norm": ("aten::layer_norm", "aten::native_layer_norm"),
    "softmax": ("aten::softmax", "aten::_softmax", "aten::log_softmax", "aten::_log_softmax"),
    "batch_norm": ("aten::batch_norm", "aten::_batch_norm_impl_index", "aten::native_batch_norm",
                   "aten::_native_batch_norm_legit", "aten::_native_batch_norm_legit_no_training"),
}
OP_CATEGORY = {op: cat for cat, ops in OPS.items() for op in ops}
CASTS = ("aten::to", "aten::_to_copy")
#: backward nodes whose name alone decides (the others follow their forward op)
BACKWARD = {"ToCopyBackward0": "dtype_cast", "NativeLayerNormBackward0": "layer_norm",
            "SoftmaxBackward0": "softmax", "NativeBatchNormBackward0": "batch_norm"}
BACKWARD_ROOT = "autograd::engine::evaluate_function: "


def _chain(event: Any) -> Iterable[Any]:
    while event is not None:
        yield event
        event = event.cpu_parent


def forward_category(chain: list[Any]) -> str:
    """The category of a forward op, from its chain of enclosing events (innermost first)."""
    names = [e.name for e in chain]
    if "bench::loss" in names:
        return "loss_ssim"
    if any(n.startswith("Optimizer.") for n in names):
        return "adam"
    if "aten::conv_transpose2d" in names:
        return "transposed_conv"
    for name in names:
        if name in CASTS:
            return "dtype_cast"
        if name in OP_CATEGORY:
            return OP_CATEGORY[name]
    return "other"


def assign(events: list[Any]) -> list[str]:
    """The category of each event, in order."""
    chains = [list(_chain(e)) for e in events]  # each event's chain, walked once
    by_seq: dict[int, tuple[int, str]] = {}  # sequence number -> (depth, category) of its deepest forward op
    for e, chain in zip(events, chains):
        if e.sequence_nr >= 0 and not chain[-1].name.startswith(BACKWARD_ROOT):
            if len(chain) >= by_seq.get(e.sequence_nr, (-1, ""))[0]:
                by_seq[e.sequence_nr] = (len(chain), forward_category(chain))
    cats = []
    for chain in chains:
        root = chain[-1]
        if root.name.startswith(BACKWARD_ROOT):
            node = root.name[len(BACKWARD_ROOT):]
            cats.append(BACKWARD.get(node) or by_seq.get(root.sequence_nr, (0, "other"))[1])
        else:
            cats.append(forward_category(chain))
    return cats


def categorize(events: list[Any]) -> dict[str, float]:
    """Self CPU time (ms) per category."""
    totals = dict.fromkeys(CATEGORIES, 0.0)
    for e, cat in zip(events, assign(events)):
        totals[cat] += e.self_cpu_time_total / 1e3
    return totals


def profiled_step(variant: Variant) -> profile:
    """One training step of ``variant`` under the profiler (its loss is in a ``bench::loss`` scope)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        variant.train_step()
    return prof


def _clean(name: str) -> str:
    return re.sub(r"\s+", " ", name)[:120]


def profile_figures(fp32: Variant, bf16: Variant, rounds: int = 2, top: int = 10) -> dict[str, Any]:
    """Profiles of fp32 and bf16 training steps in alternating rounds; of each precision, the round with the least
    profiled time is kept. Returns each step's top ops and category shares, and bf16/fp32 per
    category (near 1 or above: that kind of op gains nothing from bf16)."""
    best: dict[str, tuple[float, dict[str, float], Any]] = {}
    for _ in range(rounds):
        for name, variant in (("fp32", fp32), ("bf16", bf16)):
            prof = profiled_step(variant)
            cats = categorize(list(prof.events()))
            total = sum(cats.values())
            if name not in best or total < best[name][0]:
                best[name] = (total, cats, prof)
    out: dict[str, Any] = {"preset_batch": int(fp32.x.shape[0]), "rounds": rounds,
                           "method": "torch.profiler (CPU), self CPU time of one training step per category"}
    averages = {name: {a.key: a for a in prof.key_averages()} for name, (_, _, prof) in best.items()}
    for name, (total, cats, _) in best.items():
        ops = sorted(averages[name].values(), key=lambda a: a.self_cpu_time_total, reverse=True)[:top]
        out[name] = {"profiled_ms": total, "category_ms": cats,
                     "category_share": {k: v / total for k, v in cats.items()},
                     "top_ops": [{"op": _clean(a.key), "self_ms": a.self_cpu_time_total / 1e3,
                                  "share": a.self_cpu_time_total / 1e3 / total, "calls": a.count} for a in ops]}
    for entry in out["bf16"]["top_ops"]:  # the same op in the fp32 step
        same = averages["fp32"].get(entry["op"])
        entry["fp32_self_ms"] = same.self_cpu_time_total / 1e3 if same is not None else None
    total16 = best["bf16"][0]
    c32, c16 = best["fp32"][1], best["bf16"][1]
    out["bf16_over_fp32_by_category"] = {k: c16[k] / c32[k] for k in CATEGORIES if c32[k] > 0}
    out["bf16_over_fp32_profiled"] = total16 / best["fp32"][0]
    share = out["bf16"]["category_share"]
    # kinds of op that hold >= 2 % of the bf16 step and are not >= 10 % faster than in fp32
    out["not_faster_under_bf16"] = sorted(
        (k for k, r in out["bf16_over_fp32_by_category"].items() if r >= 0.9 and share.get(k, 0) >= 0.02),
        key=lambda k: -share[k])
    return out



def attention_figures(variant: Variant, rounds: int = 5) -> dict[str, Any]:
    """Fused attention (forward + backward) at the shape of the model's first attention block, in fp32 and bf16, on
    torch's flash kernel and on its math path, in interleaved rounds: the CPU flash kernel's bf16 backward can be
    slower than its fp32 one, which the profile shows as matmul/attention time that bf16 does not shrink."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    attn = next(m for m in variant.module.net.modules() if hasattr(m, "fused_attn") and hasattr(m, "num_heads"))
    seen: list[torch.Size] = []
    handle = attn.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape))
    variant.forward()
    handle.remove()
    batch, tokens, dim = seen[0]
    shape = (batch, attn.num_heads, tokens, dim // attn.num_heads)
    gen = torch.Generator().manual_seed(0)
    qkv = [torch.randn(shape, generator=gen) for _ in range(3)]

    def step(dtype: torch.dtype, backend: SDPBackend):
        q, k, v = (t.to(dtype).requires_grad_() for t in qkv)

        def run() -> None:
            with sdpa_kernel(backend):
                F.scaled_dot_product_attention(q, k, v).sum().backward()
        return run

    fns = {f"{p}_{b}": step(dt, backend) for p, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16))
           for b, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("math", SDPBackend.MATH))}
    for fn in fns.values():
        fn()  # warm-up
    best = interleaved_best(fns, rounds)
    return {"shape_bhnd": list(shape), "forward_backward_ms": {k: v * 1e3 for k, v in best.items()},
            "bf16_over_fp32_flash": best["bf16_flash"] / best["fp32_flash"],
            "bf16_over_fp32_math": best["bf16_math"] / best["fp32_math"],
            "bf16_math_over_bf16_flash": best["bf16_math"] / best["bf16_flash"]}
