"""Output folders that are never shared by two processes nor silently replaced.

:func:`folder_lock` holds an exclusive ``flock`` on ``<folder>/.lock`` for as long as a command writes there: a
second process is refused with a message naming the first one's pid. The kernel drops the lock when the holder
exits, also after a crash or ``kill -9``, so a stale lock never blocks anyone. :func:`refuse_earlier_results`
refuses a folder that already holds results unless the user said what to do with them.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = ".lock"


class FolderInUse(RuntimeError):
    """Another process holds the folder's lock."""


@contextmanager
def folder_lock(folder: str | os.PathLike, what: str) -> Iterator[Path]:
    """Hold ``folder``'s lock (creating the folder) for the ``with`` block; ``what`` names the writer in the
    message a second process gets, e.g. ``"training run"``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise FolderInUse(
                f"{folder}: another {what} is writing here (pid {holder}); wait for it to finish or choose another "
                "folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield folder
    finally:
        os.close(fd)  # closing releases the lock; the file stays, harmless, for the next holder


def refuse_earlier_results(
    folder: str | os.PathLike, markers: tuple[str, ...], what: str, options: str
) -> None:
    """Raise FileExistsError when ``folder`` holds any of ``markers`` (files or folders left by an earlier
    run), naming what it holds and the ``options`` that say what to do with it."""
    folder = Path(folder)
    found = [m for m in markers if (folder / m).exists()]
    if found:
        raise FileExistsError(f"{folder}: holds {what} ({', '.join(found)}); {options}")
