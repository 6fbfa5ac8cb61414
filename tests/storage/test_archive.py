"""Safe zip extraction refuses traversal, links, bombs and unexpected files."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import PurePosixPath

import pytest
from zip_helpers import make_zip

from cellsparse_app.storage.archive import ExtractLimits, safe_extract, zip_directory


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
     ("C:/win.txt", "absolute"), ("..\\evil.txt", "unsafe path"), ("a\\b.txt", "backslash")],
)
def test_rejects_escaping_paths(tmp_path, name, match):
    with pytest.raises(ValueError, match=match):
        safe_extract(make_zip({name: b"x"}), tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()


def test_rejects_symlinks_bombs_and_unlisted(tmp_path):
    with pytest.raises(ValueError, match="not a regular file"):
        safe_extract(make_zip({}, symlink="link"), tmp_path / "a")
    with pytest.raises(ValueError, match="zip bomb"):
        safe_extract(make_zip({"big": b"\x00" * 5_000_000}), tmp_path / "b")
    with pytest.raises(ValueError, match="more than 10 bytes"):
        safe_extract(make_zip({"f": b"0123456789abc"}), tmp_path / "c",
                     limits=ExtractLimits(max_total_bytes=10))
    with pytest.raises(ValueError, match="unexpected file 'other.txt'"):
        safe_extract(make_zip({"other.txt": b"x"}), tmp_path / "d",
                     allowed=lambda p: p == PurePosixPath("ok.txt"))
    with pytest.raises(ValueError, match="not a valid zip"):
        safe_extract(b"not a zip at all", tmp_path / "e")
    assert not any((tmp_path / d).exists() and any((tmp_path / d).iterdir()) for d in "abcde")


def test_rejects_devices_and_too_many_entries(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        device = zipfile.ZipInfo("tty")
        device.external_attr = (stat.S_IFCHR | 0o644) << 16
        zf.writestr(device, b"")
    with pytest.raises(ValueError, match="not a regular file"):
        safe_extract(buf.getvalue(), tmp_path / "a")
    with pytest.raises(ValueError, match="3 entries"):
        safe_extract(make_zip({"a": b"1", "b": b"2", "c": b"3"}), tmp_path / "b",
                     limits=ExtractLimits(max_members=2))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
