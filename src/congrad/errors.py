"""The one base of every error a user can cause and fix.

In: nothing (a leaf: this module imports nothing of congrad). Out: :class:`CongradError`.
Every user error (a bad config, a bad data file, a stage run out of order, a missing
model or package, a judge that cannot be reached) subclasses it, keeping the built-in
type it had (``ValueError``, ``RuntimeError``) so callers that caught those still do. The
CLI prints a ``CongradError`` as one line and exits 2; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations


class CongradError(Exception):
    """A user error: its message says what went wrong, where, and what to do."""
