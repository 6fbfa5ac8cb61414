"""A model directory (``config.json`` + ``weights.pt`` ...) as zip bytes, and back, safely.

:func:`unzip_model` treats the archive as hostile (it may come from an upload): entries with
absolute paths, ``..`` components, drive letters or symlinks are rejected (zip slip), the number
of entries and the *actual* uncompressed size are capped while extracting (zip bombs lie in their
headers), and the model appears at ``dest`` only when everything was extracted (written to a
temporary sibling directory, then renamed), so a failure leaves nothing behind.
"""

from __future__ import annotations

import io as _io
import logging
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

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
    buf = _io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(directory.rglob("*")):
            if path.is_symlink() or not path.is_file():
                continue
            zf.write(path, path.relative_to(directory).as_posix())
    return buf.getvalue()


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
    try:
        zf = zipfile.ZipFile(_io.BytesIO(data))
    except (zipfile.BadZipFile, OSError) as exc:
        raise ValueError(f"not a valid zip file: {exc}") from exc
    with zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        if len(zf.infolist()) > max_files:
            raise ValueError(f"model zip has {len(zf.infolist())} entries (max {max_files})")
        names = [_safe_name(i) for i in infos]
        prefix = _common_folder(names)
        names = [PurePosixPath(*n.parts[len(prefix.parts):]) for n in names]
        if PurePosixPath(MODEL_CONFIG) not in names:
            raise ValueError(f"not a model zip: no {MODEL_CONFIG} at its top level")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            total = 0
            for info, name in zip(infos, names):
                target = tmp.joinpath(*name.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    while chunk := src.read(1 << 20):
                        total += len(chunk)
                        if total > max_bytes:
                            raise ValueError(f"model zip expands beyond {max_bytes} bytes")
                        out.write(chunk)
            if dest.exists():
                dest.rmdir()  # empty, checked above
            tmp.rename(dest)
        except (zipfile.BadZipFile, EOFError, NotImplementedError) as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise ValueError(f"corrupt model zip: {exc}") from exc
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dest


def _safe_name(info: zipfile.ZipInfo) -> PurePosixPath:
    """The entry's relative path; raises ``ValueError`` for anything that could escape ``dest``."""
    raw = info.filename
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise ValueError(f"unsafe entry {raw!r} in model zip: symbolic link")
    name = raw.replace("\\", "/")
    path = PurePosixPath(name)
    if (
        not name
        or "\x00" in name
        or path.is_absolute()
        or ".." in path.parts
        or (path.parts and ":" in path.parts[0])
    ):
        raise ValueError(f"unsafe entry {raw!r} in model zip")
    return path


def _common_folder(names: list[PurePosixPath]) -> PurePosixPath:
    """The single top-level folder every entry lives in, when there is no config at the top."""
    if not names or PurePosixPath(MODEL_CONFIG) in names:
        return PurePosixPath()
    firsts = {n.parts[0] for n in names}
    if len(firsts) == 1 and all(len(n.parts) > 1 for n in names):
        return PurePosixPath(next(iter(firsts)))
    return PurePosixPath()
