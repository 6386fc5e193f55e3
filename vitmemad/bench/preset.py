"""One preset's figures, measured in a fresh child process so that its memory figures are its own."""
from __future__ import annotations

import json
import subprocess
import sys
from typing import Any, Sequence

import torch

from .measure import bf16_matmul_n, child_env, count_flops, gflops_of_matmul, interleaved_best, matmul_callables, \
    reset_peak_rss, rss_mib
from .variants import Variant, compile_figures, fused_attention_report, loss_terms, nchw_decoder, preset_config, \
    preset_module


def memory_figures(full: Variant) -> dict[str, Any]:
    """Peak RSS of inference, then of training (which peaks higher), first in the fresh process."""
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
    return mem


#: fp32 figures of ``precision_figures`` that a preset's results also carry at the top level
FP32_TOP_LEVEL = ("train_images_per_s", "infer_images_per_s", "forward_images_per_s", "forward_gflops_per_s",
                  "train_gflops_per_s")


def precision_figures(out: dict[str, Any], train: dict[str, float], fwd: dict[str, float],
                      infer: dict[str, float]) -> dict[str, Any]:
    """fp32 and bf16 (autocast) times and rates of the +M+CA model, from the same interleaved rounds. The
    fractions of each precision's matmul peak are added by the caller, which knows the peaks of the whole run."""
    batch = out["batch"]
    res: dict[str, Any] = {}
    for name, key in (("fp32", "m_ca"), ("bf16", "m_ca_bf16")):
        res[name] = {"train_step_s": train[key], "forward_s": fwd[key], "infer_s": infer[key],
                     "train_images_per_s": batch / train[key], "forward_images_per_s": batch / fwd[key],
                     "infer_images_per_s": batch / infer[key],
                     "train_gflops_per_s": out["train_step_gflop"] / train[key],
                     "forward_gflops_per_s": out["forward_gflop"] / fwd[key]}
    res["bf16_over_fp32_train_step"] = train["m_ca_bf16"] / train["m_ca"]
    res["bf16_over_fp32_forward"] = fwd["m_ca_bf16"] / fwd["m_ca"]
    res["bf16_over_fp32_infer"] = infer["m_ca_bf16"] / infer["m_ca"]
    return res


def preset_figures(model: str, batch: int, rounds: int, threads: int, compile_model: bool,
                   profile: bool = False, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """``overrides``: extra config overrides (``debug=smoke`` for a check of the bench at a tiny size)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = preset_config(model, "m_ca", overrides)
    size = int(cfg["data"]["image_size"])
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    full = Variant(preset_module(model, "m_ca", overrides), x)
    out: dict[str, Any] = {"model": model, "overrides": list(overrides), "image_size": size, "batch": batch,
                           "rounds": rounds,
                           "parameters_M": sum(p.numel() for p in full.module.parameters()) / 1e6}

    # 1. peak memory, first, in this fresh process (fp32)
    out["memory"] = memory_figures(full)

    # 2. FLOPs (model forward; training step = forward + backward of the loss; optimiser excluded). The same
    # counts serve bf16: autocast changes the precision of the ops, not their number.
    full.module.eval()
    with torch.inference_mode():
        out["forward_gflop"] = count_flops(lambda: full.module.net(x)) / 1e9
    full.module.train()
    out["train_step_gflop"] = count_flops(lambda: loss_terms(full.module, x)["loss"].backward()) / 1e9
    full.opt.zero_grad(set_to_none=True)
    out["fused_attention"] = fused_attention_report(full.module.net)

    # 3. variants timed in the same rounds: bf16 autocast (same module and optimiser), Base (no M, no CA) and the
    # decoder fed an NCHW map (in both precisions), with both matmul yardsticks
    torch.manual_seed(0)
    full16 = full.in_precision(True)
    base = Variant(preset_module(model, "base", overrides), x)
    cl = nchw_decoder(full.twin())
    cl16 = cl.in_precision(True)
    ref = full.reconstruction()
    out["bf16_max_abs_diff_reconstruction"] = float((full16.reconstruction() - ref).abs().max())
    cl_diff = float((cl.reconstruction() - ref).abs().max())
    for warm in (full16, base, cl, cl16):  # warm-up (allocations, oneDNN primitives)
        warm.train_step()
    mm = matmul_callables()
    variants = {"m_ca": full, "m_ca_bf16": full16, "base": base, "m_ca_nchw_decoder": cl,
                "m_ca_nchw_decoder_bf16": cl16}
    train = interleaved_best({**{k: v.train_step for k, v in variants.items()}, **mm}, rounds)
    fwd = interleaved_best({**{k: v.forward for k, v in variants.items()}, **mm}, rounds + 1)
    infer = interleaved_best({"m_ca": full.infer, "m_ca_bf16": full16.infer, "base": base.infer}, rounds + 1)
    out["matmul_gflops_in_rounds"] = gflops_of_matmul(min(train["matmul"], fwd["matmul"]))
    out["matmul_bf16_gflops_in_rounds"] = gflops_of_matmul(min(train["matmul_bf16"], fwd["matmul_bf16"]),
                                                           bf16_matmul_n())
    out["train_step_s"] = {k: v for k, v in train.items() if k not in mm}
    out["forward_s"] = {k: v for k, v in fwd.items() if k not in mm}
    out["infer_s"] = infer
    out["base_train_images_per_s"] = batch / train["base"]
    out["m_ca_over_base_train_step"] = train["m_ca"] / train["base"]
    out["m_ca_over_base_forward"] = fwd["m_ca"] / fwd["base"]
    out["m_ca_over_base_infer"] = infer["m_ca"] / infer["base"]
    out["precision"] = precision_figures(out, train, fwd, infer)
    for key in FP32_TOP_LEVEL:  # the fp32 figures under their first names too (results.json readers use them)
        out[key] = out["precision"]["fp32"][key]
    out["channels_last"] = {"train_step_ratio": train["m_ca"] / train["m_ca_nchw_decoder"],
                            "forward_ratio": fwd["m_ca"] / fwd["m_ca_nchw_decoder"],
                            "bf16_train_step_ratio": train["m_ca_bf16"] / train["m_ca_nchw_decoder_bf16"],
                            "bf16_forward_ratio": fwd["m_ca_bf16"] / fwd["m_ca_nchw_decoder_bf16"],
                            "max_abs_diff_reconstruction": cl_diff}
    del cl, cl16, base

    # 4. where a bf16 step's time goes (against fp32), then torch.compile in both precisions
    if profile:
        from .step_profile import attention_figures, profile_figures

        out["profile"] = profile_figures(full, full16)
        out["attention"] = attention_figures(full)
    skipped = {"skipped": "not requested (--compile-paper)" if model == "vitmemad_paper" else "not requested"}
    out["compile"] = compile_figures(full, rounds) if compile_model else skipped
    out["compile_bf16"] = compile_figures(full16, rounds) if compile_model else skipped
    return out


def run_child(args: dict[str, Any]) -> dict[str, Any]:
    """Run ``preset_figures`` in a fresh process (this same package) so that its memory figures are its own."""
    proc = subprocess.run([sys.executable, "-m", "vitmemad.bench", "--_child", json.dumps(args)], capture_output=True,
                          text=True, env=child_env(PYTHONWARNINGS="ignore"))
    if proc.returncode != 0:
        return {"error": f"child failed ({proc.returncode}): {proc.stderr[-3000:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])

