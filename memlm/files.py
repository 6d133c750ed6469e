"""Writing files so that a reader (or a run killed mid-write) never sees half of one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call ``write(temporary path)``, then move the file onto ``path`` with ``os.replace``: a reader sees the old
    file or the whole new one, never a partial one (the temporary file is removed if ``write`` fails)."""
    path = Path(path)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write` of ``text``."""
    return atomic_write(path, lambda temporary: Path(temporary).write_text(text))
