"""The README's commands do what it says.

Convention: every ```bash block of README.md is run, in order, at smoke size, in one scratch folder. A block
fenced as ```bash real needs real data, a GPU or hours, or installs: it is not run, only checked (known command,
existing make target, and for `vitmemad train` a config that composes). How a runnable command is run:
- `vitmemad <cmd> ...`: in this process, through `vitmemad.main` (what the console script calls, as
  `python -m vitmemad <cmd>` does); `test_console_script` checks that the script is installed and runs;
- `make demo`: its Makefile recipe with this Python; other make targets are only checked to exist (`make test`
  would run this suite);
- `train` gets `debug=smoke num_threads=1` (and a handful of demo crops when no `data=` is given), eval,
  predict and export `num_threads=1`, report `--include-debug`; a command equal to an earlier one is not run twice;
- `my_images/good` and `my_images/new` are made from the demo data before the first command.
Each command is checked right after it runs (later commands move `outputs/train/latest`).
"""
from __future__ import annotations

import csv
import json
import math
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from helpers import run_here

REPO = Path(__file__).resolve().parents[1]
SUBCOMMANDS = ("train", "eval", "predict", "export", "report", "bench")
TINY_DEMO = ["data.n_train=24", "data.n_test_good=6", "data.n_test_defect=6"]
CHECKED_DOCS = ("README.md", "docs/results.md", "docs/data.md")  # their real blocks' train commands compose
CONTRACT_COLUMNS = ["path", "score", "label", "threshold", "error"]


@dataclass
class Command:
    text: str
    real: bool
    argv: list[str]
    task: str | None = None  # train, eval, ... for vitmemad commands and `make demo`
    args: list[str] = field(default_factory=list)


def _blocks(text: str) -> list[tuple[bool, list[str]]]:
    """(real, lines) of every ```bash block."""
    out, current, real = [], None, False
    for line in text.splitlines():
        if current is None:
            m = re.match(r"^```(\S*)(.*)$", line)
            if m and m.group(1) == "bash":
                current, real = [], "real" in m.group(2).split()
        elif line.strip() == "```":
            out.append((real, current))
            current = None
        else:
            current.append(line)
    return out


def _make_recipe(target: str) -> list[str]:
    lines = (REPO / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
    recipe = []
    for line in lines[start + 1:]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    assert len(recipe) == 1, f"make {target}: expected a one-line recipe, got {recipe}"
    return shlex.split(recipe[0].replace("$(PY)", "python"))


def _make_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z][\w-]*):", (REPO / "Makefile").read_text(), re.M))


def parse(path: Path) -> list[Command]:
    commands = []
    for real, lines in _blocks(path.read_text()):
        for line in re.sub(r"\\\n\s*", " ", "\n".join(lines)).splitlines():
            argv = shlex.split(line, comments=True)
            if not argv:
                continue
            cmd = Command(line.split("  #")[0].strip(), real, argv)
            if argv[0] == "vitmemad":
                cmd.task, cmd.args = argv[1], argv[2:]
            elif argv[:2] == ["make", "demo"]:  # its recipe: `$(PY) -m vitmemad.train` or `.../vitmemad train`
                recipe = _make_recipe("demo")
                if recipe[0].endswith("vitmemad"):
                    cmd.task, cmd.args = recipe[1], recipe[2:]
                else:
                    assert recipe[:2] == ["python", "-m"] and recipe[2].startswith("vitmemad."), recipe
                    cmd.task, cmd.args = recipe[2].split(".", 1)[1], recipe[3:]
                assert cmd.task == "train", recipe
            commands.append(cmd)
    return commands


README_COMMANDS = parse(REPO / "README.md")
RUNNABLE = [c for c in README_COMMANDS if not c.real]


def _arg(args: list[str], key: str) -> str | None:
    return next((a.split("=", 1)[1] for a in args if a.startswith(f"{key}=")), None)


def _console_script() -> Path | None:
    script = Path(sys.executable).parent / "vitmemad"
    return script if script.is_file() else None


def _args(cmd: Command) -> list[str]:
    """The `vitmemad` command's arguments, at smoke size."""
    args = list(cmd.args)
    if cmd.task == "train":
        args += ["debug=smoke", "num_threads=1"] + ([] if _arg(args, "data") else TINY_DEMO)
    elif cmd.task in ("eval", "predict", "export"):
        args += ["num_threads=1"]
    elif cmd.task == "report":
        args += ["--include-debug"]  # the trainings here are debug=smoke runs, which a report leaves out
    return [cmd.task, *args]


def _metrics_files(root: Path) -> set[Path]:
    return {p.resolve() for p in (root / "outputs").rglob("metrics.json")} if (root / "outputs").exists() else set()


