"""What a run prints: the libraries' chatter filtered out by message, the final metrics once, as a small table.

``install()`` is called by ``vitmemad.cli.run``, so by every entry point, at run time (importing this module
changes nothing). It drops, by their text, Lightning's info lines that tell a vitmemad user nothing (device
availability, the litlogger tip, "Seed set to", "Loading `train_dataloader` to estimate ...", "`Trainer.fit`
stopped: `max_epochs=N` reached", the checkpoint-loading lines of testing), torch's LeafSpec deprecation
warning raised inside Lightning, and Lightning's warnings about what the models do by design (no loss or
optimizer for the models fitted without gradients, a frozen backbone in eval mode). Log levels stay as they are:
every other Lightning message, and every vitmemad warning and error, still appears. W&B's own output is quieted
by the settings its logger is built with (``vitmemad.utils.wandb_logging.wandb_logger``).
"""
from __future__ import annotations

import logging
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Iterable

#: Lightning info lines dropped by text (a DDP rank > 0 prefixes "[rank: N] ").
LIGHTNING_NOISE = (
    r"(GPU|TPU|HPU) available: ",
    "\N{ELECTRIC LIGHT BULB} Tip: ",
    r"Loading `train_dataloader` to estimate number of stepping batches",
    r"Seed set to ",
    r"`Trainer\.fit` stopped: `max_epochs=\S+` reached",
    r"Restoring states from the checkpoint path at ",  # the resume line "Restored all states ..." stays
    r"Loaded model weights from the checkpoint at ",  # testing: the results table names the checkpoint
)
#: The loggers those lines are created on (a logger's filters see only records created on it).
LIGHTNING_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero", "lightning.fabric.utilities.seed",
)
#: (message regex, category) of third-party warnings that say nothing about a run.
WARNING_NOISE = (
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),  # torch 2.14 vs Lightning's _pytree
    # by design for the models fitted without gradients (PatchCore, the mean image)
    (r"`training_step` returned `None`", UserWarning),
    (r"`LightningModule.configure_optimizers` returned `None`", UserWarning),
    # by design: the frozen pretrained backbone of PatchCore and vitmemad_feat stays in eval mode
    (r"Found \d+ module\(s\) in eval mode at the start of training", UserWarning),
)
METRIC_KEYS = ("image_AUROC", "pixel_AUROC", "PRO")

log = logging.getLogger("vitmemad")


class DropMessages(logging.Filter):
    """Refuse the records whose message starts with one of ``patterns``."""

    def __init__(self, patterns: Iterable[str]) -> None:
        super().__init__()
        self.pattern = re.compile(r"(\[rank: \d+\] )?(?:" + "|".join(patterns) + ")")

    def filter(self, record: logging.LogRecord) -> bool:
        return self.pattern.match(record.getMessage()) is None


def install() -> None:
    """Filter the noise above (idempotent: a second call adds nothing)."""
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropMessages) for f in logger.filters):
            logger.addFilter(DropMessages(LIGHTNING_NOISE))
    for message, category in WARNING_NOISE:  # filterwarnings replaces an identical filter: no pile-up
        warnings.filterwarnings("ignore", message=message, category=category)


def _value(value: Any) -> str:
    return "null" if value is None else f"{value:.4f}"


def results_table(record: dict[str, Any], metrics_path: str | Path, notes: Iterable[str] = ()) -> str:
    """The test metrics as a Markdown table under a title naming the model and category, then where they are."""
    rows = [(k, _value(record.get(k))) for k in METRIC_KEYS]
    width = max(len("metric"), *(len(k) for k, _ in rows))
    vwidth = max(len("value"), *(len(v) for _, v in rows))
    lines = [f"[vitmemad] {record.get('model')} / {record.get('category')}: test results",
             f"| {'metric':<{width}} | {'value':<{vwidth}} |", f"|{'-' * (width + 2)}|{'-' * (vwidth + 2)}|"]
    lines += [f"| {k:<{width}} | {v:<{vwidth}} |" for k, v in rows]
    lines.append(f"metrics.json: {metrics_path}")
    if record.get("ckpt_path"):
        lines.append(f"checkpoint: {record['ckpt_path']}")
    lines.extend(notes)
    return "\n".join(lines)


def to_log_files(text: str, logger: logging.Logger = log) -> None:
    """``text`` as an INFO record of ``logger`` in the run's log files only (the console got it already)."""
    record = logger.makeRecord(logger.name, logging.INFO, __file__, 0, "%s", (text,), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and record.levelno >= handler.level:
            handler.handle(record)


def print_results(record: dict[str, Any], metrics_path: str | Path, notes: Iterable[str] = ()) -> None:
    """The results table once on stdout, and in the run's log file."""
    table = results_table(record, metrics_path, notes)
    sys.stderr.flush()
    print(table, flush=True)
    to_log_files(table)
