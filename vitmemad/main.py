"""`vitmemad COMMAND [ARGS]`: one command for everything (the console script of ``[project.scripts]``).

``train``, ``eval``, ``predict`` and ``export`` run their Hydra mains exactly as ``python -m vitmemad.<command>``
does (``runpy``: the same ``__main__``, so DDP ranks re-run the same command), with ARGS as Hydra's overrides.
``report`` and ``bench`` call their argparse ``main(argv)``. Exit status as for every entry point: 0 success,
1 an internal error (traceback), 2 a user error (one ``error:`` line), 130 SIGINT, 143 SIGTERM.

The top-level help imports nothing heavy (no torch): it is the first thing a new user runs.
"""
from __future__ import annotations

import importlib
import runpy
import sys
from typing import Sequence

#: command -> (module, its one-line description); the Hydra mains first
HYDRA_COMMANDS = {
    "train": ("vitmemad.train", "train on normal images, then test the best checkpoint (Hydra overrides)"),
    "eval": ("vitmemad.eval", "test a checkpoint: ckpt_path=FILE [data.root=...]"),
    "predict": ("vitmemad.predict", "score images: ckpt_path=FILE input=PATH output=DIR"),
    "export": ("vitmemad.export", "export a checkpoint to ONNX: ckpt_path=FILE [output=FILE]"),
}
ARGPARSE_COMMANDS = {
    "report": ("vitmemad.report.cli", "results.csv, results.md and figures/ from run folders: DIR..."),
    "bench": ("vitmemad.bench", "speed and memory benchmarks -> bench/results.json"),
}
COMMANDS = {**HYDRA_COMMANDS, **ARGPARSE_COMMANDS}

HELP = """\
vitmemad: unsupervised image anomaly detection (ViT encoder + memory module + coordinate attention,
PyTorch Lightning + Hydra). Trains on normal images only; scores images and pixels.

usage: vitmemad COMMAND [ARGS]
       vitmemad COMMAND --help        the command's options, config groups and examples

commands:
{commands}

examples:
  vitmemad train debug=smoke                       # seconds on a CPU: checks the setup end to end
  vitmemad train data=mvtec data.root=/data/mvtec data.category=bottle logger=tensorboard
  vitmemad train -m experiment=table6_ablation_smoke && vitmemad report outputs/experiments/<time>_table6_ablation_smoke
  vitmemad predict ckpt_path=outputs/train/latest/checkpoints/last.ckpt input=images/ output=predictions/
  vitmemad export ckpt_path=outputs/train/latest/checkpoints/last.ckpt

exit status: 0 success, 1 internal error (with its traceback), 2 user error (one `error:` line naming the key
or file), 130 interrupted (SIGINT), 143 terminated (SIGTERM).
`python -m vitmemad COMMAND` is the same; so is `python -m vitmemad.train` (eval, predict, export).
"""


def help_text() -> str:
    width = max(map(len, COMMANDS))
    return HELP.format(commands="\n".join(f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()))


def _code(err: SystemExit) -> int:
    """The exit status ``sys.exit(err.code)`` would give."""
    if err.code is None:
        return 0
    if isinstance(err.code, int):
        return err.code
    print(err.code, file=sys.stderr)
    return 1


def _light_help(config_name: str) -> None:
    """Hydra's ``--help`` / ``--hydra-help`` for ``conf/<config_name>.yaml`` without importing the command's module
    (torch, Lightning): the same text in a second instead of many. It only composes the config."""
    import hydra

    from vitmemad.config import CONF_DIR

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=config_name)
    def show_help(cfg: object) -> None:  # pragma: no cover  (Hydra prints the help and exits before calling it)
        raise RuntimeError("Hydra ran the job instead of printing its help")

    show_help()


def run_hydra(module: str, args: Sequence[str]) -> int:
    """``python -m <module> ARGS`` in this process (the module ends through ``vitmemad.cli.run``)."""
    saved = sys.argv
    sys.argv = [saved[0], *args]
    try:
        if any(a in ("--help", "-h", "--hydra-help") for a in args):
            _light_help(module.rpartition(".")[2])
        else:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as err:
        return _code(err)
    finally:
        sys.argv = saved
    return 0


def run_argparse(command: str, module_name: str, args: Sequence[str]) -> int:
    """``module.main(ARGS)``; SIGINT and SIGTERM end it with 130 and 143 like the Hydra commands."""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        print(f"error: `vitmemad {command}` is not available in this installation (no module {module_name})",
              file=sys.stderr)
        return 2
    from vitmemad import interrupts

    restore = interrupts.install()
    try:
        code = module.main(list(args))
    except SystemExit as err:
        code = _code(err)
    except (KeyboardInterrupt, interrupts.Terminated) as err:
        code = interrupts.EXIT_SIGINT if isinstance(err, KeyboardInterrupt) else interrupts.EXIT_SIGTERM
        print(f"interrupted: stopped by {interrupts.signal_name(code)}", file=sys.stderr, flush=True)
    finally:
        restore()
    return 0 if code is None else int(code)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["help"] and len(args) > 1:  # `vitmemad help train` = `vitmemad train --help`
        args = [args[1], "--help"]
    if not args or args[0] in ("-h", "--help", "help"):
        print(help_text(), end="")
        return 0
    if args[0] == "--version":
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"vitmemad {version('vitmemad')}")
        except PackageNotFoundError:
            print("vitmemad (not installed: running from a checkout)")
        return 0
    command, rest = args[0], args[1:]
    if command in HYDRA_COMMANDS:
        return run_hydra(HYDRA_COMMANDS[command][0], rest)
    if command in ARGPARSE_COMMANDS:
        return run_argparse(command, ARGPARSE_COMMANDS[command][0], rest)
    print(f"error: unknown command {command!r}; the commands are {', '.join(COMMANDS)} (see vitmemad --help)",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
