"""The jobs a :class:`~cellsparse_app.jobs.runner.JobRunner` remembers: in memory, and in its
journal when it has one.

:class:`JobBook` owns the records and the one lock that guards them (the runner, its workers and
:func:`~cellsparse_app.jobs.training.run_training` all take it), finishes jobs (state, ticket,
journal, waiters woken), forgets old finished ones and restores the journal after a restart.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from cellsparse_app.errors import NotFound
from cellsparse_app.jobs.records import DONE, FINISHED_STATES, QUEUED, JobRecord, JobSnapshot

logger = logging.getLogger(__name__)


class JobBook:
    """Job records by id, guarded by :attr:`lock` (an ``RLock``: callers nest it).

    Args:
        history_points: most loss-history points in a snapshot (thinned evenly).
        keep_finished: finished jobs remembered for progress queries.
        journal_dir: keep records and the data of unfinished jobs in this folder (None: in
            memory only).
    """

    def __init__(self, *, history_points: int, keep_finished: int,
                 journal_dir: str | Path | None) -> None:
        self.history_points = history_points
        self.keep_finished = keep_finished
        self.lock = threading.RLock()
        self._jobs: dict[str, JobRecord] = {}
        self.journal = None
        if journal_dir is not None:
            from cellsparse_app.jobs.journal import JobJournal

            self.journal = JobJournal(journal_dir)

    # -- lookups (hold :attr:`lock`) ---------------------------------------------------------
    def job(self, job_id: str) -> JobRecord:
        """The record of ``job_id``.

        Raises:
            NotFound: unknown (or long forgotten) job id.
        """
        try:
            return self._jobs[job_id]
        except KeyError:
            raise NotFound(f"no training job with id {job_id!r}") from None

    def records(self) -> list[JobRecord]:
        """All remembered records, oldest first."""
        return sorted(self._jobs.values(), key=lambda j: j.created)

    def n_pending(self) -> int:
        """Jobs waiting in the queue."""
        return sum(1 for j in self._jobs.values() if j.state == QUEUED)

    def snapshot(self, job: JobRecord) -> JobSnapshot:
        """``job``'s snapshot, with its place in the training slot's queue while it waits."""
        position = None
        if job.state == QUEUED and job.ticket is not None:
            position = job.ticket.waiting_ahead()
        return job.snapshot(position, self.history_points)

    # -- changes (hold :attr:`lock`) ---------------------------------------------------------
    def add(self, job: JobRecord) -> None:
        """Remember ``job`` and forget the oldest finished jobs beyond ``keep_finished``."""
        self._jobs[job.id] = job
        finished = [j for j in self.records() if j.state in FINISHED_STATES]
        for old in finished[: max(0, len(finished) - self.keep_finished)]:
            del self._jobs[old.id]
            if self.journal is not None:
                self.journal.delete(old.id)

    def finish(self, job: JobRecord, state: str) -> None:
        """End ``job`` in ``state``: free its data and slot, write the journal, wake waiters."""
        job.state = state
        job.finished_at = time.time()
        job.images = job.labels = None  # free memory; snapshots do not need them
        if job.ticket is not None:
            job.ticket.release()  # leaves the queue, or frees the slot
        if self.journal is not None:
            if state == DONE:  # others keep their data (until pruned): they may be re-run
                self.journal.drop_data(job.id)
                job.rerunnable = False
            self.journal.save(job)
        job.finished.set()

    # -- journal -----------------------------------------------------------------------------
    def save(self, job: JobRecord) -> None:
        """Write ``job``'s record to the journal (nothing without one)."""
        if self.journal is not None:
            self.journal.save(job)

    def keep_data(self, job: JobRecord, images: Sequence[np.ndarray],
                  labels: Sequence[np.ndarray]) -> None:
        """Keep ``job``'s training data on disk so that it can be resumed after a restart.

        Only jobs rebuilt from JSON can be re-run (no in-memory model config or initial
        model); a disk error is logged and leaves the job in memory only.
        """
        if self.journal is None:
            return
        durable = (job.model_config is None and job.initial is None
                   and hasattr(job.config, "to_dict"))
        if durable:
            try:
                self.journal.save_data(job.id, images, labels)
                job.rerunnable = True
            except OSError as exc:
                logger.error("could not keep the data of job %s on disk: %s", job.id, exc)
        self.journal.save(job)

    def restore(self) -> list[JobRecord]:
        """Read the journal: records back, running ones interrupted; returns the jobs to queue
        again (still queued when the last process stopped)."""
        if self.journal is None:
            return []
        from cellsparse_app.jobs.journal import restore_jobs

        jobs, requeue = restore_jobs(self.journal)
        with self.lock:
            self._jobs.update({job.id: job for job in jobs})
        return list(requeue)
