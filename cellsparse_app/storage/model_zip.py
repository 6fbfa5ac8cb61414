"""A model directory (``config.json`` + ``weights.pt`` ...) as zip bytes, and back, safely.

:func:`unzip_model` treats the archive as hostile (it may come from an upload): every check of
:mod:`cellsparse_app.storage.archive` applies (zip slip, links, entry count, size and
compression-ratio caps), and the model appears at ``dest`` only when everything was extracted
(written to a temporary sibling directory, then renamed), so a failure leaves nothing behind.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path, PurePosixPath

from cellsparse_app.storage.archive import (
    ExtractLimits,
    checked_members,
    extract_members,
    open_archive,
    zip_directory,
)

logger = logging.getLogger(__name__)

#: File that marks a model directory.
MODEL_CONFIG = "config.json"
#: Default cap on the total uncompressed size of a model zip.
MAX_MODEL_BYTES: int = 2 * 1024**3
#: Default cap on the number of entries.
MAX_MODEL_FILES: int = 256


def zip_model(directory: str | Path) -> bytes:
    """Zip the regular files of a model directory (relative paths, symlinks skipped).

    Raises:
        ValueError: if ``directory`` is not a model directory (no ``config.json``).
    """
    directory = Path(directory)
    if not (directory / MODEL_CONFIG).is_file():
        raise ValueError(f"{directory} is not a model directory (no {MODEL_CONFIG})")
    return zip_directory(directory)  # type: ignore[return-value]  # no dest: bytes


def unzip_model(
    data: bytes,
    dest: str | Path,
    *,
    max_bytes: int = MAX_MODEL_BYTES,
    max_files: int = MAX_MODEL_FILES,
) -> Path:
    """Extract a model zip made by :func:`zip_model` (or by hand) into ``dest``.

    A zip whose files all sit in one top-level folder (``mymodel/config.json``) is accepted too;
    the folder is stripped.

    Args:
        data: the zip file's bytes.
        dest: directory to create; it must not exist or be empty.
        max_bytes: cap on the total uncompressed size.
        max_files: cap on the number of entries.

    Returns:
        ``dest`` as a ``Path``.

    Raises:
        ValueError: not a zip, unsafe entry names, too big, no ``config.json``, ``dest`` not empty.
    """
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ValueError(f"{dest} already exists and is not an empty directory")
    limits = ExtractLimits(max_members=max_files, max_total_bytes=max_bytes)
    with open_archive(data) as zf:
        members = checked_members(zf, limits)
        prefix = _common_folder([path for _, path in members])
        members = [(info, PurePosixPath(*path.parts[len(prefix.parts):]))
                   for info, path in members]
        if PurePosixPath(MODEL_CONFIG) not in [path for _, path in members]:
            raise ValueError(f"not a model zip: no {MODEL_CONFIG} at its top level")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            extract_members(zf, members, tmp)
            if dest.exists():
                dest.rmdir()  # empty, checked above
            tmp.rename(dest)
        except BaseException:  # whatever stops the extraction, leave nothing half-written
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    logger.info("unzipped model into %s", dest)
    return dest


def _common_folder(names: list[PurePosixPath]) -> PurePosixPath:
    """The single top-level folder every entry lives in, when there is no config at the top."""
    if not names or PurePosixPath(MODEL_CONFIG) in names:
        return PurePosixPath()
    firsts = {n.parts[0] for n in names}
    if len(firsts) == 1 and all(len(n.parts) > 1 for n in names):
        return PurePosixPath(next(iter(firsts)))
    return PurePosixPath()
