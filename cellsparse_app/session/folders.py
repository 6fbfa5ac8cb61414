"""Per-browser-session folders on disk, and removal of those a previous server run left behind.

Each browser session works in its own folder ``<session root>/session-<token>`` (see
:meth:`cellsparse_app.session.workspace.Workspace.create`). The browser keeps the secret token, so a
reload (or a closed and reopened tab) finds its images, annotations and rounds again; the folder
therefore outlives the page. Folders in which nothing changed for longer than a configurable age
are deleted by :func:`remove_stale_sessions`, which the web app calls at start-up and from time
to time; recent ones are kept (their user may come back, or another server process shares the
root).
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import time
from pathlib import Path
from typing import Any, Collection

from cellsparse_app.storage.atomic_files import write_text_atomic

logger = logging.getLogger(__name__)

#: Name prefix of every session folder (nothing else under the root is ever removed).
SESSION_PREFIX = "session-"
#: What a session token looks like (``secrets.token_urlsafe``); nothing else names a folder.
_TOKEN = re.compile(r"[A-Za-z0-9_-]{22,64}")


def new_session_token() -> str:
    """A new secret session token: the browser keeps it to find its session after a reload."""
    return secrets.token_urlsafe(24)


def session_folder(root: str | Path, token: str) -> Path:
    """The folder of the session ``token`` under ``root`` (it may not exist).

    Raises:
        ValueError: ``token`` is not a session token (so it can never name another path).
    """
    if not isinstance(token, str) or not _TOKEN.fullmatch(token):
        raise ValueError(f"not a session token: {str(token)[:80]!r}")
    return Path(root) / f"{SESSION_PREFIX}{token}"


def remove_stale_sessions(
    root: str | Path, max_age_seconds: float, *, now: float | None = None,
    keep: Collection[Path] = (),
) -> list[Path]:
    """Delete session folders under ``root`` in which nothing changed for ``max_age_seconds``.

    Only folders named ``session-*`` directly under ``root`` are candidates (never symbolic
    links); a folder counts as changed when it or anything inside it was modified recently.
    Folders that cannot be removed are logged and skipped: start-up must not fail for them.

    Args:
        root: the session root (missing: nothing to do).
        max_age_seconds: age above which a folder is stale; ``<= 0`` disables the clean-up.
        now: the current time (``time.time()``; tests pass their own).
        keep: folders in use (open in a page), never removed.

    Returns:
        The removed folders.
    """
    root = Path(root)
    if max_age_seconds <= 0 or not root.is_dir():
        return []
    cutoff = (time.time() if now is None else now) - max_age_seconds
    removed = []
    for folder in sorted(root.glob(f"{SESSION_PREFIX}*")):
        if folder in keep or folder.is_symlink() or not folder.is_dir() \
                or _changed_since(folder, cutoff):
            continue
        try:
            shutil.rmtree(folder)
        except OSError as exc:
            logger.warning("could not remove stale session folder %s: %s", folder, exc)
            continue
        removed.append(folder)
    if removed:
        logger.info("removed %d stale session folder(s) under %s (unchanged for over %.1f h)",
                    len(removed), root, max_age_seconds / 3600)
    return removed


def _changed_since(folder: Path, cutoff: float) -> bool:
    """Whether ``folder`` or anything below it (links not followed) changed after ``cutoff``."""
    if folder.lstat().st_mtime > cutoff:
        return True
    for directory, subdirs, files in os.walk(folder):
        for name in subdirs + files:
            try:
                if os.lstat(os.path.join(directory, name)).st_mtime > cutoff:
                    return True
            except FileNotFoundError:  # deleted meanwhile by its own session
                continue
    return False


class SessionFile:
    """A session folder's small JSON state -- the project folder, the current image, the margin --
    that a page reload needs beyond the project itself. Written atomically (a reload never reads
    half a file); a missing or unreadable file reads as ``{}``."""

    NAME = "session.json"

    def __init__(self, directory: str | Path) -> None:
        self.path = Path(directory) / self.NAME

    def read(self) -> dict[str, Any]:
        try:
            state = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    def update(self, **changes: Any) -> None:
        write_text_atomic(self.path, json.dumps({**self.read(), **changes}))
