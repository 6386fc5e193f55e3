"""`vitmemad report DIR... [--out DIR] [--include-debug]` (also `python experiments/report.py DIR...`).

Every ``metrics.json`` under the given directories is read (recursively: single runs, Hydra multirun folders, or
the files themselves) into ``results.csv`` (one row per run), ``results.md`` (tables laid out like the paper's,
beside its numbers) and ``figures/``, by default in the first DIR; they are regenerated on every call.

Runs of a debug preset (metrics.json's ``debug`` is not null, e.g. ``debug=smoke``) check a setup and are no
results: they are left out, with one line saying how many, unless ``--include-debug`` is given.
Exit status: 0 written; 1 no metrics.json could be read; 2 none found, or only debug runs.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from .records import METRICS_FILE, NoMetricsFound, collect, split_debug
from .results import write_report

EXAMPLES = """examples:
  vitmemad report outputs/train/multiruns/2024-05-01_12-00-00-000000
  vitmemad report outputs/experiments/*_table6_ablation --out reports/table6
  vitmemad report outputs/real/bottle/vitmemad outputs/real/bottle/cae --out outputs/real/bottle
  vitmemad report outputs/train/runs --include-debug        # also the debug=smoke runs
"""


def parser(prog: str = "vitmemad report") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="results.csv, results.md (tables beside the paper's) and figures/ from the metrics.json "
                    "files under DIR... (searched recursively). Debug runs (debug=smoke) are left out.")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="run or sweep directories, or metrics.json files")
    p.add_argument("--out", metavar="DIR", help="where to write results.csv and results.md (default: the first DIR)")
    p.add_argument("--include-debug", action="store_true",
                   help="also report runs of a debug preset (metrics.json 'debug' not null, e.g. debug=smoke)")
    return p


def _leave_out_debug(records: list[dict]) -> list[dict]:
    results, debug = split_debug(records)
    if debug:
        names = ", ".join(sorted({str(r["debug"]) for r in debug}))
        print(f"note: left out {len(debug)} debug run(s) (debug: {names}); add --include-debug to report them",
              file=sys.stderr)
    return results


def main(argv: Sequence[str] | None = None, prog: str = "vitmemad report") -> int:
    args = parser(prog).parse_args(argv)
    try:
        records = collect(args.dirs)
    except NoMetricsFound as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not records:
        print(f"error: none of the {METRICS_FILE} files under {', '.join(args.dirs)} could be read "
              "(see warnings above)", file=sys.stderr)
        return 1
    if not args.include_debug:
        found, records = len(records), _leave_out_debug(records)
        if not records:
            print(f"error: all {found} runs under {', '.join(args.dirs)} are debug runs; add --include-debug "
                  "to report them", file=sys.stderr)
            return 2
    out_dir = Path(args.out) if args.out else Path(args.dirs[0])
    if out_dir.is_file():  # a metrics.json given directly: write beside it
        out_dir = out_dir.parent
    csv_path, md_path = write_report(records, out_dir, sources=args.dirs)
    print(f"wrote {csv_path} ({len(records)} runs)")
    print(f"wrote {md_path}")
    return 0
