"""Inference throughput (images/s) of PyTorch and onnxruntime side by side, on synthetic images.

    python experiments/bench_inference.py                        # CPU preset, batch 8, all cores
    python experiments/bench_inference.py --threads 1 --batch-size 1
    python experiments/bench_inference.py --ckpt outputs/train/latest/checkpoints/last.ckpt

Measures the scoring graph only (images (B,3,S,S) -> anomaly maps (B,S,S)); see
`vitmemad.export.benchmark_inference`. Prints one JSON line per configuration; --out appends them
to a JSON file (a list).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vitmemad.export import benchmark_inference  # noqa: E402


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vitmemad_cpu", help="model preset (random weights) when --ckpt is not given")
    parser.add_argument("--ckpt", default=None, help="a checkpoint to benchmark instead of a preset")
    parser.add_argument("--batch-size", type=int, nargs="+", default=[8])
    parser.add_argument("--threads", type=int, nargs="+", default=[None], help="intra-op threads (default: all cores)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", default=None, help="JSON file to append the results to")
    args = parser.parse_args(argv)
    results = []
    for threads in args.threads:
        for batch in args.batch_size:
            r = benchmark_inference(args.model, ckpt_path=args.ckpt, batch_size=batch, rounds=args.rounds,
                                    warmup=args.warmup, threads=threads or os.cpu_count())
            results.append(r)
    if args.out:
        path = Path(args.out)
        old = json.loads(path.read_text()) if path.is_file() else []
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(old + results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
