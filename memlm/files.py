"""Writing files so that a reader (or a run killed mid-write) never sees half of one."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
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


def atomic_directory(path: str | os.PathLike, write: Callable[[Path], object], overwrite: bool = False) -> Path:
    """Call ``write(temporary directory)`` (a new directory next to ``path``), then rename it to ``path``: a reader
    sees no directory, the old one or the whole new one. A non-empty ``path`` is replaced only with ``overwrite``
    (checked by the caller before any work; here again); the temporary directory is removed if anything fails, and
    the old directory stays in place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.partial"
    temporary.mkdir()
    try:
        write(temporary)
        if path.exists() and any(path.iterdir()):
            if not overwrite:
                raise FileExistsError(f"{path} exists and is not empty")
            old = temporary.with_suffix(".old")
            os.replace(path, old)
            try:
                os.replace(temporary, path)
            except BaseException:
                os.replace(old, path)
                raise
            shutil.rmtree(old)
        else:
            os.replace(temporary, path)  # onto nothing or an empty directory
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return path
