"""What one running web app shares between its users: settings and the lazily loaded SAM model.

Per-user data never lives here: each browser session gets its own
:class:`~cellsparse_app.session.workspace.Workspace` (in ``gr.State``) with a private project
folder; the registry of open sessions only maps their tokens to them, so a reload finds its
workspace again. Only the SAM annotator is shared, read-only apart from its embedding cache.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from pathlib import Path
from typing import Any

from cellsparse_app.session.folders import new_session_token, remove_stale_sessions, session_folder
from cellsparse_app.session.workspace import Workspace
from cellsparse_app.settings import from_environment

logger = logging.getLogger(__name__)

#: Seconds between two sweeps of stale session folders while the app runs.
SWEEP_EVERY = 600.0

ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"


@dataclasses.dataclass(frozen=True)
class AppSettings:
    """Server-side settings (environment variables in brackets).

    Attributes:
        session_root: parent of the per-session project folders (``CELLSPARSE_SESSION_DIR``).
        sam_model: SAM backend to use (``CELLSPARSE_SAM_MODEL``: vit_t, vit_b, vit_l, vit_h,
            fallback); the SAM engine falls back to its offline method without weights.
        gpu_slots: trainings/predictions running at once (``CELLSPARSE_GPU_SLOTS``); more wait
            in the queue.
        sam_slots: SAM requests served at once (``CELLSPARSE_SAM_SLOTS``).
        session_max_age_hours: at start-up, session folders under ``session_root`` unchanged
            for longer than this are deleted (``CELLSPARSE_SESSION_MAX_AGE_HOURS``, default 24;
            0 keeps them): a crashed or restarted server never closed its sessions.
        max_train_seconds: the largest time budget a user may ask for.
        weights_dir: the SAM weights cache (None: ``CELLSPARSE_CACHE_DIR`` or the user's cache;
            ``cellsparse serve`` passes its data dir's, so the web app and the API share it).
        example_image, example_truth: the bundled example and its ground truth.
    """

    session_root: Path = dataclasses.field(
        default_factory=lambda: from_environment().session_dir)
    sam_model: str = dataclasses.field(
        default_factory=lambda: from_environment().sam_model or "vit_t")
    gpu_slots: int = dataclasses.field(default_factory=lambda: from_environment().gpu_slots)
    sam_slots: int = dataclasses.field(default_factory=lambda: from_environment().sam_slots)
    session_max_age_hours: float = dataclasses.field(
        default_factory=lambda: from_environment().session_max_age_hours)
    max_train_seconds: int = 900
    weights_dir: Path | None = None
    example_image: Path = ASSETS_DIR / "example_nuclei.png"
    example_truth: Path = ASSETS_DIR / "example_nuclei_labels.tif"


class AppContext:
    """Settings plus the shared, lazily created SAM annotator (thread-safe).

    Creating it (once per server start) removes the session folders a previous run left
    behind (see :func:`cellsparse_app.session.folders.remove_stale_sessions`).
    """

    def __init__(self, settings: AppSettings | None = None) -> None:
        self.settings = settings or AppSettings()
        if self.settings.gpu_slots < 1 or self.settings.sam_slots < 1:
            raise ValueError(f"gpu_slots and sam_slots must be >= 1, got {self.settings}")
        remove_stale_sessions(self.settings.session_root,
                              self.settings.session_max_age_hours * 3600)
        self._annotator: Any = None
        self._lock = threading.Lock()
        self._sessions_lock = threading.Lock()  # not the SAM lock: loading SAM takes seconds
        self._live: dict[str, tuple[Workspace, int]] = {}
        self._last_sweep = time.monotonic()

    def annotator(self) -> Any:
        """The shared ``SamAnnotator`` (created on first use)."""
        with self._lock:
            if self._annotator is None:
                from cellsparse_app.session.sam_bridge import create_annotator

                self._annotator = create_annotator(self.settings.sam_model,
                                                   weights_dir=self.settings.weights_dir)
            return self._annotator

    def sam_description(self) -> tuple[str, str | None]:
        """Which SAM backend answers clicks and, for the fallback, why (loads it)."""
        from cellsparse_app.session.sam_bridge import describe_annotator

        return describe_annotator(self.annotator())

    def new_workspace(self) -> Workspace:
        """A fresh workspace in a private folder (one per browser session)."""
        return self.open_workspace(None)[0]

    def open_workspace(self, token: str | None) -> tuple[Workspace, str, bool]:
        """The workspace of the browser's session ``token`` (kept in its ``gr.BrowserState``):
        the same one after a reload, or a fresh one with a new token.

        Tabs of one browser share their session's workspace while open (counted); the folder
        stays on disk after the last tab closes, so a reload finds it, until it has been
        unchanged for ``session_max_age_hours``.

        Returns:
            ``(workspace, token, restored)``.
        """
        root = self.settings.session_root
        with self._sessions_lock:
            self._sweep()
            if token:
                try:
                    folder = session_folder(root, token)
                except ValueError:
                    logger.info("ignoring a malformed session token from a browser")
                    folder = None
                if token in self._live:
                    ws, count = self._live[token]
                    self._live[token] = (ws, count + 1)
                    return ws, token, True
                if folder is not None and folder.is_dir() and not folder.is_symlink():
                    ws = Workspace.reopen(folder, sam=self.annotator)
                    self._live[token] = (ws, 1)
                    logger.info("restored session %s", folder)
                    return ws, token, True
            token = new_session_token()
            ws = Workspace.create(root, sam=self.annotator, token=token)
            self._live[token] = (ws, 1)
            return ws, token, False

    def release_workspace(self, workspace: Workspace | None) -> None:
        """Gradio dropped a page's session (tab closed or reloaded): forget the workspace once
        no tab uses it. Its folder is kept for a reload (see :meth:`open_workspace`)."""
        if workspace is None:
            return
        with self._sessions_lock:
            for token, (ws, count) in list(self._live.items()):
                if ws is workspace:
                    if count > 1:
                        self._live[token] = (ws, count - 1)
                    else:
                        del self._live[token]
                    logger.info("session %s released (folder kept for a reload)",
                                workspace.directory)

    @staticmethod
    def close_workspace(workspace: Workspace | None) -> None:
        """Delete a session's folder now (tests, or a user who asks to forget the session)."""
        if workspace is not None:
            workspace.close()
            logger.info("closed session %s", workspace.directory)

    def _sweep(self) -> None:
        """Remove stale session folders, at most every :data:`SWEEP_EVERY` seconds."""
        now = time.monotonic()
        if now - self._last_sweep < SWEEP_EVERY:
            return
        self._last_sweep = now
        live = {ws.directory for ws, _ in self._live.values()}
        removed = remove_stale_sessions(self.settings.session_root,
                                        self.settings.session_max_age_hours * 3600, keep=live)
        if removed:
            logger.info("removed %d stale session folder(s)", len(removed))
