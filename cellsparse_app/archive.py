"""Zip a directory and extract untrusted zip files safely.

Project files come from users' browsers, so extraction refuses what a hostile or broken archive
could do: absolute paths or ``..`` escaping the target, symbolic links, device files, too many
members, too many bytes once uncompressed (zip bombs), or files that are not listed as allowed.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import stat
import zipfile
from pathlib import Path, PurePosixPath
from typing import Callable

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ExtractLimits:
    """Limits on an archive before anything is written.

    Attributes:
        max_members: most files in the archive.
        max_total_bytes: most bytes after decompression, all files together.
        max_ratio: largest compression ratio of one member (bombs have ratios of 1000+).
    """

    max_members: int = 10_000
    max_total_bytes: int = 8 * 1024**3
    max_ratio: float = 1000.0


def zip_directory(directory: str | Path, dest: str | Path | None = None) -> bytes | Path:
    """Zip every regular file under ``directory`` (paths relative to it, sorted).

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
        ValueError: naming the first offending member or limit; nothing is extracted then.
    """
    data = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    try:
        zf = zipfile.ZipFile(data)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ValueError(f"not a valid zip archive: {exc}") from exc
    dest = Path(dest)
    with zf:
        members = [m for m in zf.infolist() if not m.is_dir()]
        _check_members(members, allowed, limits)
        dest.mkdir(parents=True, exist_ok=True)
        root = dest.resolve()
        written = []
        for member in members:
            target = (root / member.filename).resolve()
            if root not in target.parents:
                raise ValueError(f"archive member {member.filename!r} escapes the target folder")
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(member) as src, open(target, "wb") as out:
                    _copy_limited(src, out, member.file_size, member.filename)
            except zipfile.BadZipFile as exc:
                raise ValueError(f"archive member {member.filename!r} is corrupt: {exc}") from exc
            written.append(target)
    return written


def _check_members(
    members: list[zipfile.ZipInfo],
    allowed: Callable[[PurePosixPath], bool] | None,
    limits: ExtractLimits,
) -> None:
    if len(members) > limits.max_members:
        raise ValueError(f"archive has {len(members)} files (limit {limits.max_members})")
    total = 0
    for member in members:
        name = member.filename
        path = PurePosixPath(name)
        if name.startswith(("/", "\\")) or path.is_absolute() or ":" in path.parts[0]:
            raise ValueError(f"archive member {name!r} has an absolute path")
        if ".." in path.parts or "\\" in name:
            raise ValueError(f"archive member {name!r} has an unsafe path")
        mode = member.external_attr >> 16
        if mode and not (stat.S_ISREG(mode) or mode & 0o170000 == 0):
            raise ValueError(f"archive member {name!r} is not a regular file (link or device)")
        if allowed is not None and not allowed(path):
            raise ValueError(f"unexpected file {name!r} in the archive")
        total += member.file_size
        if total > limits.max_total_bytes:
            raise ValueError(
                f"archive expands to more than {limits.max_total_bytes} bytes; refusing it"
            )
        if member.compress_size and member.file_size / member.compress_size > limits.max_ratio:
            raise ValueError(f"archive member {name!r} is compressed suspiciously well (zip bomb?)")


def _copy_limited(src, out, declared: int, name: str) -> None:
    # The header's size can lie: never write more than it declared.
    remaining = declared
    while True:
        chunk = src.read(1 << 20)
        if not chunk:
            break
        remaining -= len(chunk)
        if remaining < 0:
            raise ValueError(f"archive member {name!r} is larger than its header says")
        out.write(chunk)
