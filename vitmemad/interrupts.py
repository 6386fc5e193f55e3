"""SIGINT and SIGTERM end a run with exit status 130 and 143, never 0 or 1.

Schedulers (SLURM, Kubernetes, systemd) send SIGTERM before a kill. While Lightning fits or tests, its own SIGTERM
handler is in charge: it lets the current batch finish and raises ``SIGTERMException`` (a ``SystemExit`` whose code
is 0). Outside Lightning (data set-up, writing outputs) the handler installed here raises ``Terminated``. Lightning
turns Ctrl-C during fit into ``sys.exit(1)``; the SIGINT handler here remembers the signal so the code stays 130.
"""
from __future__ import annotations

import signal
import threading
from typing import Any, Callable

EXIT_SIGINT = 128 + signal.SIGINT
EXIT_SIGTERM = 128 + signal.SIGTERM

_received: int | None = None


class Terminated(BaseException):
    """SIGTERM arrived outside Lightning's loops (a BaseException, like KeyboardInterrupt: no ``except
    Exception`` swallows it)."""


def _on_sigterm(signum: int, frame: Any) -> None:
    global _received
    _received = signum
    if signal.getsignal(signal.SIGTERM) is not _on_sigterm:  # called by Lightning's handler: it stops the loop
        return
    raise Terminated(f"received {signal.Signals(signum).name}")


def _on_sigint(signum: int, frame: Any) -> None:
    global _received
    _received = signum
    raise KeyboardInterrupt


def install() -> Callable[[], None]:
    """Install the handlers (main thread only); returns a function that puts the previous ones back."""
    global _received
    _received = None
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, _on_sigint)

    def restore() -> None:
        for sig, handler in saved.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    return restore


def exit_code(err: BaseException) -> int | None:
    """130 or 143 when ``err`` is how a signal ended the program, else None."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    if isinstance(err, (Terminated, SIGTERMException)):
        return EXIT_SIGTERM
    if isinstance(err, KeyboardInterrupt):
        return EXIT_SIGINT
    if isinstance(err, SystemExit) and _received is not None:  # Lightning's sys.exit(1) after Ctrl-C
        return 128 + _received
    return None


def signal_name(code: int) -> str:
    return signal.Signals(code - 128).name
