"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

#: Temporary files are named ``.<name>.<random>.tmp`` beside their target.
TMP_SUFFIX = ".tmp"


def write_atomic(path: str | Path, write: Callable[[BinaryIO], object], *,
                 durable: bool = False) -> Path:
    """Write ``path`` through ``write(file)`` into a temporary file beside it, then rename it.

    Args:
        durable: also ``fsync`` before the rename, so the file survives a power cut (job
            records); without it a crash of the process still never leaves half a file.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """:func:`write_atomic` for a UTF-8 text."""
    return write_atomic(path, lambda fh: fh.write(text.encode("utf-8")))
