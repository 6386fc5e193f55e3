"""``python -m vitmemad.bench`` / ``vitmemad bench``: the options, then the run and bench/results.json."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .variants import PRESETS

EXAMPLES = """examples:
  vitmemad bench                              # everything -> bench/results.json (what `make bench` runs)
  vitmemad bench --quick                      # CPU preset only, fewer rounds: a check of the bench
  vitmemad bench --presets vitmemad_real --presets-only --out /tmp/real.json
  vitmemad bench --threads 2 --compile-paper  # 2 threads whatever the load; also compile the paper preset

`python -m vitmemad.bench` and `python experiments/bench.py` are the same. Read the ratios, not the times: the
figures that are compared are timed in interleaved rounds. The fields of results.json are listed in the
docstring of vitmemad.bench (vitmemad/bench/__init__.py)."""


def parser(prog: str = "vitmemad bench") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Speed and memory figures of the presets in fp32 and bf16 autocast, against this CPU's fp32 and "
                    "bf16 matmul peaks, measured side by side in one run -> a JSON file.")
    p.add_argument("--out", default="bench/results.json", help="JSON file to write (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="CPU preset only, fewer repeats (a check of the bench)")
    p.add_argument("--presets", nargs="+", choices=list(PRESETS), default=None, metavar="PRESET",
                   help=f"presets to time (default: all: {', '.join(PRESETS)}; with --quick: vitmemad_cpu)")
    p.add_argument("--rounds", type=int, default=None, help="timing rounds per preset (default: the preset's)")
    p.add_argument("--batch", type=int, default=None, help="batch of every preset (default: the preset's)")
    p.add_argument("--presets-only", action="store_true",
                   help="only the presets and the matmul peaks: skip the loader, metrics and ONNX figures")
    p.add_argument("--tiny", action="store_true", help="the presets at debug=smoke size (a check, not figures)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (CPU preset)")
    p.add_argument("--compile-paper", action="store_true", help="also compile the paper preset (minutes)")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads (default: one per core, or 1 when the contention probe finds the cores "
                        "busy with other jobs)")
    p.add_argument("--_child", dest="child", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.child:  # one preset in a fresh process (vitmemad.bench.preset.run_child)
        from .preset import preset_figures

        print(json.dumps(preset_figures(**json.loads(args.child)), default=float))
        return 0
    for name in ("rounds", "batch", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            print(f"error: --{name} must be >= 1, not {getattr(args, name)}", file=sys.stderr)
            return 2
    from .report import print_summary
    from .run import run

    results = run(quick=args.quick, compile_cpu=not args.no_compile, compile_paper=args.compile_paper,
                  threads=args.threads, presets=args.presets, rounds=args.rounds, batch=args.batch, tiny=args.tiny,
                  presets_only=args.presets_only)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=float) + "\n")
    print_summary(results)
    print(f"wrote {out}")
    return 0
