"""The metrics benchmark, kept at this path: the code is ``vitmemad.bench.metrics`` (same options).

    python experiments/bench_metrics.py [--out bench/metrics.json] [--repeats 3] [--scale]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vitmemad.bench.metrics import *  # noqa: E402,F401,F403  (run, make_data, pro timing helpers)
from vitmemad.bench.metrics import main  # noqa: E402

if __name__ == "__main__":
    main()
