"""SAM weights on disk: downloads with progress and cancel, checksum verification, registration.

Which checkpoints exist (official table, :class:`WeightSpec`, the cache directory, the file of
registered extra weights) is :mod:`cellsparse_app.sam.checkpoints`; its public names are
re-exported here. A file put in the cache by hand (offline machines) is used as is once its size
and checksum match. Registered weights without a published checksum get the hash of their first
download recorded and checked from then on (trust on first use).

A :class:`WeightsManager` (one per server, not a global) tracks one download per weights name:
``status(name)`` for progress bars, ``cancel(name)`` to stop it.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path
from typing import Callable

from cellsparse_app.sam.checkpoints import (
    CACHE_ENV,
    OFFICIAL_WEIGHTS,
    WeightSpec,
    default_cache_dir,
    new_spec,
    read_registry,
    write_registry,
)
from cellsparse_app.sam.download import (
    DownloadCancelled,
    DownloadError,
    DownloadPolicy,
    download,
    file_sha256,
)

__all__ = ["DownloadStatus", "WeightsManager", "WeightsUnavailableError"]

logger = logging.getLogger(__name__)


class WeightsUnavailableError(RuntimeError):
    """The weights are not on disk and could not be downloaded; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class DownloadStatus:
    """Progress of one weights download.

    Attributes:
        name: weights name.
        state: ``idle``, ``running``, ``done``, ``failed`` or ``cancelled``.
        done_bytes, total_bytes: progress (total None when unknown).
        error: the failure message, if any.
    """

    name: str
    state: str = "idle"
    done_bytes: int = 0
    total_bytes: int | None = None
    error: str | None = None

    @property
    def fraction(self) -> float | None:
        if self.state == "done":
            return 1.0
        return self.done_bytes / self.total_bytes if self.total_bytes else None


