"""ModelStore: name validation, no path traversal, atomic save, delete, crash recovery."""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import pytest

from cellsparse_app.storage.model_store import ModelStore, validate_name


class FakeModel:
    """Stands in for TrainedModel: ``save`` writes config.json + weights.pt."""

    def __init__(self, tag: str, fail: bool = False) -> None:
        self.tag = tag
        self.fail = fail

    def save(self, directory) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "weights.pt").write_bytes(b"w" * 10)
        if self.fail:
            raise OSError("disk full")
        (directory / "config.json").write_text(json.dumps({"tag": self.tag}))
        return directory


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("name", ["default", "my-model_1.2", "A", "x" * 64])
def test_valid_names(name):
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "..", "../../etc", "a/b", "/tmp/x", ".hidden", "x" * 65, "a b", "a\\b", "naïve", "a\x00b",
     "-rf"],
)
def test_invalid_names(name):
    with pytest.raises(ValueError, match="invalid model name"):
        validate_name(name)


def test_non_string_name():
    with pytest.raises(TypeError):
        validate_name(3)


def test_save_list_zip_delete(tmp_path):
    store = ModelStore(tmp_path)
    store.save("cellpose", "m1", FakeModel("one"))
    assert store.exists("cellpose", "m1")
    assert store.names("cellpose") == ["m1"]
    [info] = store.list()
    assert info["family"] == "cellpose" and info["name"] == "m1" and info["bytes"] > 10
    with zipfile.ZipFile(io.BytesIO(store.zip("cellpose", "m1"))) as zf:
        assert sorted(zf.namelist()) == ["config.json", "weights.pt"]
    store.save("cellpose", "m1", FakeModel("two"))  # replaces atomically
    config = json.loads((store.path("cellpose", "m1") / "config.json").read_text())
    assert config == {"tag": "two"}
    assert _tree(tmp_path) == {"models", "models/cellpose", "models/cellpose/m1",
                               "models/cellpose/m1/config.json", "models/cellpose/m1/weights.pt"}
    assert store.delete("cellpose", "m1") is True
    assert store.delete("cellpose", "m1") is False
    assert not store.exists("cellpose", "m1")
    assert _tree(tmp_path) == {"models", "models/cellpose"}


def test_failed_save_keeps_previous_model(tmp_path):
    store = ModelStore(tmp_path)
    store.save("cellpose", "m", FakeModel("good"))
    with pytest.raises(OSError, match="disk full"):
        store.save("cellpose", "m", FakeModel("bad", fail=True))
    config = json.loads((store.path("cellpose", "m") / "config.json").read_text())
    assert config == {"tag": "good"}
    assert [p.name for p in (tmp_path / "models" / "cellpose").iterdir()] == ["m"]


def test_traversal_never_leaves_root(tmp_path):
    root = tmp_path / "data"
    store = ModelStore(root)
    outside = tmp_path / "victim"
    outside.mkdir()
    (outside / "keep.txt").write_text("x")
    for family, name in [("cellpose", "../../victim"), ("..", "victim"), ("cellpose", "..")]:
        with pytest.raises(ValueError):
            store.delete(family, name)
        with pytest.raises(ValueError):
            store.save(family, name, FakeModel("x"))
    assert (outside / "keep.txt").read_text() == "x"


def test_symlink_escape_rejected(tmp_path):
    root = tmp_path / "data"
    store = ModelStore(root)
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, root / "models" / "evil")
    with pytest.raises(ValueError, match="escapes"):
        store.save("evil", "m", FakeModel("x"))
    assert list(outside.iterdir()) == []


def test_load_missing_model_is_clear(tmp_path):
    store = ModelStore(tmp_path)
    with pytest.raises(FileNotFoundError, match="no cellpose model named 'nope'"):
        store.load("cellpose", "nope")


def test_recovery_after_interrupted_swap(tmp_path):
    store = ModelStore(tmp_path)
    store.save("cellpose", "m", FakeModel("good"))
    fam = tmp_path / "models" / "cellpose"
    os.replace(fam / "m", fam / ".old-m-1234abcd")  # crash between the two renames
    (fam / ".tmp-m-deadbeef").mkdir()  # and a half-written new model
    store = ModelStore(tmp_path)
    assert store.exists("cellpose", "m")
    assert sorted(p.name for p in fam.iterdir()) == ["m"]
