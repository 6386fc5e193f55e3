"""One-line errors for the Hydra mains (train, eval, predict, export).

``run(main)`` calls a ``@hydra.main`` function. An error the user can fix (bad data, a bad or
mismatched checkpoint, an unknown config key or value, a NaN loss, an occupied run directory, a
missing file, a full disk) ends the program with one line on stderr and exit status 2::

    error: MVTec AD root folder not found: /data/mvtec. Expected layout: ...

and no traceback. The traceback is not lost: it goes to the run's log file (``<run dir>/<task>.log``)
when Hydra has set one up, and to the terminal with ``VITMEMAD_TRACEBACK=1`` or ``HYDRA_FULL_ERROR=1``.
Any other exception (a bug) propagates with its full traceback and exit status 1.

Hydra catches exceptions inside ``@hydra.main`` and prints its own (partial) traceback unless
``HYDRA_FULL_ERROR=1``; ``run`` sets that variable for the duration of the call so the exception
reaches it. ``LogJobErrors`` (a Hydra callback, enabled in ``conf/train.yaml``) writes every failed
job's error into that job's log file, so in a sweep no failure goes unrecorded even though Hydra
raises only the first one at the end. ``CheckRunDir`` (also in ``conf/train.yaml``) refuses a run
directory that holds a finished run before Hydra writes into it.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Any, Callable

log = logging.getLogger("vitmemad")

#: Exit status of a run stopped by a user-fixable error (argparse uses 2 for usage errors too).
EXIT_USER_ERROR = 2
TRACEBACK_ENV = "VITMEMAD_TRACEBACK"
_LOGGED = "_vitmemad_logged"


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions whose message tells the user what to fix (imported lazily: no import cycles)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from vitmemad.errors import VitmemadError

    types: list[type[BaseException]] = [
        VitmemadError, FloatingPointError, OSError, ValueError, HydraException, OmegaConfBaseException,
    ]
    out_of_memory = getattr(sys.modules.get("torch"), "OutOfMemoryError", None)
    if isinstance(out_of_memory, type):
        types.append(out_of_memory)
    return tuple(types)


def user_error(err: BaseException) -> BaseException | None:
    """The user-fixable error behind ``err``, or None when ``err`` looks like a bug.

    Hydra's ``instantiate`` wraps constructor errors (e.g. an unknown demo category) in an
    InstantiationException: the cause is reported when it is itself a user error.
    """
    from hydra.errors import InstantiationException

    types = _user_error_types()
    if isinstance(err, InstantiationException) and isinstance(err.__cause__, types):
        return user_error(err.__cause__) or err
    return err if isinstance(err, types) else None


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def one_line(err: BaseException) -> str:
    """``err``'s message on one line (multi-line messages are joined; worker tracebacks dropped)."""
    text = str(err)
    if "Original Traceback" in text:  # re-raised from a DataLoader worker: keep the original message
        last = _lines(text)[-1]
        name = type(err).__name__
        for prefix in (f"{type(err).__module__}.{name}: ", f"{name}: "):
            if last.startswith(prefix):
                last = last[len(prefix):]
        text = last
    message, listing = "", False
    for line in _lines(text):
        if line.startswith("Config search path"):  # Hydra's MissingConfigException: the rest is noise
            break
        if line.startswith(("object_type=", "reference_type=")) or (
            line.startswith("full_key:") and line.split(":", 1)[1].strip() in message
        ):  # OmegaConf's detail lines
            continue
        if not message:
            message = line
        elif listing:  # items after "Available options in 'model':"
            message += (" " if message.endswith(":") else ", ") + line
        else:
            message += (" " if message.endswith((".", ",", ";")) else "; ") + line
        listing = listing or line.endswith(":")
    from hydra.errors import OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    override = getattr(err, "override", None)
    if isinstance(err, OverrideParseException) and override and override not in message:
        message = f"cannot parse override {override!r}: {message}"
    cause = err.__cause__
    if isinstance(cause, OmegaConfBaseException) and _lines(str(cause)):
        message += f" ({_lines(str(cause))[0]})"
    return message or type(err).__name__


def _emit(record: logging.LogRecord, files: bool) -> None:
    """Hand ``record`` to the root logger's file handlers (``files``) or to its other handlers."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) == files and record.levelno >= handler.level:
            handler.handle(record)


def _log_to_files(err: BaseException, message: str) -> None:
    """Write the error and its traceback to the log files Hydra set up (not to the console)."""
    if getattr(err, _LOGGED, False):
        return
    _emit(log.makeRecord(log.name, logging.ERROR, __file__, 0, "error: %s", (message,),
                         (type(err), err, err.__traceback__)), files=True)
    _mark_logged(err)


def _report(message: str, prefix: str) -> None:
    """One line on stderr, and the same line in the run's log file."""
    _emit(log.makeRecord(log.name, logging.WARNING, __file__, 0, "%s%s", (prefix, message), None), files=True)
    sys.stdout.flush()
    print(f"{prefix}{message}", file=sys.stderr, flush=True)


def _mark_logged(err: BaseException) -> None:
    try:
        setattr(err, _LOGGED, True)
    except AttributeError:  # exceptions with __slots__
        pass


