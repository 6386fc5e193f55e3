"""The bench's verdicts (targets met or not, never a test's) and its printed summary."""
from __future__ import annotations

from typing import Any, Sequence

from .measure import MATMUL_N


def _check(value: float | None, op: str, limit: float) -> dict[str, Any]:
    met = None if value is None else (value >= limit if op == ">=" else value <= limit)
    return {"value": value, "target": f"{op} {limit}", "met": met}


def targets(r: dict[str, Any]) -> dict[str, Any]:
    """The speed targets: the paper preset's forward pass >= 0.6 of the matmul peak (fp32 of the fp32 peak, the
    old field, and bf16 of the bf16 peak), +M+CA's cost, exact PRO's speed-up, the loader's margin."""
    paper = r.get("vitmemad_paper", {})
    prec = paper.get("precision", {})
    fp32_forward = _check(prec.get("fp32", {}).get("forward_fraction_of_peak"), ">=", 0.6)
    out = {
        "paper_forward_fraction_of_matmul": fp32_forward,  # the first name of the fp32 target, kept for scripts
        "paper_forward_fp32_fraction_of_fp32_matmul": fp32_forward,
        "paper_forward_bf16_fraction_of_bf16_matmul": _check(
            prec.get("bf16", {}).get("forward_fraction_of_peak"), ">=", 0.6),
        "paper_m_ca_over_base_train_step": _check(paper.get("m_ca_over_base_train_step"), "<=", 1.10),
    }
    if "metrics" in r:
        out["pro_exact_speedup"] = _check(r["metrics"]["pro_exact"]["speedup"], ">=", 5.0)
    if "loader" in r:
        out["loader_not_bottleneck"] = _check(min((v["first_epoch_over_model"] for v in r["loader"].values()
                                                   if isinstance(v, dict) and "first_epoch_over_model" in v),
                                                  default=None), ">=", 1.0)
    return out


def bf16_summary(r: dict[str, Any], presets: Sequence[str]) -> dict[str, Any]:
    """bf16 against fp32 at a glance: the matmul peaks, each preset's time ratios, and what does not speed up."""
    out: dict[str, Any] = {"matmul_bf16_over_fp32_rate": r["matmul"]["bf16_over_fp32"], "presets": {}}
    for model in presets:
        m = r.get(model, {})
        if "precision" not in m:
            continue
        p, cl = m["precision"], m["channels_last"]
        out["presets"][model] = {
            "bf16_over_fp32_train_step": p["bf16_over_fp32_train_step"],
            "bf16_over_fp32_forward": p["bf16_over_fp32_forward"],
            "bf16_over_fp32_infer": p["bf16_over_fp32_infer"],
            "bf16_train_fraction_of_bf16_peak": p["bf16"]["train_fraction_of_peak"],
            "bf16_forward_fraction_of_bf16_peak": p["bf16"]["forward_fraction_of_peak"],
            "channels_last_over_nchw_decoder_train_step": {"fp32": cl["train_step_ratio"],
                                                           "bf16": cl["bf16_train_step_ratio"]},
            "compiled_over_eager_train_step": {
                k: m.get(key, {}).get("compiled_over_eager_train_step") for k, key in
                (("fp32", "compile"), ("bf16", "compile_bf16"))},
        }
        if "profile" in m:
            out["profiled_preset"] = model
            out["not_faster_under_bf16"] = m["profile"]["not_faster_under_bf16"]
            out["bf16_over_fp32_by_category"] = m["profile"]["bf16_over_fp32_by_category"]
            out["bf16_step_share_by_category"] = m["profile"]["bf16"]["category_share"]
            out["attention_bf16_over_fp32_flash"] = m.get("attention", {}).get("bf16_over_fp32_flash")
    return out


