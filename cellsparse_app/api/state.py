"""What one server process shares between requests: store, job runner, SAM engines, caches.

One :class:`AppState` per app (``app.state.cellsparse``), never a module global, so several apps
(tests, workers) can live in one process.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from fastapi import Request

from cellsparse_app.api.errors import NotAvailable
from cellsparse_app.api.settings import ServerSettings
from cellsparse_app.jobs.runner import JobRunner
from cellsparse_app.jobs.slot import process_slot
from cellsparse_app.storage.model_store import ModelStore

if TYPE_CHECKING:
    from cellsparse_app.api.samapi import SamService
    from cellsparse_app.models.trained import TrainedModel

logger = logging.getLogger(__name__)


class AppState:
    """Shared server state.

    Args:
        settings: the server settings.
    """

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = ModelStore(settings.data_dir)
        # Job records and queued jobs survive a restart (``<data dir>/jobs``). Jobs take the
        # process's training slot, as the mounted web app's trainings do: one at a time.
        self.runner = JobRunner(self.store, max_pending=settings.max_pending_jobs,
                                journal_dir=settings.data_dir / "jobs", slot=process_slot())
        self._models: OrderedDict[tuple, "TrainedModel"] = OrderedDict()
        self._models_lock = threading.Lock()
        self._sam: "SamService | None" = None
        self._sam_lock = threading.Lock()

    @property
    def sam(self) -> "SamService":
        """The SAM service, created on first use (imports the SAM engine lazily)."""
        with self._sam_lock:
            if self._sam is None:
                from cellsparse_app.api.samapi import SamService

                self._sam = SamService(self.settings)
            return self._sam

    @sam.setter
    def sam(self, service: "SamService") -> None:
        """Replace the SAM service (e.g. one with another download policy)."""
        with self._sam_lock:
            self._sam = service

    def load_model(self, family: str, name: str) -> "TrainedModel":
        """A stored model, cached in memory until its files change (LRU of 4)."""
        path = self.store.path(family, name)
        config = path / "config.json"
        if not config.is_file():
            return self.store.load(family, name)  # raises the clear FileNotFoundError
        key = (family, name, config.stat().st_mtime_ns)
        with self._models_lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
        model = self.store.load(family, name)
        with self._models_lock:
            self._models[key] = model
            while len(self._models) > 4:
                self._models.popitem(last=False)
        return model

    def forget_model(self, family: str, name: str) -> None:
        """Drop cached copies of ``family/name`` (after a reset)."""
        with self._models_lock:
            for key in [k for k in self._models if k[:2] == (family, name)]:
                del self._models[key]

    def begin_shutdown(self) -> None:
        """Stop training now (the running job keeps its model and ends ``interrupted``, queued
        jobs stay on disk) and answer waiting requests with 503; returns at once."""
        if not self.runner.closing:
            logger.info("shutting down: stopping training, answering waiting clients with 503")
        self.runner.shutdown(timeout=0)

    def close(self, timeout: float = 5.0) -> None:
        """Stop training jobs and wait up to ``timeout`` s for them (called on app shutdown)."""
        self.runner.shutdown(timeout=timeout)


def get_state(request: Request) -> AppState:
    """FastAPI dependency: the app's :class:`AppState`."""
    return request.app.state.cellsparse


def require_family(name: str) -> Any:
    """The registered model family ``name``.

    Raises:
        NotAvailable: (501) the family is not part of this installation yet.
    """
    from cellsparse_app.models import get_family, list_families

    try:
        return get_family(name)
    except ValueError:
        raise NotAvailable(
            f"model family {name!r} is not available on this server; available: "
            f"{', '.join(list_families()) or 'none'}"
        ) from None
