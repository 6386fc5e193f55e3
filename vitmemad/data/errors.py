"""Dataset error type.

One exception class for every data problem (missing folders, bad layout, unreadable files,
mismatched masks) so callers and the CLIs can catch data errors without hiding bugs.
It subclasses ValueError because a bad dataset is a bad input value.
"""
from __future__ import annotations

from vitmemad.errors import VitmemadError

class DatasetError(VitmemadError, ValueError):
    """A dataset is missing, malformed or unreadable; the message names the path or key."""
