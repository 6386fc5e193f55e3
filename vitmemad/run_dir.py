"""Which checkpoint a training run resumes from, and the refusal to train into a finished run's folder."""
from __future__ import annotations

from pathlib import Path

from vitmemad.errors import VitmemadError

METRICS_FILE = "metrics.json"


class RunDirError(VitmemadError, FileExistsError):
    """The output directory already holds a finished run."""


def resume_path(ckpt_path: str | None, output_dir: Path) -> str | None:
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
