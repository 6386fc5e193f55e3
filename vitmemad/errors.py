"""The one base class of every error a user can fix.

``vitmemad.cli.run`` turns a ``VitmemadError`` into one ``error: ...`` line on stderr and exit status 2; any
other exception is a bug and keeps its traceback (exit 1). Subclasses keep a built-in base too (``ValueError``,
``FileExistsError``, ...), so code that catches those still works.
"""
from __future__ import annotations


class VitmemadError(Exception):
    """A problem the user can fix; the message names the key or file and what was expected."""


class ConfigError(VitmemadError, ValueError):
    """A config key has a value that cannot work (checked at start-up, before any long work)."""
