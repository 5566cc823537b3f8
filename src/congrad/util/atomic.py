"""Atomic file writes: a reader sees the old file or the complete new one, never half.

In: a destination path and a callback that writes to a temporary path. Out: the file
at its destination, written to a temporary sibling, fsynced, then renamed into place.
A full disk (:data:`DISK_FULL`) raises its ``OSError`` with the destination as filename.
A temporary is named ``.<name>.<pid>.<random>.tmp``: one left behind by a writer that was
killed (SIGKILL runs no cleanup) is removed by the next write to the same destination.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

DISK_FULL = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})
"""The errnos of a write that failed for want of space: the disk, or the user's quota."""


@functools.cache
def _file_mode() -> int:
    """The mode ``open()`` gives a new file: 0666 less the process umask (read once)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(destination: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``destination``; rename it into place on success.

    On an exception the temporary file is removed and ``destination`` is untouched; a
    disk-full error that names no file is given ``destination``'s name.
    """
    target = Path(destination)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    handle, temporary = tempfile.mkstemp(
        prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent
    )
    os.close(handle)
    os.chmod(temporary, _file_mode())  # mkstemp's 0600 would hide artifacts from a team
    temporary_path = Path(temporary)
    try:
        yield temporary_path
        with open(temporary_path, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary_path, target)
    except OSError as error:
        if error.errno in DISK_FULL and error.filename is None:
            error.filename = str(target)  # a failed write() names no file: say which
        raise
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


def remove_stale_temporaries(destination: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporaries of ``destination`` whose writer process is gone; return them.

    A temporary sibling ``.<name>.<pid>.<anything>.tmp`` (or ``.old``: a folder renamed
    aside, as :func:`congrad.rounds.train.save_round_model` does) outlives a writer killed
    mid-write. It is removed only when no process ``<pid>`` runs, so a live writer's
    temporary (another thread, another process) is never touched.
    """
    target = Path(destination)
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(\d+)\.[^.]+\.(?:tmp|old)")
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for sibling in target.parent.iterdir():
            match = pattern.fullmatch(sibling.name)
            if match is None or _process_exists(int(match[1])):
                continue
            if sibling.is_dir() and not sibling.is_symlink():
                shutil.rmtree(sibling, ignore_errors=True)
            else:
                sibling.unlink(missing_ok=True)
            removed.append(sibling)
    return removed


def _process_exists(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:  # it exists but is not ours (EPERM), or we cannot tell: keep it
        return True
    return True
