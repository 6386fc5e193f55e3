"""`make bench` (vitmemad.bench) runs and records its fp32 and bf16 figures; its op profile puts time where it
belongs. Speed itself is the bench's verdict, never asserted here."""
from __future__ import annotations

import json
import math

import pytest
import torch

from helpers import REPO_ROOT, run_here
from vitmemad.bench.step_profile import CATEGORIES, assign, categorize
from vitmemad.trainer_precision import cpu_bf16_supported


def test_help_lists_examples_and_bad_values_are_refused(tmp_path):
    proc = run_here("vitmemad.bench", "--help", cwd=tmp_path)  # python -m vitmemad.bench, in this process
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "bf16" in proc.stdout and "examples:" in proc.stdout and "vitmemad bench --quick" in proc.stdout
    bad = run_here("vitmemad.bench", "--rounds", "0", cwd=tmp_path, check=False)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --rounds must be >= 1, not 0"
    assert not (tmp_path / "bench").exists()


def test_a_tiny_run_records_fp32_and_bf16_figures_against_both_peaks(tmp_path):
    """One preset at debug=smoke size, one round, through the old script path (which the Makefile used)."""
    out = tmp_path / "results.json"
    proc = run_here("experiments/bench.py", "--presets", "vitmemad_real", "--tiny", "--rounds", "1", "--batch", "2",
                    "--presets-only", "--threads", "1", "--out", str(out), cwd=tmp_path, check=False,
                    script=REPO_ROOT / "experiments" / "bench.py")  # the script, run in this process
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    mm = r["matmul"]
    assert len(mm["gflops_measured"]) == len(mm["bf16_gflops_measured"]) == 3  # start, the preset's rounds, end
    assert mm["gflops"] == max(mm["gflops_measured"]) > 0 and mm["bf16_gflops"] == max(mm["bf16_gflops_measured"])
    assert mm["bf16_over_fp32"] == pytest.approx(mm["bf16_gflops"] / mm["gflops"])
    assert (mm["n"], mm["bf16_n"]) == (2048, 2048 if cpu_bf16_supported() else 256)  # emulated bf16: smaller

    real = r["vitmemad_real"]
    assert "error" not in real, real.get("error")
    assert real["overrides"] == ["debug=smoke"] and real["image_size"] == 64 and real["batch"] == 2
    assert real["seconds"] > 0
    assert set(r["contention_probe"]) == {"start", "after_vitmemad_real", "end"}
    prec = real["precision"]
    for name, peak in (("fp32", mm["gflops"]), ("bf16", mm["bf16_gflops"])):
        p = prec[name]
        assert p["peak_gflops"] == peak
        for kind in ("train", "forward"):
            assert p[f"{kind}_fraction_of_peak"] == pytest.approx(p[f"{kind}_gflops_per_s"] / peak)
            assert p[f"{kind}_fraction_of_peak"] > 0
    assert prec["fp32"]["train_step_s"] == real["train_step_s"]["m_ca"]
    assert prec["bf16"]["train_step_s"] == real["train_step_s"]["m_ca_bf16"]
    for kind in ("train_step", "forward", "infer"):
        assert prec[f"bf16_over_fp32_{kind}"] > 0
    step = prec["bf16"]["train_step_s"] / prec["fp32"]["train_step_s"]
    assert prec["bf16_over_fp32_train_step"] == pytest.approx(step)
    assert 0 < real["bf16_max_abs_diff_reconstruction"] < 1  # bf16 rounds, but rebuilds the same image
    assert real["channels_last"]["bf16_train_step_ratio"] > 0 and real["channels_last"]["bf16_forward_ratio"] > 0

    prof = real["profile"]
    for name in ("fp32", "bf16"):
        assert math.isclose(sum(prof[name]["category_share"].values()), 1.0, rel_tol=1e-6)
        assert set(prof[name]["category_ms"]) == set(CATEGORIES)
    for name in ("fp32", "bf16"):
        top = prof[name]["top_ops"]
        assert 1 <= len(top) <= 10 and [t["self_ms"] for t in top] == sorted((t["self_ms"] for t in top), reverse=True)
    fp32_ops = {t["op"]: t["self_ms"] for t in prof["fp32"]["top_ops"]}
    assert all(t["fp32_self_ms"] == fp32_ops[t["op"]] for t in prof["bf16"]["top_ops"] if t["op"] in fp32_ops)
    assert prof["bf16"]["category_ms"]["loss_ssim"] > 0 and prof["bf16"]["category_ms"]["transposed_conv"] > 0
    assert prof["bf16"]["category_ms"]["dtype_cast"] > 0  # autocast casts the fp32 weights
    assert set(prof["not_faster_under_bf16"]) <= set(prof["bf16_over_fp32_by_category"])

    att = real["attention"]
    assert att["shape_bhnd"] == [2, 2, 17, 32]  # debug=smoke: (64 px / patch 16)^2 + [cls] tokens, D = 64, 2 heads
    assert set(att["forward_backward_ms"]) == {"fp32_flash", "fp32_math", "bf16_flash", "bf16_math"}
    assert att["bf16_over_fp32_flash"] == pytest.approx(att["forward_backward_ms"]["bf16_flash"]
                                                        / att["forward_backward_ms"]["fp32_flash"])
    assert r["bf16"]["presets"]["vitmemad_real"]["bf16_over_fp32_forward"] == prec["bf16_over_fp32_forward"]
    assert r["bf16"]["profiled_preset"] == "vitmemad_real"
    for key in ("paper_forward_fraction_of_matmul", "paper_forward_fp32_fraction_of_fp32_matmul",
                "paper_forward_bf16_fraction_of_bf16_matmul"):
        assert r["targets"][key] == {"value": None, "target": ">= 0.6", "met": None}  # no paper preset in this run
    assert "loader" not in r and "metrics" not in r
    assert "bf16" in proc.stdout and f"wrote {out}" in proc.stdout


def test_profile_categories_follow_the_forward_op_into_backward():
    """A transposed convolution's backward counts as transposed conv; a convolution inside the loss scope (as
    SSIM's Gaussian filter) counts as the loss's, forward and backward; every op's self time is counted once."""
    from torch.profiler import ProfilerActivity, profile, record_function

    torch.manual_seed(0)
    up, bn = torch.nn.ConvTranspose2d(8, 4, 4, stride=4), torch.nn.BatchNorm2d(4)
    blur = torch.ones(4, 1, 5, 5) / 25
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        y = bn(up(torch.randn(2, 8, 16, 16)))
        with record_function("bench::loss"):
            loss = torch.nn.functional.conv2d(y, blur, groups=4, padding=2).square().mean()
        loss.backward()
    events = list(prof.events())
    cats = assign(events)
    backward = {cat for e, cat in zip(events, cats) if e.name == "aten::convolution_backward"}
    assert backward == {"transposed_conv", "loss_ssim"}  # one each: the backward follows its forward op
    assert {cat for e, cat in zip(events, cats) if e.name == "aten::native_batch_norm_backward"} == {"batch_norm"}
    assert {cat for e, cat in zip(events, cats) if e.name == "aten::conv_transpose2d"} == {"transposed_conv"}
    assert "conv" not in cats and "other" in cats  # the square and mean are neither
    totals = categorize(events)
    assert math.isclose(sum(totals.values()), sum(e.self_cpu_time_total for e in events) / 1e3, rel_tol=1e-9)
    assert totals["loss_ssim"] > 0 and totals["transposed_conv"] > 0 and totals["batch_norm"] > 0
