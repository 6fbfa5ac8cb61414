"""Safe zip extraction refuses traversal, links, bombs and unexpected files."""

from __future__ import annotations

import io
import zipfile
from pathlib import PurePosixPath

import pytest

from cellsparse_app.archive import ExtractLimits, safe_extract, zip_directory


def _zip(entries: dict[str, bytes], *, symlink: str | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


def test_round_trip(tmp_path):
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "x.txt").write_text("hello")
    (src / "a" / "b" / "y.bin").write_bytes(b"\x00\x01" * 100)
    data = zip_directory(src)
    out = safe_extract(data, tmp_path / "out")
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in out) == ["a/b/y.bin", "x.txt"]
    assert (tmp_path / "out" / "a" / "b" / "y.bin").read_bytes() == b"\x00\x01" * 100


@pytest.mark.parametrize(
    "name, match",
    [("../evil.txt", "unsafe path"), ("/abs.txt", "absolute"), ("a/../../e", "unsafe path"),
     ("C:/win.txt", "absolute")],
)
def test_rejects_escaping_paths(tmp_path, name, match):
    with pytest.raises(ValueError, match=match):
        safe_extract(_zip({name: b"x"}), tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()


def test_rejects_symlinks_bombs_and_unlisted(tmp_path):
    with pytest.raises(ValueError, match="not a regular file"):
        safe_extract(_zip({}, symlink="link"), tmp_path / "a")
    with pytest.raises(ValueError, match="zip bomb"):
        safe_extract(_zip({"big": b"\x00" * 5_000_000}), tmp_path / "b")
    with pytest.raises(ValueError, match="more than 10 bytes"):
        safe_extract(_zip({"f": b"0123456789abc"}), tmp_path / "c",
                     limits=ExtractLimits(max_total_bytes=10))
    with pytest.raises(ValueError, match="unexpected file 'other.txt'"):
        safe_extract(_zip({"other.txt": b"x"}), tmp_path / "d",
                     allowed=lambda p: p == PurePosixPath("ok.txt"))
    with pytest.raises(ValueError, match="not a valid zip"):
        safe_extract(b"not a zip at all", tmp_path / "e")
    assert not any((tmp_path / d).exists() and any((tmp_path / d).iterdir()) for d in "abcde")
