"""bf16-mixed against fp32 for `experiment=cpu_real`: training speed, and accuracy on the labelled validation half.

    python experiments/compare_precision.py speed --root bottle=$MVTEC_ROOT [--epochs 10] [--out DIR]
    python experiments/compare_precision.py accuracy --root bottle=$MVTEC_ROOT --root tire=$TIRE_ROOT
                                            [--seeds 0 1 2] [--precisions 32-true bf16-mixed] [--threads 1] [--out DIR]

Both train runs of a pair are the same config except ``trainer.precision``.

- ``speed``: bottle (the first ``--root``), seed 0, ``num_threads=2``, fp32 then bf16, one after the other;
  writes ``speed.json`` with both training wall times (metrics.json ``train_seconds``) and their ratio.
- ``accuracy``: every category x seed x precision (the preset's own epochs), then each run's best checkpoint
  scored by ``experiments/select_map.py --part val`` with the run's own anomaly map and forward precision;
  writes ``accuracy.json`` and prints, per category and metric, mean ± std of each precision and whether
  |mean(bf16) - mean(fp32)| <= max(std(fp32), 0.005).

Resumable: a finished run (metrics.json) is skipped, an interrupted one resumed from its last.ckpt, so the
same command continues where a stopped one ended. Run folders: ``<out>/<category>-<precision>-s<seed>``.
To use both cores, start two invocations with ``--threads 1`` on disjoint ``--seeds``/``--precisions``, then run
the full command once more: it skips every finished run and writes ``accuracy.json`` over all of them (a partial
invocation writes ``accuracy-<categories>-s<seeds>-<precisions>.json`` instead).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "experiments"))
sys.path.insert(0, str(REPO))

from vitmemad.trainer_precision import PRECISIONS  # noqa: E402

METRICS = ("image_AUROC", "pixel_AUROC", "PRO")
TOLERANCE = 0.005


def train(run_dir: Path, category: str, root: str, precision: str, seed: int, threads: int,
          extra: list[str]) -> dict:
    """One cpu_real training in ``run_dir`` (skipped when finished, resumed when interrupted)."""
    metrics = run_dir / "metrics.json"
    if not metrics.exists():
        resume = ["ckpt_path=last"] if (run_dir / "checkpoints" / "last.ckpt").exists() else []
        cmd = [sys.executable, "-m", "vitmemad.train", "experiment=cpu_real", "data=mvtec", f"data.root={root}",
               f"data.category={category}", f"seed={seed}", f"num_threads={threads}", "logger=csv",
               f"trainer.precision={precision}", f"hydra.run.dir={run_dir}", *resume, *extra]
        print("$", " ".join(cmd), flush=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "WANDB_MODE": "offline"}
        subprocess.run(cmd, cwd=REPO, env=env, check=True)
    return json.loads(metrics.read_text())


def validation_half(record: dict) -> dict[str, float]:
    """The run's best checkpoint on the labelled validation half, with its own map and forward precision."""
    import select_map
    from vitmemad.inference import load_module

    module = load_module(record["ckpt_path"])
    cfg = module.run_config
    items, errors, reference = select_map.checkpoint_errors(module, "val")
    return select_map.score_setting(errors, items, cfg["anomaly_map"]["source"], float(cfg["anomaly_map"]["sigma"]),
                                    reference)


def summarize(rows: list[dict]) -> dict:
    """Per category and metric: mean and sample std of each precision, the difference and the verdict."""
    out: dict = {}
    for category in sorted({r["category"] for r in rows}):
        out[category] = {}
        for metric in METRICS:
            values = {p: [r["val"][metric] for r in rows if r["category"] == category and r["precision"] == p]
                      for p in PRECISIONS}
            if not all(values.values()):
                continue
            stats = {p: {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0,
                         "n": len(v)} for p, v in values.items()}
            diff = stats["bf16-mixed"]["mean"] - stats["32-true"]["mean"]
            allowed = max(stats["32-true"]["std"], TOLERANCE)
            out[category][metric] = {**stats, "difference": diff, "allowed": allowed, "equal": abs(diff) <= allowed}
    return out


def roots(specs: list[str]) -> dict[str, str]:
    pairs = [spec.split("=", 1) for spec in specs]
    if not pairs or any(len(p) != 2 or not p[1] for p in pairs):
        raise SystemExit("error: --root takes CATEGORY=DATASET_ROOT, e.g. --root bottle=$MVTEC_ROOT")
    return dict(pairs)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["speed", "accuracy"])
    parser.add_argument("--root", action="append", default=[], metavar="CATEGORY=DATASET_ROOT")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS),
                        help="accuracy: train only these (the summary needs both)")
    parser.add_argument("--threads", type=int, default=None, help="num_threads (speed: 2, accuracy: 1)")
    parser.add_argument("--epochs", type=int, default=None, help="trainer.max_epochs (default: the preset's)")
    parser.add_argument("--out", type=Path, default=Path("outputs/precision"))
    args = parser.parse_args(argv)
    categories = roots(args.root)
    extra = [f"trainer.max_epochs={args.epochs}"] if args.epochs else []
    args.out.mkdir(parents=True, exist_ok=True)
    if args.mode == "speed":
        category, root = next(iter(categories.items()))
        tag = f"-e{args.epochs}" if args.epochs else ""
        seconds = {p: train(args.out / f"speed-{category}-{p}{tag}", category, root, p, 0, args.threads or 2,
                            extra)["train_seconds"] for p in PRECISIONS}
        result = {"category": category, "epochs": args.epochs, "threads": args.threads or 2,
                  "train_seconds": seconds, "speedup_bf16": seconds["32-true"] / seconds["bf16-mixed"]}
        (args.out / "speed.json").write_text(json.dumps(result, indent=1))
        print(json.dumps(result, indent=1))
        return 0
    rows = []
    for category, root in categories.items():
        for seed in args.seeds:
            for precision in args.precisions:
                run_dir = args.out / f"{category}-{precision}-s{seed}"
                record = train(run_dir, category, root, precision, seed, args.threads or 1, extra)
                rows.append({"category": category, "precision": precision, "seed": seed, "run": str(run_dir),
                             "train_seconds": record["train_seconds"], "test": {m: record[m] for m in METRICS},
                             "val": validation_half(record)})
    result = {"runs": rows, "summary": summarize(rows)}
    out = args.out / accuracy_file(args.seeds, args.precisions, list(categories), args.out / "accuracy.json")
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result["summary"], indent=1))
    print(f"wrote {out}")
    return 0


def accuracy_file(seeds: list[int], precisions: list[str], categories: list[str], full: Path | None = None) -> str:
    """``accuracy.json`` for both precisions over seeds 0-2; a partial invocation (one core's share, an interim
    verdict, fewer categories than an existing ``full`` file holds) writes a file named after what it covers, so
    that it never replaces the full comparison."""
    covered = set(json.loads(full.read_text())["summary"]) if full is not None and full.is_file() else set()
    if sorted(seeds) == [0, 1, 2] and sorted(precisions) == sorted(PRECISIONS) and covered <= set(categories):
        return "accuracy.json"
    return f"accuracy-{'-'.join(categories)}-s{''.join(map(str, sorted(seeds)))}-{'-'.join(precisions)}.json"


if __name__ == "__main__":
    sys.exit(main())