def _read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))


class ReadmeRun:
    """Runs the runnable commands in README order in one folder, on demand, and checks each as it ends."""

    def __init__(self, root: Path):
        self.root, self.done, self.seen = root, [], {}
        self.predictions: dict[str, dict[str, float]] = {}  # input -> {file name: score} of checkpoint predicts
        self.latest: list[tuple[str, Path, Path | None]] = []  # (train command, its run folder, latest's target)
        self._make_images()

    def _make_images(self) -> None:
        from vitmemad.data.demo import write_demo_dataset

        demo = write_demo_dataset(self.root / "demo_src", "brick", crop_size=64, n_train=30, n_test_good=2,
                                  n_test_defect=3)
        good, new = self.root / "my_images" / "good", self.root / "my_images" / "new"
        good.mkdir(parents=True)
        new.mkdir()
        for p in _images(demo / "train" / "good"):
            shutil.copy(p, good / p.name)
        for p in sorted(demo.glob("test/*/*.png")):
            shutil.copy(p, new / f"{p.parent.name}_{p.name}")

    def result(self, index: int) -> tuple[subprocess.CompletedProcess | str, list[str]]:
        while len(self.done) <= index:
            self.done.append(self._run(RUNNABLE[len(self.done)]))
        return self.done[index]

    def _run(self, cmd: Command):
        if cmd.argv[0] == "make" and cmd.task is None:
            return "checked", [] if cmd.argv[1] in _make_targets() else [f"no make target {cmd.argv[1]!r}"]
        if cmd.task not in SUBCOMMANDS:
            return "checked", [f"not a vitmemad command: {cmd.text}"]
        if "$" in cmd.text or "<" in cmd.text:
            return "checked", [f"a runnable block holds a placeholder: {cmd.text}"]
        key = (cmd.task, tuple(cmd.args))
        if key in self.seen:
            return self.seen[key]
        before = _metrics_files(self.root)
        proc = run_here("vitmemad", *_args(cmd), check=False, cwd=self.root)  # W&B offline: conftest
        problems = [] if proc.returncode == 0 else [
            f"exit {proc.returncode}: vitmemad {' '.join(_args(cmd))}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"]
        if not problems:
            problems = getattr(self, f"_check_{cmd.task}")(cmd, _metrics_files(self.root) - before)
        self.seen[key] = (proc, problems)
        return proc, problems

    def _check_train(self, cmd: Command, new: set[Path]) -> list[str]:
        if len(new) != 1:
            return [f"expected one new metrics.json, found {sorted(map(str, new))}"]
        (path,) = new
        metrics = json.loads(path.read_text())
        status = json.loads((path.parent / "status.json").read_text())
        latest = self.root / "outputs" / "train" / "latest"
        self.latest.append((cmd.text, path.parent, latest.resolve() if latest.exists() else None))
        problems = [] if status["state"] == "finished" else [f"status.json: {status}"]
        if metrics["debug"] != "smoke":
            problems.append(f"metrics.json debug = {metrics['debug']!r}")
        folder = _arg(cmd.args, "data") == "folder"
        no_defects = folder and _arg(cmd.args, "data.abnormal_dir") is None
        no_masks = folder and _arg(cmd.args, "data.mask_dir") is None
        for key, undefined in (("image_AUROC", no_defects), ("pixel_AUROC", no_masks), ("PRO", no_masks)):
            value = metrics[key]
            if undefined and value is not None:
                problems.append(f"{key} = {value}, expected null (no defective images or masks)")
            if not undefined and not (isinstance(value, float) and 0.0 <= value <= 1.0):
                problems.append(f"{key} = {value!r}")
        return problems

    def _check_eval(self, cmd: Command, new: set[Path]) -> list[str]:
        if len(new) != 1:
            return [f"expected one new metrics.json, found {sorted(map(str, new))}"]
        value = json.loads(next(iter(new)).read_text())["image_AUROC"]
        return [] if isinstance(value, float) and 0.0 <= value <= 1.0 else [f"eval image_AUROC = {value!r}"]

    def _check_predict(self, cmd: Command, new: set[Path]) -> list[str]:
        source, out = self.root / _arg(cmd.args, "input"), self.root / _arg(cmd.args, "output")
        columns, rows = _read_csv(out / "predictions.csv")
        problems = [] if columns[:5] == CONTRACT_COLUMNS and "score_normalized" in columns else [f"columns {columns}"]
        names = {Path(r["path"]).name: r for r in rows}
        if sorted(names) != [p.name for p in _images(source)]:
            problems.append(f"predictions for {sorted(names)}, images {[p.name for p in _images(source)]}")
        for name, row in names.items():
            score, threshold = float(row["score"]), float(row["threshold"])
            if not math.isfinite(score) or row["error"]:
                problems.append(f"{name}: {row}")
            elif "score_normalized" in row and not math.isclose(float(row["score_normalized"]), score / threshold,
                                                                 rel_tol=1e-4):
                problems.append(f"{name}: score_normalized {row['score_normalized']} != {score} / {threshold}")
        scores = {n: float(r["score"]) for n, r in names.items() if not r["error"]}
        reference = self.predictions.get(str(source))
        if not _arg(cmd.args, "ckpt_path").endswith(".onnx"):
            self.predictions[str(source)] = scores
        elif reference is None:
            problems.append("ONNX predict without an earlier checkpoint predict of the same input")
        else:  # ONNX Runtime (fp32) against PyTorch on the same images: the same scores
            problems += [f"{n}: onnx {s} vs checkpoint {reference.get(n)}" for n, s in scores.items()
                         if n not in reference or not math.isclose(s, reference[n], rel_tol=1e-3, abs_tol=1e-5)]
        return problems

    def _check_export(self, cmd: Command, new: set[Path]) -> list[str]:
        ckpt = self.root / _arg(cmd.args, "ckpt_path")
        onnx = self.root / _arg(cmd.args, "output") if _arg(cmd.args, "output") else ckpt.parent / "model.onnx"
        return [] if onnx.is_file() and onnx.stat().st_size > 1000 else [f"{onnx} not written"]

    def _check_report(self, cmd: Command, new: set[Path]) -> list[str]:
        dirs = [a for a in cmd.args if not a.startswith("-")]
        out = self.root / (cmd.args[cmd.args.index("--out") + 1] if "--out" in cmd.args else dirs[0])
        if not (out / "results.md").is_file():
            return [f"{out}/results.md not written"]
        _, rows = _read_csv(out / "results.csv")
        return [] if rows else ["results.csv has no rows"]

    _check_bench = _check_report


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory) -> ReadmeRun:
    return ReadmeRun(tmp_path_factory.mktemp("readme"))


