"""Atomic file writes: a reader sees the old file or the complete new one, never half.

In: a destination path and a callback that writes to a temporary path. Out: the file
at its destination, written to a temporary sibling, fsynced, then renamed into place.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(destination: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``destination``; rename it into place on success.

    On an exception the temporary file is removed and ``destination`` is untouched.
    """
    target = Path(destination)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=".tmp", dir=target.parent
    )
    os.close(handle)
    temporary_path = Path(temporary)
    try:
        yield temporary_path
        with open(temporary_path, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary_path, target)
    finally:
        temporary_path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # make the rename itself durable where supported
        directory = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def write_atomic(destination: str | os.PathLike[str], write: Callable[[Path], None]) -> None:
    """Call ``write(temporary_path)`` and move the result to ``destination`` atomically."""
    with atomic_path(destination) as temporary:
        write(temporary)


def write_text_atomic(destination: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``destination`` atomically."""
    with atomic_path(destination) as temporary:
        temporary.write_text(text, encoding="utf-8")
