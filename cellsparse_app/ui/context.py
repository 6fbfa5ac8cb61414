"""What one running web app shares between its users: settings and the lazily loaded SAM model.

Per-user data never lives here: each browser session gets its own
:class:`~cellsparse_app.workspace.Workspace` (in ``gr.State``) with a private project folder.
Only the SAM annotator is shared, read-only apart from its thread-safe embedding cache.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from cellsparse_app.sessions import remove_stale_sessions
from cellsparse_app.workspace import Workspace

logger = logging.getLogger(__name__)

ASSETS_DIR = Path(__file__).resolve().parents[2] / "assets"


def _env_number(name: str, default: float, kind: type[int] | type[float] = int) -> Any:
    """``$name`` read as ``kind`` (int or float); ``default`` when it is unset or empty."""
    value = os.environ.get(name)
    try:
        return kind(value) if value else default
    except ValueError:
        expected = "an integer" if kind is int else "a number"
        raise ValueError(f"${name} must be {expected}, got {value!r}") from None


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
        example_image, example_truth: the bundled example and its ground truth.
    """

    session_root: Path = dataclasses.field(default_factory=lambda: Path(
        os.environ.get("CELLSPARSE_SESSION_DIR")
        or Path(tempfile.gettempdir()) / "cellsparse-sessions"
    ))
    sam_model: str = dataclasses.field(
        default_factory=lambda: os.environ.get("CELLSPARSE_SAM_MODEL", "vit_t"))
    gpu_slots: int = dataclasses.field(
        default_factory=lambda: _env_number("CELLSPARSE_GPU_SLOTS", 1))
    sam_slots: int = dataclasses.field(
        default_factory=lambda: _env_number("CELLSPARSE_SAM_SLOTS", 2))
    session_max_age_hours: float = dataclasses.field(
        default_factory=lambda: _env_number("CELLSPARSE_SESSION_MAX_AGE_HOURS", 24.0, float))
    max_train_seconds: int = 900
    example_image: Path = ASSETS_DIR / "example_nuclei.png"
    example_truth: Path = ASSETS_DIR / "example_nuclei_labels.tif"


class AppContext:
    """Settings plus the shared, lazily created SAM annotator (thread-safe).

    Creating it (once per server start) removes the session folders a previous run left
    behind (see :func:`cellsparse_app.sessions.remove_stale_sessions`).
    """

    def __init__(self, settings: AppSettings | None = None) -> None:
        self.settings = settings or AppSettings()
        if self.settings.gpu_slots < 1 or self.settings.sam_slots < 1:
            raise ValueError(f"gpu_slots and sam_slots must be >= 1, got {self.settings}")
        remove_stale_sessions(self.settings.session_root,
                              self.settings.session_max_age_hours * 3600)
        self._annotator: Any = None
        self._lock = threading.Lock()

    def annotator(self) -> Any:
        """The shared ``SamAnnotator`` (created on first use)."""
        with self._lock:
            if self._annotator is None:
                from cellsparse_app.prompting import create_annotator

                self._annotator = create_annotator(self.settings.sam_model)
            return self._annotator

    def sam_description(self) -> tuple[str, str | None]:
        """Which SAM backend answers clicks and, for the fallback, why (loads it)."""
        from cellsparse_app.prompting import describe_annotator

        return describe_annotator(self.annotator())

    def new_workspace(self) -> Workspace:
        """A fresh workspace in a private folder (one per browser session)."""
        return Workspace.create(self.settings.session_root, sam=self.annotator)

    @staticmethod
    def close_workspace(workspace: Workspace | None) -> None:
        """Delete a session's folder when Gradio drops the session."""
        if workspace is not None:
            workspace.close()
            logger.info("closed session %s", workspace.directory)