def _preset_line(model: str, m: dict[str, Any]) -> str:
    def comp(c: dict[str, Any]) -> str:
        return (f"{c['compiled_over_eager_train_step']:.2f} (compile {c['compile_s']:.0f} s)" if c.get("ok")
                else str(c.get("error") or c.get("skipped"))[:60])

    p = m["precision"]
    return (f"{model} (batch {m['batch']}): train {m['train_images_per_s']:.2f} img/s "
            f"({m['train_fraction_of_matmul']:.2f} x matmul) | infer {m['infer_images_per_s']:.2f} img/s | "
            f"forward {m['forward_gflops_per_s']:.1f} GFLOP/s = {m['forward_fraction_of_matmul']:.2f} x matmul | "
            f"+M+CA/Base step {m['m_ca_over_base_train_step']:.3f} | "
            f"peak RSS train {m['memory']['train_peak_MiB']:.0f} MiB (+{m['memory']['train_extra_MiB']:.0f}), "
            f"infer {m['memory']['inference_peak_MiB']:.0f} MiB | "
            f"channels_last/NCHW decoder step {m['channels_last']['train_step_ratio']:.2f} | "
            f"compiled/eager step {comp(m['compile'])}\n"
            f"  bf16: train {p['bf16']['train_images_per_s']:.2f} img/s = {p['bf16']['train_fraction_of_peak']:.2f} x "
            f"bf16 matmul, forward {p['bf16']['forward_fraction_of_peak']:.2f} x bf16 matmul | bf16/fp32 step "
            f"{p['bf16_over_fp32_train_step']:.2f}, forward {p['bf16_over_fp32_forward']:.2f} | fp32 forward "
            f"{p['fp32']['forward_fraction_of_bf16_peak']:.2f} x bf16 matmul | channels_last/NCHW bf16 step "
            f"{m['channels_last']['bf16_train_step_ratio']:.2f} | compiled/eager bf16 step {comp(m['compile_bf16'])}")


def print_summary(r: dict[str, Any]) -> None:
    for when, p in r["contention_probe"].items():
        print(f"contention probe ({when}): {p['threads']} threads {p['speedup']:.2f}x one thread"
              + (" -> CONTENDED: other jobs hold the cores; absolute figures are low" if p["contended"] else ""))
    mm = r["matmul"]
    bf16_n = mm.get("bf16_n", MATMUL_N)
    bf16_size = "" if bf16_n == MATMUL_N else f" (at {bf16_n}^2: emulated, no avx512_bf16 or AMX)"
    print(f"matmul {MATMUL_N}^2 ({r['machine']['threads']} threads): fp32 {mm['gflops']:.1f} GFLOP/s, bf16 "
          f"{mm['bf16_gflops']:.1f} GFLOP/s{bf16_size} ({mm['bf16_over_fp32']:.2f}x), best of "
          f"{', '.join(f'{g:.0f}' for g in mm['gflops_measured'])} / "
          f"{', '.join(f'{g:.0f}' for g in mm['bf16_gflops_measured'])}")
    for model in ("vitmemad_cpu", "vitmemad_paper", "vitmemad_real"):
        m = r.get(model)
        if m:
            print(f"{model}: {m['error']}" if "error" in m else _preset_line(model, m))
        if m and "profile" in m:
            prof = m["profile"]
            shares = ", ".join(f"{k} {v:.0%}" for k, v in sorted(prof["bf16"]["category_share"].items(),
                                                                  key=lambda kv: -kv[1]) if v >= 0.01)
            print(f"  profile of a bf16 step: {shares}; not faster under bf16: "
                  f"{', '.join(prof['not_faster_under_bf16']) or 'none'}")
        if m and "attention" in m:
            a = m["attention"]
            print(f"  fused attention {a['shape_bhnd']} forward + backward, bf16/fp32: flash kernel "
                  f"{a['bf16_over_fp32_flash']:.2f}, math path {a['bf16_over_fp32_math']:.2f}")
    for name, v in r.get("loader", {}).items():
        if isinstance(v, dict):
            print(f"loader {name}: first epoch {v['first_epoch_images_per_s']:.0f} img/s, cached "
                  f"{v['cached_epoch_images_per_s']:.0f} img/s = {v.get('cached_over_model', float('nan')):.0f} x "
                  f"{v.get('model_preset', '?')} training ({v.get('first_epoch_over_model', float('nan')):.0f} x "
                  "uncached)")
        else:
            print(f"loader: {v}")
    if "metrics" in r:
        pe = r["metrics"]["pro_exact"]
        print(f"PRO exact {pe['fast_seconds']:.2f} s vs reference {pe['reference_seconds']:.2f} s = "
              f"{pe['speedup']:.1f}x")
    if "inference" in r:
        print(f"ONNX Runtime / PyTorch inference: {r['inference']['onnxruntime_speedup']:.2f}")
    for name, t in r["targets"].items():
        print(f"target {name}: {t['value'] if t['value'] is None else round(t['value'], 3)} {t['target']} -> "
              f"{'met' if t['met'] else 'NOT met' if t['met'] is not None else 'n/a'}")
    print(f"total {r['seconds']:.0f} s")
