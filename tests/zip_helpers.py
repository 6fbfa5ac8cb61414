"""Hand-made zip archives for the extraction tests (hostile names, symbolic links)."""

from __future__ import annotations

import io
import zipfile


def make_zip(entries: dict[str, bytes], symlink: str | None = None) -> bytes:
    """Zip bytes holding ``entries`` (name -> data), plus a symlink called ``symlink`` if given."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = 0o120777 << 16  # S_IFLNK: a link to /etc/passwd
            zf.writestr(info, "/etc/passwd")
    return buf.getvalue()
