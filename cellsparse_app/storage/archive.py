"""Zip a directory and extract untrusted zip files safely: the one implementation of both.

Project files and model zips come from users' browsers and uploads, so extraction treats every
archive as hostile and refuses what a hostile or broken one could do: absolute paths, drive
letters, ``..`` components or backslashes (zip slip), symbolic links and device files, too many
entries, too many bytes once uncompressed (zip bombs; the headers' sizes are checked before
anything is written, and a member is never written beyond the size its header declared), members
compressed suspiciously well, and, when asked, files that are not listed as allowed.

:func:`safe_extract` checks the whole archive, then extracts it; the building blocks
(:func:`open_archive`, :func:`checked_members`, :func:`extract_members`) let
:mod:`cellsparse_app.storage.model_zip` add its own layout rules and an atomic rename on top.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable, Iterable

logger = logging.getLogger(__name__)

#: Errors that reading a damaged (or unsupported) member raises inside :mod:`zipfile`.
_CORRUPT_MEMBER_ERRORS = (zipfile.BadZipFile, EOFError, NotImplementedError, zlib.error)


@dataclasses.dataclass(frozen=True)
class ExtractLimits:
    """Limits on an archive, checked before anything is written.

    Attributes:
        max_members: most entries in the archive (folders included).
        max_total_bytes: most bytes after decompression, all files together.
        max_ratio: largest compression ratio of one member (bombs have ratios of 1000+).
    """

    max_members: int = 10_000
    max_total_bytes: int = 8 * 1024**3
    max_ratio: float = 1000.0


def zip_directory(directory: str | Path, dest: str | Path | None = None) -> bytes | Path:
    """Zip every regular file under ``directory`` (paths relative to it, sorted, no symlinks).

    Args:
        directory: what to pack.
        dest: write the archive there and return its path; None returns the bytes.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"{directory} is not a directory")
    buffer = io.BytesIO() if dest is None else None
    target = buffer if buffer is not None else Path(dest)
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for path in sorted(directory.rglob("*")):
            if path.is_file() and not path.is_symlink():
                zf.write(path, path.relative_to(directory).as_posix())
    return buffer.getvalue() if buffer is not None else Path(dest)  # type: ignore[arg-type]


def safe_extract(
    source: str | Path | bytes,
    dest: str | Path,
    *,
    allowed: Callable[[PurePosixPath], bool] | None = None,
    limits: ExtractLimits = ExtractLimits(),
) -> list[Path]:
    """Extract a zip archive into ``dest`` after checking every member.

    Args:
        source: path to the zip or its bytes.
        dest: target directory (created).
        allowed: predicate on each member's relative path; a member it rejects fails the
            whole extraction.
        limits: size and count limits.

    Returns:
        The extracted file paths.

    Raises:
        ValueError: naming the first offending member or limit. Nothing is extracted when a
            check on the archive's listing fails; a member whose data turns out corrupt or
            larger than declared stops the extraction where it is.
    """
    with open_archive(source) as zf:
        members = checked_members(zf, limits, allowed)
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        return extract_members(zf, members, dest)


def open_archive(source: str | Path | bytes) -> zipfile.ZipFile:
    """Open a zip from its path or bytes; ValueError (not ``BadZipFile``) if it is none."""
    data = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    try:
        return zipfile.ZipFile(data)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ValueError(f"not a valid zip archive: {exc}") from exc


def checked_members(
    zf: zipfile.ZipFile,
    limits: ExtractLimits = ExtractLimits(),
    allowed: Callable[[PurePosixPath], bool] | None = None,
) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """The archive's files with their safe relative paths, after checking the whole listing.

    Folder entries are left out (folders are made for the files inside them).

    Raises:
        ValueError: naming the first unsafe member or the limit exceeded.
    """
    entries = zf.infolist()
    if len(entries) > limits.max_members:
        raise ValueError(f"archive has {len(entries)} entries (limit {limits.max_members})")
    members = []
    total = 0
    for info in entries:
        if info.is_dir():
            continue
        path = member_path(info)
        _check_regular_file(info)
        if allowed is not None and not allowed(path):
            raise ValueError(f"unexpected file {info.filename!r} in the archive")
        total += info.file_size
        if total > limits.max_total_bytes:
            raise ValueError(
                f"archive expands beyond its size limit: more than {limits.max_total_bytes} "
                "bytes once uncompressed; refusing it"
            )
        if info.compress_size and info.file_size / info.compress_size > limits.max_ratio:
            raise ValueError(
                f"archive member {info.filename!r} is compressed suspiciously well (zip bomb?)"
            )
        members.append((info, path))
    return members


def member_path(info: zipfile.ZipInfo) -> PurePosixPath:
    """The member's relative path; ValueError for any name that could leave the target folder."""
    name = info.filename
    path = PurePosixPath(name)
    if not name or "\x00" in name or not path.parts:
        reason = "empty name or NUL byte"
    elif "\\" in name:  # a separator on Windows: "..\\x" would escape there
        reason = "backslash"
    elif name.startswith("/") or path.is_absolute() or ":" in path.parts[0]:
        reason = "absolute"
    elif ".." in path.parts:
        reason = "'..' component"
    else:
        return path
    raise ValueError(f"archive member {name!r} has an unsafe path ({reason})")


def extract_members(
    zf: zipfile.ZipFile,
    members: Iterable[tuple[zipfile.ZipInfo, PurePosixPath]],
    root: Path,
) -> list[Path]:
    """Write checked ``members`` (from :func:`checked_members`) under ``root``; their paths."""
    root = Path(root).resolve()
    written = []
    for info, path in members:
        target = root.joinpath(*path.parts).resolve()
        if root not in target.parents:  # e.g. through a symlink already in ``root``
            raise ValueError(f"archive member {info.filename!r} escapes the target folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with zf.open(info) as src, open(target, "wb") as out:
                _copy_limited(src, out, info.file_size, info.filename)
        except _CORRUPT_MEMBER_ERRORS as exc:
            raise ValueError(f"archive member {info.filename!r} is corrupt: {exc}") from exc
        written.append(target)
    logger.debug("extracted %d files into %s", len(written), root)
    return written


def _check_regular_file(info: zipfile.ZipInfo) -> None:
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise ValueError(f"archive member {info.filename!r} is not a regular file (symbolic link)")
    # Mode 0 (no Unix attributes, e.g. zips made on Windows) or no file type bits is a plain file.
    if mode and stat.S_IFMT(mode) and not stat.S_ISREG(mode):
        raise ValueError(
            f"archive member {info.filename!r} is not a regular file (device or special file)"
        )


def _copy_limited(src: BinaryIO, out: BinaryIO, declared: int, name: str) -> None:
    # The header's size can lie: never write more than it declared.
    remaining = declared
    while chunk := src.read(1 << 20):
        remaining -= len(chunk)
        if remaining < 0:
            raise ValueError(f"archive member {name!r} is larger than its header says")
        out.write(chunk)
