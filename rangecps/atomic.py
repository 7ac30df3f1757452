"""Atomic file writes: a reader sees either the old file or the complete new one, never half of it."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Yield a file object for a temporary file beside ``path``; rename it onto ``path`` on success.

    The temporary file lives in the destination folder so that ``os.replace`` is a same-filesystem rename, which
    POSIX makes atomic. On any exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    # mkstemp creates 0600 files; give the result the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_save_array(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write the raw bytes of ``array`` (C order, its own dtype) to ``path`` atomically."""
    with atomic_write(path, "wb") as f:
        f.write(np.ascontiguousarray(array).tobytes())
