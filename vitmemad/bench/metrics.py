"""Benchmark of the anomaly-detection metrics (not a test).

Times the exact ``pro_score`` against ``pro_reference`` (a direct numpy transcription of the official MVTec
algorithm) on ~12 M synthetic pixels, checks that they agree within 1e-6, measures the extra memory each
allocates (tracemalloc peak over the inputs), the binned mode's error and time, the AUROCs' time, and, if the
oracle is present, the binned mode's error on the 13 oracle cases. ``--scale`` adds the full-size test: 160
maps of 1024x1024 (168 M pixels) fed to the ``PRO`` metric in batches, in a child process whose peak RSS is
reported.

    python -m vitmemad.bench.metrics [--out bench/metrics.json] [--repeats 3] [--scale]
    python experiments/bench_metrics.py ...      # the same

``run(...)`` returns the same dict that is written as JSON (for ``make bench``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from vitmemad.metrics import PRO, ImageAUROC, PixelAUROC, pro_score
from vitmemad.metrics.reference import pro_reference

from .measure import SHARED, child_env, reset_peak_rss, rss_mib

ORACLE = SHARED / "oracle" / "pro_oracle.npz"


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Unit-variance smooth noise: coarse Gaussian noise upsampled by ``cell`` (cheap even at 1024x1024)."""
    coarse = rng.standard_normal((h // cell + 3, w // cell + 3)).astype(np.float32)
    return ndimage.zoom(coarse, cell, order=3)[:h, :w]


def make_image(rng: np.random.Generator, h: int, w: int, anomalous: bool) -> tuple[np.ndarray, np.ndarray]:
    """One (score map, mask) pair: blob masks from thresholded smooth noise, scores correlated with them."""
    mask = np.zeros((h, w), dtype=np.uint8)
    if anomalous:
        blobs = _smooth_noise(rng, h, w, cell=max(h // 12, 2))
        mask[blobs > np.quantile(blobs, 1 - rng.uniform(0.005, 0.08))] = 1
    score = rng.uniform(0.4, 1.2) * ndimage.gaussian_filter(mask.astype(np.float32), sigma=2)
    score += 0.25 * _smooth_noise(rng, h, w, cell=max(h // 16, 2))
    score += 0.08 * rng.standard_normal((h, w), dtype=np.float32)
    return score.astype(np.float32), mask


def make_data(n: int, h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images, every other one anomalous (about half normal)."""
    rng = np.random.default_rng(seed)
    maps = np.empty((n, h, w), dtype=np.float32)
    masks = np.empty((n, h, w), dtype=np.uint8)
    for i in range(n):
        maps[i], masks[i] = make_image(rng, h, w, anomalous=bool(i % 2))
    return maps, masks


def _best_time(fn, repeats: int):
    best, value = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - t0)
    return best, value


def _peak_extra_mib(fn) -> float:
    """Peak memory allocated while ``fn`` runs (numpy buffers are traced), beyond what existed before."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return (peak - base) / 2**20


def _metric_time(cls, maps, masks, batch: int = 16) -> tuple[float, float]:
    metric = cls()
    t0 = time.perf_counter()
    for i in range(0, len(maps), batch):
        metric.update(torch.from_numpy(maps[i:i + batch]), torch.from_numpy(masks[i:i + batch]))
    t1 = time.perf_counter()
    value = metric.compute().item()
    return time.perf_counter() - t1, value


def oracle_binned_errors(path: Path = ORACLE, ks=(100, 1000), limits=(0.3, 0.05, 1.0)) -> dict | None:
    """Binned-mode error vs the official values on the oracle cases (range = each case's min..max)."""
    if not path.is_file():
        return None
    out = {}
    with np.load(path) as npz:
        for k in range(int(npz["n_cases"])):
            maps, masks = npz[f"case{k}_maps"], npz[f"case{k}_masks"]
            name = str(npz[f"case{k}_name"])
            out[name] = {f"K={nt},limit={lim}": abs(pro_score(maps, masks, lim, num_thresholds=nt)
                                                    - float(npz[f"case{k}_pro_{lim}"]))
                         for nt in ks for lim in limits}
    return out


def run(n_images: int = 112, height: int = 384, width: int = 288, repeats: int = 3, fpr_limit: float = 0.3,
        num_thresholds: int = 1000, seed: int = 0, scale: bool = False, scale_check: bool = False,
        oracle: bool = True) -> dict:
    """Run the benchmark and return its results as a dict."""
    t0 = time.perf_counter()
    maps, masks = make_data(n_images, height, width, seed)
    res: dict = {
        "data": {"n_images": n_images, "height": height, "width": width, "pixels": int(maps.size),
                 "anomalous_fraction": float(masks.mean()), "normal_images": int((masks.max((1, 2)) == 0).sum()),
                 "distinct_scores": int(np.unique(maps).size), "seconds_to_generate": time.perf_counter() - t0},
        "machine": {"python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
                    "cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "fpr_limit": fpr_limit,
    }
    t_ref, v_ref = _best_time(lambda: pro_reference(maps, masks, fpr_limit), repeats)
    t_fast, v_fast = _best_time(lambda: pro_score(maps, masks, fpr_limit), repeats)
    res["pro_exact"] = {
        "reference_seconds": t_ref, "fast_seconds": t_fast, "speedup": t_ref / t_fast,
        "reference_value": v_ref, "fast_value": v_fast, "abs_diff": abs(v_ref - v_fast),
        "agree_1e-6": abs(v_ref - v_fast) <= 1e-6,
        "reference_peak_extra_MiB": _peak_extra_mib(lambda: pro_reference(maps, masks, fpr_limit)),
        "fast_peak_extra_MiB": _peak_extra_mib(lambda: pro_score(maps, masks, fpr_limit)),
        "inputs_MiB": (maps.nbytes + masks.nbytes) / 2**20,
    }
    t_ref1, v_ref1 = _best_time(lambda: pro_reference(maps, masks, 1.0), 1)
    t_fast1, v_fast1 = _best_time(lambda: pro_score(maps, masks, 1.0), 1)
    res["pro_exact_limit_1.0"] = {"reference_seconds": t_ref1, "fast_seconds": t_fast1,
                                  "speedup": t_ref1 / t_fast1, "abs_diff": abs(v_ref1 - v_fast1)}
    t_bin, v_bin = _best_time(lambda: pro_score(maps, masks, fpr_limit, num_thresholds=num_thresholds), repeats)
    res["pro_binned"] = {"num_thresholds": num_thresholds, "seconds": t_bin, "value": v_bin,
                         "abs_error_vs_exact": abs(v_bin - v_fast),
                         "peak_extra_MiB": _peak_extra_mib(
                             lambda: pro_score(maps, masks, fpr_limit, num_thresholds=num_thresholds))}
    for name, cls in (("pixel_auroc", PixelAUROC), ("image_auroc", ImageAUROC), ("pro_metric", PRO)):
        seconds, value = _metric_time(cls, maps, masks)
        res[name] = {"compute_seconds": seconds, "value": value}
    res["self_peak_rss_MiB"] = rss_mib("VmHWM")
    del maps, masks
    if oracle:
        res["oracle_binned_abs_error"] = oracle_binned_errors()
    if scale:
        res["scale"] = run_scale_subprocess(check=scale_check)
    return res


def _scale_child(n: int, h: int, w: int, batch: int, fpr_limit: float, check: bool = False) -> dict:
    """Feed n maps of h x w to PRO, PixelAUROC and ImageAUROC in batches (generated on the fly), compute.

    Reports resident memory per phase: after imports, peak while updating, and the peak of each compute().
    With ``check``, also runs ``pro_reference`` on the same pixels (slow, several GiB) and compares.
    """
    reset_peak_rss()
    out = {"n_images": n, "height": h, "width": w, "pixels": n * h * w, "fpr_limit": fpr_limit,
           "rss_MiB_after_imports": rss_mib()}
    rng = np.random.default_rng(1)
    metrics = {"pro": PRO(fpr_limit=fpr_limit), "pixel_auroc": PixelAUROC(), "image_auroc": ImageAUROC()}
    t_gen = t_update = 0.0
    for start in range(0, n, batch):
        t0 = time.perf_counter()
        pairs = [make_image(rng, h, w, anomalous=bool(i % 2)) for i in range(start, min(n, start + batch))]
        maps = torch.from_numpy(np.stack([p[0] for p in pairs]))
        masks = torch.from_numpy(np.stack([p[1] for p in pairs]) * np.uint8(255))
        del pairs
        t1 = time.perf_counter()
        for metric in metrics.values():
            metric.update(maps, masks)
        t_gen, t_update = t_gen + t1 - t0, t_update + time.perf_counter() - t1
        del maps, masks
    out.update(seconds_generate=t_gen, seconds_update_all_metrics=t_update,
               peak_rss_MiB_updates=rss_mib("VmHWM"), rss_MiB_holding_all_states=rss_mib())
    for name, metric in metrics.items():
        reset_peak_rss()
        before = rss_mib()
        t0 = time.perf_counter()
        out[f"{name}_value"] = metric.compute().item()
        out[f"{name}_compute_seconds"] = time.perf_counter() - t0
        out[f"{name}_compute_peak_rss_MiB"] = rss_mib("VmHWM")
        out[f"{name}_compute_extra_MiB"] = rss_mib("VmHWM") - before
    out["peak_rss_MiB"] = max(v for k, v in out.items() if k.startswith("peak_rss") or k.endswith("peak_rss_MiB"))
    if check:  # copies made only now, so that they do not inflate the figures above
        ref_maps = torch.cat(metrics["pro"].maps).numpy().reshape(n, h, w)
        ref_masks = torch.cat(metrics["pro"].masks).numpy().reshape(n, h, w)
        for metric in metrics.values():
            metric.reset()
        reset_peak_rss()
        before = rss_mib()
        t0 = time.perf_counter()
        ref = pro_reference(ref_maps, ref_masks, fpr_limit)
        out.update(reference_value=ref, reference_seconds=time.perf_counter() - t0,
                   reference_extra_MiB=rss_mib("VmHWM") - before, reference_abs_diff=abs(ref - out["pro_value"]))
    return out


def run_scale_subprocess(n: int = 160, h: int = 1024, w: int = 1024, batch: int = 8,
                         fpr_limit: float = 0.3, check: bool = False) -> dict:
    """Run the scale test in a fresh process so that its memory figures are its own."""
    args = json.dumps({"n": n, "h": h, "w": w, "batch": batch, "fpr_limit": fpr_limit, "check": check})
    proc = subprocess.run([sys.executable, "-m", "vitmemad.bench.metrics", "--_scale-child", args], capture_output=True,
                          text=True, check=True, env=child_env(OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2")))
    return json.loads(proc.stdout.strip().splitlines()[-1])


def print_table(res: dict) -> None:
    d, pe = res["data"], res["pro_exact"]
    print(f"data: {d['n_images']} maps {d['height']}x{d['width']} = {d['pixels'] / 1e6:.1f} M pixels, "
          f"{d['normal_images']} normal images, anomalous fraction {d['anomalous_fraction']:.4f}, "
          f"{d['distinct_scores']} distinct scores")
    rows = [("PRO@%g reference (argsort all)" % res["fpr_limit"], pe["reference_seconds"],
             pe["reference_peak_extra_MiB"], pe["reference_value"]),
            ("PRO@%g exact pro_score" % res["fpr_limit"], pe["fast_seconds"], pe["fast_peak_extra_MiB"],
             pe["fast_value"]),
            ("PRO@%g binned K=%d" % (res["fpr_limit"], res["pro_binned"]["num_thresholds"]),
             res["pro_binned"]["seconds"], res["pro_binned"]["peak_extra_MiB"], res["pro_binned"]["value"])]
    print(f"{'':40s} {'seconds':>9s} {'extra MiB':>10s} {'value':>14s}")
    for name, sec, mib, val in rows:
        print(f"{name:40s} {sec:9.3f} {mib:10.1f} {val:14.10f}")
    print(f"speedup exact vs reference: {pe['speedup']:.1f}x at limit {res['fpr_limit']}, "
          f"{res['pro_exact_limit_1.0']['speedup']:.1f}x at limit 1.0; |diff| = {pe['abs_diff']:.2e}; "
          f"binned |error| = {res['pro_binned']['abs_error_vs_exact']:.2e}")
    for name in ("pixel_auroc", "image_auroc", "pro_metric"):
        print(f"{name:12s} compute {res[name]['compute_seconds']:.3f} s  value {res[name]['value']:.10f}")
    if res.get("oracle_binned_abs_error"):
        errs = res["oracle_binned_abs_error"]
        keys = list(next(iter(errs.values())))
        print("oracle cases, binned |error| (range = case min..max):")
        print(f"{'case':20s} " + " ".join(f"{k:>22s}" for k in keys))
        for case, e in errs.items():
            print(f"{case:20s} " + " ".join(f"{e[k]:22.2e}" for k in keys))
    if "scale" in res:
        s = res["scale"]
        print(f"scale: {s['n_images']}x{s['height']}x{s['width']} = {s['pixels'] / 1e6:.0f} M pixels: peak RSS "
              f"{s['peak_rss_MiB']:.0f} MiB (after imports {s['rss_MiB_after_imports']:.0f}, holding all states "
              f"{s['rss_MiB_holding_all_states']:.0f}); updates {s['seconds_update_all_metrics']:.1f} s")
        for name in ("pro", "pixel_auroc", "image_auroc"):
            print(f"  {name:12s} compute {s[name + '_compute_seconds']:6.1f} s, peak RSS "
                  f"{s[name + '_compute_peak_rss_MiB']:.0f} MiB (+{s[name + '_compute_extra_MiB']:.0f} MiB)")
        if "reference_value" in s:
            print(f"  reference PRO {s['reference_seconds']:.1f} s, +{s['reference_extra_MiB']:.0f} MiB, "
                  f"|diff| {s['reference_abs_diff']:.2e}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/metrics.json")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n-images", type=int, default=112)
    parser.add_argument("--height", type=int, default=384)
    parser.add_argument("--width", type=int, default=288)
    parser.add_argument("--num-thresholds", type=int, default=1000)
    parser.add_argument("--scale", action="store_true", help="also run the 160x1024x1024 test (minutes, ~GBs)")
    parser.add_argument("--scale-check", action="store_true",
                        help="with --scale: also run pro_reference on the 168 M pixels (slow, ~+7 GiB)")
    parser.add_argument("--_scale-child", dest="scale_child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.scale_child:
        print(json.dumps(_scale_child(**json.loads(args.scale_child))))
        return
    res = run(args.n_images, args.height, args.width, args.repeats, num_thresholds=args.num_thresholds,
              scale=args.scale, scale_check=args.scale_check)
    print_table(res)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