def test_readme_has_the_commands_it_promises():
    """Quickstart, own images, predict, export, predict from ONNX and report are runnable, not only described."""
    runnable = [c.text for c in RUNNABLE]
    assert "make demo" in runnable and "make test" in runnable
    tasks = [(c.task, _arg(c.args, "data"), (_arg(c.args, "ckpt_path") or "").endswith(".onnx")) for c in RUNNABLE]
    for want in [("train", "folder", False), ("predict", None, False), ("export", None, False),
                 ("predict", None, True), ("report", None, False)]:
        assert want in tasks, f"{want} missing from the README's runnable blocks: {runnable}"
    assert not [c.text for c in README_COMMANDS if "shared/" in c.text], "commands must use placeholders"


@pytest.mark.parametrize("index", range(len(RUNNABLE)), ids=[c.text[:60] for c in RUNNABLE])
def test_readme_command(readme_run, index):
    proc, problems = readme_run.result(index)
    assert not problems, "\n".join(problems)


def test_latest_points_at_each_new_training(readme_run):
    readme_run.result(len(RUNNABLE) - 1)
    assert readme_run.latest, "no training ran"
    wrong = [(text, str(run), str(target)) for text, run, target in readme_run.latest if target != run]
    assert not wrong, f"outputs/train/latest after each training (command, run, latest): {wrong}"


def test_console_script():
    script = _console_script()
    assert script is not None, f"no `vitmemad` console script beside {sys.executable} (pip install -e .)"
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and all(s in proc.stdout for s in SUBCOMMANDS), proc.stdout + proc.stderr


@pytest.mark.parametrize("doc", CHECKED_DOCS)
def test_real_blocks_are_valid_commands(doc, compose):
    """Commands that are not run still name real commands, make targets and config keys."""
    targets = _make_targets()
    for cmd in (c for c in parse(REPO / doc) if c.real):
        if cmd.argv[0] == "make":
            assert cmd.argv[1] in targets, cmd.text
            continue
        if cmd.argv[:2] == ["pip", "install"]:  # the install section
            continue
        if cmd.argv[0] == "python" and cmd.argv[1].startswith("experiments/"):  # research scripts
            assert (REPO / cmd.argv[1]).is_file(), cmd.text
            continue
        assert cmd.argv[0] == "vitmemad" and cmd.task in SUBCOMMANDS, cmd.text
        if cmd.task == "train" and "-m" not in cmd.args:
            overrides = [re.sub(r"\$(\w+)", r"/data/\1", a) for a in cmd.args]
            compose(*overrides)  # an unknown key or option raises
