"""`python experiments/report.py DIR... [--out DIR] [--include-debug]`: the same as `vitmemad report`.

The code lives in the package (``vitmemad.report``: ``records`` reads the metrics.json files, ``tables`` and
``results`` write results.md / results.csv, ``figures`` the figures, ``cli`` the command); this script keeps
the old command and its importable names working from a checkout.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from vitmemad.report import cli  # noqa: E402  (matplotlib, no torch)
from vitmemad.report.cells import category_mean, fmt_delta, fmt_measured, fmt_paper, md_table, mean_std  # noqa: E402,F401
from vitmemad.report.records import (  # noqa: E402,F401
    METRICS,
    METRICS_FILE,
    NoMetricsFound,
    collect,
    find_metrics_files,
    load_record,
    split_debug,
)
from vitmemad.report.results import CSV_COLUMNS, CSV_NAME, MD_NAME, render_csv, render_markdown, write_report  # noqa: E402,F401
from vitmemad.report.tables import ablation_section, per_category_section, per_defect_section  # noqa: E402,F401


def main(argv: Sequence[str] | None = None) -> int:
    return cli.main(argv, prog="experiments/report.py")


if __name__ == "__main__":
    sys.exit(main())
