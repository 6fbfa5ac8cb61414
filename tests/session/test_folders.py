"""Session folders left by a previous server run are removed at start-up, recent ones kept."""

from __future__ import annotations

import os
import time

import pytest

from cellsparse_app.session.folders import SESSION_PREFIX, remove_stale_sessions
from cellsparse_app.session.workspace import Workspace

HOUR = 3600.0


def _age(path, seconds):
    """Set the modification time of ``path`` and everything below it to ``seconds`` ago."""
    stamp = time.time() - seconds
    for sub in [path, *path.rglob("*")]:
        os.utime(sub, (stamp, stamp), follow_symlinks=False)


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "sessions"
    old = root / f"{SESSION_PREFIX}old"
    (old / "project" / "images").mkdir(parents=True)
    (old / "project" / "images" / "img001.tif").write_bytes(b"x" * 100)
    _age(old, 48 * HOUR)
    busy = root / f"{SESSION_PREFIX}busy"  # an old folder, but a file changed a minute ago
    (busy / "project").mkdir(parents=True)
    (busy / "project" / "project.json").write_text("{}")
    _age(busy, 48 * HOUR)
    os.utime(busy / "project" / "project.json", (time.time() - 60, time.time() - 60))
    (root / f"{SESSION_PREFIX}new").mkdir()
    other = root / "not-a-session"
    other.mkdir()
    _age(other, 48 * HOUR)
    link = root / f"{SESSION_PREFIX}link"
    link.symlink_to(other, target_is_directory=True)
    return root


def test_removes_only_stale_session_folders(root):
    removed = remove_stale_sessions(root, 24 * HOUR)
    assert [p.name for p in removed] == [f"{SESSION_PREFIX}old"]
    assert sorted(p.name for p in root.iterdir()) == [
        "not-a-session", f"{SESSION_PREFIX}busy", f"{SESSION_PREFIX}link", f"{SESSION_PREFIX}new"
    ]
    assert (root / "not-a-session").is_dir()  # the link was not followed


def test_zero_age_or_missing_root_removes_nothing(root, tmp_path):
    assert remove_stale_sessions(root, 0) == []
    assert remove_stale_sessions(tmp_path / "missing", HOUR) == []
    assert (root / f"{SESSION_PREFIX}old").is_dir()


def test_workspaces_use_the_prefix(tmp_path):
    ws = Workspace.create(tmp_path)
    assert ws.directory.name.startswith(SESSION_PREFIX) and ws.directory.parent == tmp_path
    ws.close()


def test_app_context_cleans_up_at_start(root, monkeypatch):
    pytest.importorskip("gradio")
    from cellsparse_app.ui.context import AppContext, AppSettings

    AppContext(AppSettings(session_root=root, sam_model="fallback", session_max_age_hours=0))
    assert (root / f"{SESSION_PREFIX}old").is_dir()
    monkeypatch.setenv("CELLSPARSE_SESSION_MAX_AGE_HOURS", "12")
    settings = AppSettings(session_root=root, sam_model="fallback")
    assert settings.session_max_age_hours == 12
    AppContext(settings)
    assert not (root / f"{SESSION_PREFIX}old").exists()
    assert (root / f"{SESSION_PREFIX}new").is_dir()
    monkeypatch.setenv("CELLSPARSE_SESSION_MAX_AGE_HOURS", "soon")
    with pytest.raises(ValueError, match="'soon'"):
        AppSettings(session_root=root)
