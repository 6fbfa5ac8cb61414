"""Per-browser-session folders on disk, and removal of those a previous server run left behind.

Each browser session works in its own folder ``<session root>/session-XXXX`` (see
:meth:`cellsparse_app.workspace.Workspace.create`), deleted when Gradio drops the session. A
server that crashes or is restarted never gets that call, so its sessions' folders (images,
models, predictions) would pile up under the session root. At start-up the web app calls
:func:`remove_stale_sessions`, which deletes the folders in which nothing changed for longer than
a configurable age; recent ones are kept because another server process may share the root.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

logger = logging.getLogger(__name__)

#: Name prefix of every session folder (nothing else under the root is ever removed).
SESSION_PREFIX = "session-"


def remove_stale_sessions(
    root: str | Path, max_age_seconds: float, *, now: float | None = None
) -> list[Path]:
    """Delete session folders under ``root`` in which nothing changed for ``max_age_seconds``.

    Only folders named ``session-*`` directly under ``root`` are candidates (never symbolic
    links); a folder counts as changed when it or anything inside it was modified recently.
    Folders that cannot be removed are logged and skipped: start-up must not fail for them.

    Args:
        root: the session root (missing: nothing to do).
        max_age_seconds: age above which a folder is stale; ``<= 0`` disables the clean-up.
        now: the current time (``time.time()``; tests pass their own).

    Returns:
        The removed folders.
    """
    root = Path(root)
    if max_age_seconds <= 0 or not root.is_dir():
        return []
    cutoff = (time.time() if now is None else now) - max_age_seconds
    removed = []
    for folder in sorted(root.glob(f"{SESSION_PREFIX}*")):
        if folder.is_symlink() or not folder.is_dir() or _changed_since(folder, cutoff):
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
