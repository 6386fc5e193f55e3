"""A Hydra callback that ranks the jobs of a hyperparameter search (conf/hparams_search/*.yaml).

Hydra's basic sweeper runs a grid but ignores what the jobs return. This callback keeps, for every job, the
value the train entry returns (``optimized_metric``: a validation metric, never a test metric) and, when the
multirun ends, writes into the sweep folder:

- ``search_results.csv``: one row per job, best first: rank, job, status, the metric's value, the swept
  overrides, the job folder;
- ``search_best.yaml``: the metric, its direction, the best value, the best job's overrides and folder.

Jobs write ``search_result.json`` into their own folder (``on_job_end`` runs where the job runs, e.g. on a
SLURM node), and ``on_multirun_end`` collects them, so it works with any launcher.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from vitmemad.utils.io import atomic_write_bytes

log = logging.getLogger(__name__)

JOB_FILE = "search_result.json"
CSV_FILE = "search_results.csv"
BEST_FILE = "search_best.yaml"
DIRECTIONS = ("minimize", "maximize")


class SearchSummary(Callback):
    def __init__(self, metric: str, direction: str = "minimize") -> None:
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        self.metric = str(metric)
        self.direction = direction

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        out_dir = Path(str(job_return.hydra_cfg.hydra.runtime.output_dir)) if job_return.hydra_cfg else None
        if out_dir is None or not out_dir.is_dir():
            return
        value: float | None = None
        error = None
        if job_return.status == JobStatus.COMPLETED:
            try:
                value = None if job_return._return_value is None else float(job_return._return_value)
            except (TypeError, ValueError):
                error = f"not a number: {job_return._return_value!r}"
        else:
            error = repr(job_return._return_value)[:500]
        record = {
            "job": int(job_return.hydra_cfg.hydra.job.num),
            "status": job_return.status.name,
            "metric": self.metric,
            "value": value,
            "overrides": list(job_return.overrides or []),
            "output_dir": str(out_dir),
            "error": error,
        }
        atomic_write_bytes(out_dir / JOB_FILE, json.dumps(record, indent=2).encode())

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        records = collect(sweep_dir)
        if not records:
            log.warning("search summary: no %s under %s", JOB_FILE, sweep_dir)
            return
        ranked = rank(records, self.direction)
        write_summary(sweep_dir, ranked, self.metric, self.direction)


def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    records = []
    for path in sorted(Path(sweep_dir).glob(f"*/{JOB_FILE}")):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError) as err:
            log.warning("search summary: skipping unreadable %s: %s", path, err)
    return records


def _valid(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def rank(records: list[dict[str, Any]], direction: str) -> list[dict[str, Any]]:
    """Best first; jobs without a finite value last (in job order)."""
    sign = -1.0 if direction == "maximize" else 1.0
    good = sorted((r for r in records if _valid(r.get("value"))), key=lambda r: (sign * r["value"], r["job"]))
    bad = sorted((r for r in records if not _valid(r.get("value"))), key=lambda r: r["job"])
    return [{**r, "rank": i + 1 if _valid(r.get("value")) else None} for i, r in enumerate(good + bad)]


def write_summary(sweep_dir: Path, ranked: list[dict[str, Any]], metric: str, direction: str) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["rank", "job", "status", metric, "overrides", "output_dir"])
    for r in ranked:
        writer.writerow(["" if r["rank"] is None else r["rank"], r["job"], r["status"],
                         "" if r.get("value") is None else r["value"], " ".join(r["overrides"]), r["output_dir"]])
    atomic_write_bytes(sweep_dir / CSV_FILE, buf.getvalue().encode())
    best = ranked[0] if ranked and ranked[0]["rank"] is not None else None
    lines = [
        f"# Best job of the search by {metric} ({direction}); all jobs: {CSV_FILE}.",
        f"metric: {json.dumps(metric)}",
        f"direction: {direction}",
        f"jobs: {len(ranked)}",
        f"completed_with_value: {sum(r['rank'] is not None for r in ranked)}",
    ]
    if best is None:
        lines.append("best: null")
    else:
        lines += [
            "best:",
            f"  value: {best['value']!r}",
            f"  job: {best['job']}",
            f"  output_dir: {json.dumps(best['output_dir'])}",
            "  overrides:",
            *[f"    - {json.dumps(o)}" for o in best["overrides"]],
        ]
    atomic_write_bytes(sweep_dir / BEST_FILE, ("\n".join(lines) + "\n").encode())
    if best is not None:
        log.info("search: best %s = %s (job %d: %s); all jobs in %s", metric, best["value"], best["job"],
                 " ".join(best["overrides"]), sweep_dir / CSV_FILE)
        print(f"[vitmemad] search: best {metric} = {best['value']:.6g} with {' '.join(best['overrides'])} "
              f"({best['output_dir']}); ranking: {sweep_dir / CSV_FILE}")
