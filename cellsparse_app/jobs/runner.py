"""Training jobs that run in the background: one worker thread, a bounded queue, progress, cancel.

Used by the REST API and the UI so that a model can train while SAM clicks and other users keep
being answered::

    runner = JobRunner(ModelStore(data_dir))
    job_id = runner.submit(images, labels, TrainConfig(max_seconds=60), model_name="default")
    runner.get(job_id).step          # progress snapshot (step, loss, history ...)
    runner.cancel(job_id)            # stops cleanly at the next step
    runner.wait(job_id).state        # "done" | "cancelled" | "failed"

A finished job's model is saved to the store atomically. A cancelled job keeps the work done: the
model trained so far is saved under the job's name (as the web app keeps a stopped round), unless
the job was cancelled by deleting or resetting that model. A failed job never touches the stored
model. With ``journal_dir`` the records and the training data of unfinished jobs are kept on disk
(:mod:`cellsparse_app.jobs.journal`): after a restart the records are back, queued jobs run, and
jobs that were running are ``interrupted`` and can be resumed (:meth:`JobRunner.resume`).
Every job holds a :class:`~cellsparse_app.jobs.slot.Ticket` of the runner's
:class:`~cellsparse_app.jobs.slot.TrainingSlot` from submission on and trains only once it
is granted: the server passes the process's slot, which the web app's rounds also take, so a
REST job and a web-app training never run at the same time and a queued job's
``queue_position`` counts both (trainings waiting ahead of it; 0: next).
:meth:`JobRunner.shutdown` stops the running job (its model so far is saved, it ends
``interrupted``), keeps queued jobs on disk and wakes everyone waiting. Job states, records and
snapshots live in :mod:`cellsparse_app.jobs.records` (re-exported here), the remembered jobs in
:mod:`cellsparse_app.jobs.book`, the worker threads in :mod:`cellsparse_app.jobs.workers`.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from cellsparse_app.errors import InvalidInput, MissingFile, QueueFull, Unavailable
from cellsparse_app.jobs.book import JobBook
from cellsparse_app.jobs.records import (
    CANCELLED,
    FAILED,
    FINISHED_STATES,
    INTERRUPTED,
    QUEUED,
    RUNNING,
    JobRecord,
    JobSnapshot,
    check_training_data,
    training_warnings,
)
from cellsparse_app.jobs.slot import TrainingSlot
from cellsparse_app.jobs.workers import TrainingWorkers

if TYPE_CHECKING:
    from cellsparse_app.models.trained import TrainedModel
    from cellsparse_app.storage.model_store import ModelStore
    from cellsparse_app.train import TrainConfig

__all__ = ["JobRunner", "QueueFullError", "ShuttingDownError"]

logger = logging.getLogger(__name__)


class QueueFullError(QueueFull):
    """Raised by :meth:`JobRunner.submit` when too many jobs are waiting."""


class ShuttingDownError(Unavailable):
    """Raised by :meth:`JobRunner.submit` after :meth:`JobRunner.shutdown` began."""


class JobRunner:
    """Runs training jobs one at a time (by default) in a daemon worker thread.

    The records live in a :class:`~cellsparse_app.jobs.book.JobBook`, the threads in
    :class:`~cellsparse_app.jobs.workers.TrainingWorkers`; this class is what callers use.

    Args:
        store: where finished models are saved by name (None: keep results in memory only).
        max_pending: most jobs waiting in the queue; more raise :class:`QueueFullError`.
        workers: worker threads (trainings running at the same time).
        history_points: most loss-history points in a snapshot (thinned evenly).
        keep_finished: finished jobs remembered for progress queries.
        train_fn: the training function (``cellsparse_app.train.train`` by default); injectable
            so that tests and other front ends can swap in a stub.
        journal_dir: keep job records and the data of unfinished jobs in this folder, and
            restore them from it now (None: in memory only).
        slot: the training slot jobs wait for (None: one of this runner's own). A server
            passes :func:`~cellsparse_app.jobs.slot.process_slot`, shared with the web app.
    """

    def __init__(
        self,
        store: "ModelStore | None" = None,
        *,
        max_pending: int = 4,
        workers: int = 1,
        history_points: int = 500,
        keep_finished: int = 50,
        train_fn: Callable[..., "TrainedModel"] | None = None,
        journal_dir: str | Path | None = None,
        slot: TrainingSlot | None = None,
    ) -> None:
        if max_pending < 1 or workers < 1:
            raise InvalidInput(
                f"max_pending and workers must be >= 1, got {max_pending}, {workers}")
        self.store = store
        self.max_pending = max_pending
        self.slot = slot if slot is not None else TrainingSlot(capacity=workers)
        self._book = JobBook(history_points=history_points, keep_finished=keep_finished,
                             journal_dir=journal_dir)
        self._lock = self._book.lock
        self._closing = threading.Event()
        self._workers = TrainingWorkers(self._book, store=store, train_fn=train_fn,
                                        workers=workers, closing=self._closing)
        self._requeue(self._book.restore())

    # -- public API -------------------------------------------------------------------------
    def submit(
        self,
        images: Sequence[np.ndarray],
        labels: Sequence[np.ndarray],
        config: "TrainConfig | None" = None,
        *,
        model_name: str | None = None,
        resume: bool = True,
        model_config: Any = None,
        image_config: Any = None,
        initial: "TrainedModel | None" = None,
        budget_note: str | None = None,
        resumed_from: str | None = None,
    ) -> str:
        """Queue a training job and return its id.

        Args:
            images, labels: training data (labels -1 unlabelled / 0 background / 1..N).
            config: a ``TrainConfig`` (its ``family`` picks the model family).
            model_name: save the result under this name in the store (validated).
            resume: continue from the stored model of that name, if any (loaded when the job
                starts, so queued jobs build on each other).
            model_config, image_config, initial: passed to ``train``.
            budget_note: where the time budget comes from, said when it cuts the training.
            resumed_from: id of the job this one resumes or re-runs.

        Raises:
            ValueError, TypeError: bad data (checked now, not when the job runs).
            QueueFullError: if ``max_pending`` jobs are already waiting.
            ShuttingDownError: after :meth:`shutdown`.
        """
        if config is None:
            from cellsparse_app.train import TrainConfig

            config = TrainConfig()
        if model_name is not None:
            from cellsparse_app.storage.model_store import validate_name

            validate_name(model_name)
        images, labels = check_training_data(images, labels)
        job = JobRecord(
            id=uuid.uuid4().hex[:12],
            images=images,
            labels=labels,
            config=config,
            model_name=model_name,
            resume=resume,
            model_config=model_config,
            image_config=image_config,
            initial=initial,
            budget_note=budget_note,
            resumed_from=resumed_from,
            warnings=training_warnings(labels),
        )
        with self._lock:
            if self._closing.is_set():
                raise ShuttingDownError("the server is shutting down: no new training jobs")
            if self._book.n_pending() >= self.max_pending:
                raise QueueFullError(
                    f"{self.max_pending} training jobs are already waiting; try again later"
                )
            self._book.add(job)
            job.ticket = self.slot.enter(f"training job {job.id}")
            self._workers.start()
        self._book.keep_data(job, images, labels)
        for text in job.warnings:
            logger.warning("training job %s: %s", job.id, text)
        self._workers.put(job)
        logger.info("queued training job %s (%s, model %r)", job.id, config.family, model_name)
        return job.id

    def get(self, job_id: str) -> JobSnapshot:
        """Snapshot of job ``job_id``.

        Raises:
            NotFound: (a ``KeyError``) unknown (or long forgotten) job id.
        """
        with self._lock:
            return self._book.snapshot(self._book.job(job_id))

    def list(self) -> list[JobSnapshot]:
        """Snapshots of all remembered jobs, oldest first."""
        with self._lock:
            return [self._book.snapshot(j) for j in self._book.records()]

    def cancel(self, job_id: str, *, keep_model: bool = True) -> JobSnapshot:
        """Ask job ``job_id`` to stop (a queued job never starts); returns its snapshot.

        A running job stops at its next step and saves the model trained so far under its
        name, unless ``keep_model`` is false (the model is being deleted or reset).
        """
        with self._lock:
            job = self._book.job(job_id)
            if job.state in FINISHED_STATES:
                return self._book.snapshot(job)
            job.discard_on_cancel = job.discard_on_cancel or not keep_model
            job.cancel_event.set()
            if job.state == QUEUED:
                job.stop_reason = "cancelled before it started"
                self._book.finish(job, CANCELLED)
            return self._book.snapshot(job)

    def cancel_model(self, family: str, model_name: str) -> list[str]:
        """Cancel every unfinished job that would write ``family/model_name``; returns ids."""
        with self._lock:
            ids = [
                j.id
                for j in self._book.records()
                if j.state in (QUEUED, RUNNING)
                and j.model_name == model_name
                and j.config.family == family
            ]
        for job_id in ids:
            self.cancel(job_id, keep_model=False)
        return ids

    def wait(self, job_id: str, timeout: float | None = None) -> JobSnapshot:
        """Block until job ``job_id`` finishes (or ``timeout`` seconds pass); returns a snapshot."""
        with self._lock:
            job = self._book.job(job_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not job.finished.wait(0.2):
            if self._closing.is_set() and job.state == QUEUED:
                break  # it stays queued (on disk): the caller learns the server is stopping
            if deadline is not None and time.monotonic() >= deadline:
                break
        return self.get(job_id)

    @property
    def closing(self) -> bool:
        """Whether :meth:`shutdown` has begun."""
        return self._closing.is_set()

    @property
    def history_points(self) -> int:
        """Most loss-history points in a snapshot."""
        return self._book.history_points

    @property
    def keep_finished(self) -> int:
        """Finished jobs remembered for progress queries."""
        return self._book.keep_finished

    @property
    def train_fn(self) -> Callable[..., "TrainedModel"] | None:
        """The training function the workers call (None: ``cellsparse_app.train.train``)."""
        return self._workers.train_fn

    @train_fn.setter
    def train_fn(self, train_fn: Callable[..., "TrainedModel"] | None) -> None:
        self._workers.train_fn = train_fn

    def result(self, job_id: str) -> "TrainedModel | None":
        """The trained model of a finished job (partial for a cancelled one), else None."""
        with self._lock:
            return self._book.job(job_id).result

    def busy(self) -> dict[str, int]:
        """``{"queued": n, "running": m}``."""
        with self._lock:
            states = [j.state for j in self._book.records()]
        return {"queued": states.count(QUEUED), "running": states.count(RUNNING)}

    def shutdown(self, timeout: float | None = 10.0) -> None:
        """Stop: no new jobs, the running job ends ``interrupted`` (its model so far saved),
        queued jobs stay queued on disk (cancelled without a journal), waiters are woken.
        Waits up to ``timeout`` seconds for the workers. Safe to call twice."""
        with self._lock:
            self._closing.set()
            for job in self._book.records():
                if job.state == RUNNING:
                    job.interrupted = True
                    job.cancel_event.set()
                elif job.state == QUEUED and self._book.journal is None:
                    job.cancel_event.set()
                    job.stop_reason = "cancelled: the server shut down before it started"
                    self._book.finish(job, CANCELLED)
                elif job.state == QUEUED and job.ticket is not None:
                    job.ticket.release()  # stays queued on disk, for the next start
        self._workers.stop(timeout)

    def resume(self, job_id: str, *, restart: bool = False) -> str:
        """Queue a new job from an interrupted (or cancelled/failed) job's saved data.

        Args:
            job_id: the job to resume.
            restart: False: continue from the model saved under its name with the steps still
                to do (all of them for a time budget); True: run it again as it was submitted.

        Returns:
            The new job's id.

        Raises:
            NotFound: unknown job id.
            InvalidInput: the job is still queued or running, or finished successfully.
            MissingFile: (a ``FileNotFoundError``) its training data is not kept (jobs without
                a journal, or resumed already).
        """
        journal = self._book.journal
        with self._lock:
            job = self._book.job(job_id)
            if job.state not in (INTERRUPTED, CANCELLED, FAILED):
                raise InvalidInput(f"job {job_id} is {job.state}; only interrupted, cancelled "
                                   "or failed jobs can be resumed")
            if journal is None or not job.rerunnable:
                raise MissingFile(f"the training data of job {job_id} is not kept; "
                                  "submit the training again")
            config, resume = job.config, job.resume
            done = job.step
        images, labels = journal.load_data(job_id)
        if not restart:
            resume = True
            if getattr(config, "steps", None) is not None:
                config = config.replace(steps=max(1, int(config.steps) - int(done)))
        new_id = self.submit(images, labels, config, model_name=job.model_name, resume=resume,
                             image_config=job.image_config, budget_note=job.budget_note,
                             resumed_from=job_id)
        with self._lock:
            job.rerunnable = False
        journal.drop_data(job_id)
        journal.save(job)
        logger.info("job %s %s as job %s", job_id, "re-run" if restart else "resumed", new_id)
        return new_id

    # -- internals --------------------------------------------------------------------------
    def _requeue(self, jobs: list[JobRecord]) -> None:
        """Queue jobs restored from the journal again (each takes a new slot ticket)."""
        if not jobs:
            return
        with self._lock:
            self._workers.start()
        for job in jobs:
            job.ticket = self.slot.enter(f"training job {job.id}")
            self._workers.put(job)
