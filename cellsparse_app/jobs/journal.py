"""Training jobs on disk, so that records and queued jobs survive a restart of the server.

One folder (``<data dir>/jobs``) holds, per job, ``<id>.json`` (the record: state, progress,
configuration, why it stopped) and, while the job may still run or be resumed, ``<id>.npz`` (its
training images and labels). Every file is written to a temporary name and moved into place
(``os.replace``), so a crash leaves either the old or the new version, never half a file.

:class:`~cellsparse_app.jobs.runner.JobRunner` writes a record when a job is queued, starts and
finishes; on start-up it reads them back: queued jobs are queued again, jobs that were running
are marked ``interrupted`` (they can be resumed or re-run from their saved data).
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from cellsparse_app.jobs.records import (
    CANCELLED,
    FINISHED_STATES,
    INTERRUPTED,
    QUEUED,
    RUNNING,
    JobRecord,
)
from cellsparse_app.storage.atomic_files import TMP_SUFFIX, write_atomic

logger = logging.getLogger(__name__)

_ID = re.compile(r"^[0-9a-f]{12}$")

#: Record fields written as they are (JSON scalars / lists).
_PLAIN_FIELDS = (
    "id", "model_name", "resume", "created", "state", "step", "total_steps", "loss", "elapsed",
    "fraction", "error", "error_type", "model_saved", "started", "finished_at", "budget_note",
    "stop_reason", "cut", "resumed_from", "rerunnable", "warnings",
)


def _config_dict(config: Any) -> dict[str, Any] | None:
    to_dict = getattr(config, "to_dict", None)
    return to_dict() if callable(to_dict) else None


class JobJournal:
    """Job records and training data under ``directory`` (created if missing).

    Args:
        directory: where ``<id>.json`` and ``<id>.npz`` files live.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        # Left by a crash during a write (".tmp-*": the name earlier versions used).
        for pattern in (f".*{TMP_SUFFIX}", ".tmp-*"):
            for stale in self.directory.glob(pattern):
                stale.unlink(missing_ok=True)

    def _path(self, job_id: str, suffix: str) -> Path:
        if not _ID.match(job_id):
            raise ValueError(f"invalid job id {job_id!r}")
        return self.directory / f"{job_id}{suffix}"

    def _write(self, final: Path, write: Any) -> None:
        write_atomic(final, write, durable=True)

    # -- records ------------------------------------------------------------------------------
    def save(self, job: JobRecord) -> None:
        """Write ``job``'s record (atomically); failures are logged, never raised."""
        data = {name: getattr(job, name) for name in _PLAIN_FIELDS}
        data["history"] = [list(h) for h in job.history[-2000:]]
        data["config"] = _config_dict(job.config)
        data["family"] = job.config.family
        data["image_config"] = _config_dict(job.image_config)
        text = json.dumps(data, indent=1).encode()
        try:
            self._write(self._path(job.id, ".json"), lambda fh: fh.write(text))
        except OSError as exc:
            logger.error("could not write the record of job %s: %s", job.id, exc)

    def load_all(self) -> list[dict[str, Any]]:
        """Every readable record, oldest first (unreadable ones are logged and skipped)."""
        records = []
        for path in self.directory.glob("*.json"):
            try:
                records.append(json.loads(path.read_text()))
            except (OSError, ValueError) as exc:
                logger.warning("skipping unreadable job record %s: %s", path, exc)
        return sorted(records, key=lambda r: r.get("created", 0.0))

    def delete(self, job_id: str) -> None:
        """Forget job ``job_id`` (record and data)."""
        self._path(job_id, ".json").unlink(missing_ok=True)
        self.drop_data(job_id)

    # -- training data ------------------------------------------------------------------------
    def save_data(self, job_id: str, images: list[np.ndarray], labels: list[np.ndarray]) -> None:
        """Write the training images and labels of job ``job_id`` (atomically)."""
        arrays = {f"image_{i}": im for i, im in enumerate(images)}
        arrays.update({f"labels_{i}": lb for i, lb in enumerate(labels)})
        self._write(self._path(job_id, ".npz"), lambda fh: np.savez(fh, **arrays))

    def has_data(self, job_id: str) -> bool:
        return self._path(job_id, ".npz").is_file()

    def load_data(self, job_id: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The training images and labels of job ``job_id``.

        Raises:
            FileNotFoundError: the data was never saved or has been dropped.
        """
        path = self._path(job_id, ".npz")
        if not path.is_file():
            raise FileNotFoundError(f"the training data of job {job_id} is no longer kept")
        with np.load(path, allow_pickle=False) as data:
            n = sum(1 for key in data.files if key.startswith("image_"))
            return ([data[f"image_{i}"] for i in range(n)],
                    [data[f"labels_{i}"] for i in range(n)])

    def drop_data(self, job_id: str) -> None:
        self._path(job_id, ".npz").unlink(missing_ok=True)


def record_from_dict(data: dict[str, Any]) -> JobRecord:
    """A :class:`JobRecord` (without images) from what :meth:`JobJournal.save` wrote.

    Raises:
        ValueError, TypeError, KeyError: a record that does not describe a job.
    """
    from cellsparse_app.data.images import ImageConfig
    from cellsparse_app.train import TrainConfig

    if data.get("config") is None:
        raise ValueError(f"job record {data.get('id')!r} has no training configuration")
    job = JobRecord(
        id=str(data["id"]), images=None, labels=None,
        config=TrainConfig.from_dict(data["config"]), model_name=data.get("model_name"),
        resume=bool(data.get("resume", True)), model_config=None,
        image_config=(ImageConfig.from_dict(data["image_config"])
                      if data.get("image_config") else None),
        initial=None,
    )
    for name in _PLAIN_FIELDS:
        if name in data and name not in ("id", "model_name", "resume"):
            setattr(job, name, data[name])
    job.warnings = list(job.warnings or [])
    job.history = [(int(s), float(v)) for s, v in data.get("history") or []]
    return job


def restore_jobs(journal: JobJournal) -> tuple[list[JobRecord], list[JobRecord]]:
    """``(all jobs, jobs to queue again)`` from ``journal``, oldest first.

    A job that was running is marked ``interrupted`` (the server stopped under it); a queued
    job whose data is gone is marked ``cancelled``. Both changes are written back.
    """
    jobs, requeue = [], []
    for data in journal.load_all():
        try:
            job = record_from_dict(data)
        except (ValueError, TypeError, KeyError) as exc:
            logger.warning("skipping job record %s: %s", data.get("id"), exc)
            continue
        job.rerunnable = bool(job.rerunnable) and journal.has_data(job.id)
        if job.state == RUNNING:
            job.interrupted = True
            job.stop_reason = (f"interrupted: the server stopped after {job.step} steps (the "
                               "model of those steps was not saved); resume or re-run it")
            job.state, job.finished_at = INTERRUPTED, time.time()
            journal.save(job)
        elif job.state == QUEUED and not job.rerunnable:
            job.stop_reason = "cancelled: its training data was lost"
            job.state, job.finished_at = CANCELLED, time.time()
            journal.save(job)
        if job.state in FINISHED_STATES:
            job.finished.set()
        jobs.append(job)
        if job.state == QUEUED:
            requeue.append(job)
    if jobs:
        logger.info("restored %d job record(s), %d queued job(s) from %s", len(jobs),
                    len(requeue), journal.directory)
    return jobs, requeue