class StopBeforeRun(BaseException):
    """Carries a user error out of a Hydra callback.

    Hydra turns an ``Exception`` raised in a callback into a warning and carries on; a
    ``BaseException`` passes through to ``run``, which reports ``error`` like any other.
    """

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def run(main: Callable[[], Any], argv: list[str] | None = None) -> Any:
    """Call ``main`` (a ``@hydra.main`` function); user errors exit 2 with ``error: <message>`` on stderr.

    ``argv`` replaces ``sys.argv[1:]`` during the call (tests); moved config keys are renamed
    (``vitmemad.config.ALIASES``).
    """
    show_traceback = _env_flag(TRACEBACK_ENV) or _env_flag("HYDRA_FULL_ERROR")
    saved_env, saved_argv = os.environ.get("HYDRA_FULL_ERROR"), sys.argv
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises instead of printing its own traceback
    from vitmemad import console, interrupts, run_state
    from vitmemad.config import register_resolvers, rewrite_overrides

    console.install()  # Lightning's chatter filtered by message (vitmemad/console.py)
    register_resolvers()  # the run folder's name (conf/hydra/default.yaml) is resolved by them
    sys.argv = [sys.argv[0], *rewrite_overrides(sys.argv[1:] if argv is None else argv)]  # old key spellings
    restore_signals, code = interrupts.install(), 1
    try:
        try:
            result, code = main(), 0
            return result
        except StopBeforeRun as stop:
            raise stop.error from None
    except (KeyboardInterrupt, SystemExit) as err:  # SIGINT 130, SIGTERM 143 (vitmemad/interrupts.py)
        signalled = interrupts.exit_code(err)
        if signalled is None:
            code = err.code if isinstance(err.code, int) else (0 if err.code is None else 1)  # type: ignore[union-attr]
            raise
        code = signalled
        _report(run_state.interrupted_message(interrupts.signal_name(code)), "interrupted: ")
        raise SystemExit(code) from None
    except Exception as err:
        cause = user_error(err)
        if cause is None:
            _log_to_files(err, f"{type(err).__name__}: {err}")
            raise
        code = EXIT_USER_ERROR
        message = one_line(cause)
        _log_to_files(err, message)
        if show_traceback:
            raise
        sys.stdout.flush()
        print(f"error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_USER_ERROR) from None
    finally:
        run_state.end(code)  # status.json: finished / failed / interrupted, with the exit code
        restore_signals()
        sys.argv = saved_argv
        if saved_env is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved_env


try:  # a Hydra callback; Hydra is a dependency, but keep `import vitmemad.cli` light and safe
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover
    _HydraCallback = object  # type: ignore[misc,assignment]


class LogJobErrors(_HydraCallback):
    """Hydra callback: write a failed job's error (and traceback) into that job's log.

    In a sweep (``-m``) the line also goes to the console, since Hydra raises only the first
    failure after all jobs have run; in a single run only the log file gets it (``run`` prints
    the console line).
    """

    def on_run_end(self, config: Any, job_return: Any = None, **kwargs: Any) -> None:
        """Hand a single run's error to ``run`` before Hydra prints "Error executing job with overrides"."""
        err = getattr(job_return, "_return_value", None)
        if isinstance(err, Exception) and getattr(job_return, "status", None) is not None \
                and job_return.status.name == "FAILED":
            raise StopBeforeRun(err)

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus
        from hydra.types import RunMode

        if getattr(job_return, "status", None) != JobStatus.FAILED:
            return
        err = job_return._return_value
        if not isinstance(err, BaseException):
            return
        cause = user_error(err)
        message = one_line(cause) if cause is not None else f"{type(err).__name__}: {err}"
        try:
            multirun = config.hydra.mode == RunMode.MULTIRUN
            overrides = list(config.hydra.overrides.task)
        except Exception:
            multirun, overrides = False, []
        if multirun:  # the console line; the log file gets the message with its traceback below
            _emit(log.makeRecord(log.name, logging.ERROR, __file__, 0, "job %s failed: %s", (overrides, message),
                                 None), files=False)
        _log_to_files(err, message)


class CheckRunDir(_HydraCallback):
    """Hydra callback of ``vitmemad.train``: refuse a run directory that a live run holds, that holds a finished
    run, or a config that fails the start-up checks (``vitmemad.config_check``).

    It runs before Hydra writes anything into the directory (``.hydra/``, the log, ``status.json``), so the refused
    run leaves the other one exactly as it was. ``ckpt_path=last`` (resume) is allowed;
    ``vitmemad.run_dir.resume_path`` has the rules and checks again inside the job.
    """

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        from pathlib import Path

        from vitmemad.config_check import check_train
        from vitmemad.run_dir import resume_path
        from vitmemad.run_state import check_free, is_child_rank

        try:
            if not is_child_rank():  # DDP ranks share rank 0's folder
                check_free(Path(str(config.hydra.run.dir)))  # a live run first: its folder is not finished yet
            check_train(config, resume_path(config.get("ckpt_path"), Path(str(config.hydra.run.dir))))
        except (OSError, ValueError) as err:
            raise StopBeforeRun(err) from err