class WeightsManager:
    """Official and registered weights in one cache directory; thread-safe.

    Args:
        cache_dir: root cache directory (default :func:`default_cache_dir`); files go to
            ``cache_dir/sam``.
        policy: which URLs may be fetched.
    """

    def __init__(self, cache_dir: str | Path | None = None,
                 policy: DownloadPolicy | None = None) -> None:
        self.directory = Path(cache_dir or default_cache_dir()) / "sam"
        self.policy = policy or DownloadPolicy()
        self._lock = threading.Lock()
        self._status: dict[str, DownloadStatus] = {}
        self._cancel: dict[str, threading.Event] = {}
        self._running: dict[str, threading.Lock] = {}
        self._registered = read_registry(self.directory)

    # -- catalogue -------------------------------------------------------------------------------
    def specs(self, model_type: str | None = None) -> list[WeightSpec]:
        """Official then registered weights, optionally only those for ``model_type``."""
        with self._lock:
            specs = list(OFFICIAL_WEIGHTS.values()) + list(self._registered.values())
        return [s for s in specs if model_type is None or s.model_type == model_type]

    def get(self, name: str) -> WeightSpec:
        """The weights called ``name``; ValueError (listing the known names) if none."""
        with self._lock:
            spec = OFFICIAL_WEIGHTS.get(name) or self._registered.get(name)
        if spec is None:
            known = ", ".join(s.name for s in self.specs())
            raise ValueError(f"unknown SAM weights {name!r}; known: {known}")
        return spec

    def path(self, name: str) -> Path:
        """Where the weights file is (or will be) in the cache."""
        return self.directory / self.get(name).filename

    def is_available(self, name: str) -> bool:
        """Whether the file is on disk with the expected size (no hashing)."""
        spec = self.get(name)
        path = self.directory / spec.filename
        return path.is_file() and (spec.size is None or path.stat().st_size == spec.size)

    def register(self, name: str, model_type: str, url: str, *, sha256: str | None = None,
                 size: int | None = None, description: str = "") -> WeightSpec:
        """Register extra weights (nothing is downloaded yet; see :meth:`ensure`).

        Raises:
            ValueError: invalid or official name, unknown model type, bad checksum format, or
                a URL the download policy refuses (https only, allowlisted host).
        """
        spec = new_spec(name, model_type, url, self.policy, sha256=sha256, size=size,
                        description=description)
        with self._lock:
            old = self._registered.get(name)
            if old is not None and (old.url, old.model_type) != (url, model_type):
                # A different file under the same name: the old one must not be used for it.
                (self.directory / old.filename).unlink(missing_ok=True)
                _sidecar(self.directory / old.filename).unlink(missing_ok=True)
            self._registered[name] = spec
            write_registry(self.directory, self._registered)
        logger.info("registered SAM weights %s (%s) from %s", name, model_type, url)
        return spec

    def unregister(self, name: str) -> None:
        """Forget registered weights and delete their file."""
        if name in OFFICIAL_WEIGHTS:
            raise ValueError(f"{name!r} is official and cannot be removed")
        with self._lock:
            spec = self._registered.pop(name, None)
            if spec is None:
                raise ValueError(f"no registered weights called {name!r}")
            write_registry(self.directory, self._registered)
        (self.directory / spec.filename).unlink(missing_ok=True)
        _sidecar(self.directory / spec.filename).unlink(missing_ok=True)

    # -- files -----------------------------------------------------------------------------------
    def ensure(self, name: str, *, download_missing: bool = True,
               progress: Callable[[int, int | None], None] | None = None) -> Path:
        """Path of verified weights, downloading them first when missing (and allowed).

        Raises:
            WeightsUnavailableError: missing and not downloadable (offline, refused, failed);
                the message says what to download and where to put it.
            DownloadCancelled: :meth:`cancel` was called meanwhile.
            ValueError: a file is there but its size or checksum is wrong.
        """
        spec = self.get(name)
        path = self.directory / spec.filename
        if path.is_file():
            self._verify_once(spec, path)
            return path
        if not download_missing:
            raise WeightsUnavailableError(self.missing_message(name, "downloads are disabled"))
        try:
            self.download(name, progress=progress)
        except DownloadCancelled:
            raise
        except DownloadError as exc:
            raise WeightsUnavailableError(self.missing_message(name, str(exc))) from exc
        return path

    def download(self, name: str, *,
                 progress: Callable[[int, int | None], None] | None = None) -> Path:
        """Download the weights now (blocking; one download per name at a time)."""
        spec = self.get(name)
        path = self.directory / spec.filename
        with self._lock:
            running = self._running.setdefault(name, threading.Lock())
        with running:  # a second caller waits for the first download, then finds the file
            if path.is_file() and self._status.get(name, DownloadStatus(name)).state == "done":
                return path
            cancel = threading.Event()
            with self._lock:
                self._cancel[name] = cancel
                self._status[name] = DownloadStatus(name, "running", 0, spec.size)

            def report(done: int, total: int | None) -> None:
                with self._lock:
                    self._status[name] = DownloadStatus(name, "running", done, total)
                if progress is not None:
                    progress(done, total)

            try:
                digest = download(spec.url, path, expected_size=spec.size,
                                  expected_sha256=spec.sha256, policy=self.policy,
                                  progress=report, should_stop=cancel.is_set)
            except DownloadCancelled as exc:
                self._set_status(name, "cancelled", str(exc))
                raise
            except DownloadError as exc:
                self._set_status(name, "failed", str(exc))
                raise
            _write_sidecar(path, digest)
            if spec.sha256 is None:  # trust on first use: remember what we got
                self._record_hash(spec, digest, path.stat().st_size)
            self._set_status(name, "done")
            return path

    def status(self, name: str) -> DownloadStatus:
        """Progress of the latest download of ``name``."""
        self.get(name)
        with self._lock:
            return self._status.get(name, DownloadStatus(name))

    def statuses(self) -> list[DownloadStatus]:
        """Progress of every download started in this process."""
        with self._lock:
            return list(self._status.values())

    def cancel(self, name: str | None = None) -> bool:
        """Cancel the running download of ``name`` (None: all). True if one was running."""
        with self._lock:
            names = [name] if name is not None else list(self._cancel)
            hit = False
            for n in names:
                event = self._cancel.get(n)
                if event is not None and self._status.get(n, DownloadStatus(n)).state == "running":
                    event.set()
                    hit = True
        return hit

    def missing_message(self, name: str, reason: str = "") -> str:
        """What to download and where to put it, for people on offline machines."""
        spec = self.get(name)
        size = f", {spec.size / 1e6:.1f} MB" if spec.size else ""
        checksum = f" (sha256 {spec.sha256})" if spec.sha256 else ""
        why = f" ({reason})" if reason else ""
        return (
            f"SAM weights {spec.name!r} for model type {spec.model_type} are not available{why}. "
            f"Download {spec.url}{size}{checksum} and put it at {self.directory / spec.filename} "
            f"(or set ${CACHE_ENV} to a folder holding sam/{spec.filename}), or point "
            f"CELLSPARSE_SAM_CHECKPOINT / --sam-checkpoint at the file with "
            f"CELLSPARSE_SAM_MODEL / --sam-model {spec.model_type}."
        )

    # -- internals -------------------------------------------------------------------------------
    def _set_status(self, name: str, state: str, error: str | None = None) -> None:
        with self._lock:
            old = self._status.get(name, DownloadStatus(name))
            self._status[name] = dataclasses.replace(old, state=state, error=error)

    def _verify_once(self, spec: WeightSpec, path: Path) -> None:
        """Check size always and the checksum once per file version (recorded in a sidecar)."""
        size = path.stat().st_size
        if spec.size is not None and size != spec.size:
            raise ValueError(
                f"{path} has {size} bytes but {spec.name} weights have {spec.size}: incomplete or "
                f"a different file; delete it and download {spec.url} again"
            )
        recorded = _read_sidecar(path)
        if recorded is not None and (spec.sha256 is None or recorded == spec.sha256):
            return
        digest = file_sha256(path)
        if spec.sha256 is not None and digest != spec.sha256:
            raise ValueError(
                f"{path} has sha256 {digest}, expected {spec.sha256} for {spec.name}: corrupt or "
                f"a different file; delete it and download {spec.url} again"
            )
        _write_sidecar(path, digest)
        if spec.sha256 is None:
            self._record_hash(spec, digest, size)

    def _record_hash(self, spec: WeightSpec, digest: str, size: int) -> None:
        with self._lock:
            if spec.name in self._registered:
                self._registered[spec.name] = dataclasses.replace(spec, sha256=digest, size=size)
                write_registry(self.directory, self._registered)


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _write_sidecar(path: Path, digest: str) -> None:
    stat = path.stat()
    _sidecar(path).write_text(f"{digest} {stat.st_size} {stat.st_mtime_ns}\n")


def _read_sidecar(path: Path) -> str | None:
    """The recorded digest if it still describes the file (same size and mtime)."""
    try:
        digest, size, mtime = _sidecar(path).read_text().split()
    except (OSError, ValueError):
        return None
    stat = path.stat()
    if int(size) != stat.st_size or int(mtime) != stat.st_mtime_ns:
        return None
    return digest
