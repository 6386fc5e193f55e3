"""Which checkpoint a training run resumes from, and the refusal to train into a finished run's folder.

``ckpt_path``: unset/null starts a new run (refused where a run already is), ``last`` resumes, a path resumes
from that checkpoint, and ``auto`` makes a command re-runnable (a sweep of many long jobs): a finished run is
skipped, an interrupted one resumes from its ``last.ckpt``, and a new one starts.
"""
from __future__ import annotations

from pathlib import Path

from vitmemad.errors import VitmemadError

METRICS_FILE = "metrics.json"


class RunDirError(VitmemadError, FileExistsError):
    """The output directory already holds a finished run."""


AUTO = "auto"


def finished_run(ckpt_path: str | None, output_dir: Path) -> bool:
    """``ckpt_path=auto`` and ``output_dir`` holds a finished run: the job has nothing left to do."""
    return ckpt_path == AUTO and (Path(output_dir) / METRICS_FILE).is_file()


def resume_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    if ckpt_path == AUTO:
        if finished_run(ckpt_path, output_dir):
            return None
        last = output_dir / "checkpoints" / "last.ckpt"
        return str(last) if last.is_file() else None
    if ckpt_path in (None, ""):
        if (output_dir / METRICS_FILE).exists():
            raise RunDirError(
                f"{output_dir} already holds a finished run ({METRICS_FILE}); choose another "
                "hydra.run.dir, or pass ckpt_path=last to resume it"
            )
        if (output_dir / "checkpoints" / "last.ckpt").exists():  # never start over an unfinished run by mistake
            raise RunDirError(
                f"{output_dir} holds the checkpoints of an unfinished run; pass ckpt_path=last to resume it, "
                "or choose another hydra.run.dir"
            )
        return None
    if ckpt_path == "last":
        last = output_dir / "checkpoints" / "last.ckpt"
        if not last.is_file():
            raise FileNotFoundError(f"ckpt_path=last but {last} does not exist: nothing to resume in {output_dir}")
        return str(last)
    from vitmemad.checkpoint import check_file

    return str(check_file(ckpt_path))  # a folder lists the checkpoints inside it
