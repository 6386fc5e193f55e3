"""`make bench`, kept at its old path: the bench is ``vitmemad.bench`` (``python -m vitmemad.bench --help``).

    python experiments/bench.py [--out bench/results.json] [--quick] [--no-compile] [--compile-paper]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vitmemad.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
