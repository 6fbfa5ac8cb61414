"""The worker threads of a :class:`~cellsparse_app.jobs.runner.JobRunner`: take a queued job,
wait for the training slot, train, and record how it ended.

A job failing never kills its worker; a job taken from the queue after shutdown began (or
cancelled while it waited) is skipped and, with a journal, stays queued on disk.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import TYPE_CHECKING, Callable

from cellsparse_app.jobs.book import JobBook
from cellsparse_app.jobs.records import (
    CANCELLED,
    DONE,
    FAILED,
    INTERRUPTED,
    QUEUED,
    RUNNING,
    JobRecord,
)
from cellsparse_app.jobs.training import run_training

if TYPE_CHECKING:
    from cellsparse_app.models.trained import TrainedModel
    from cellsparse_app.storage.model_store import ModelStore

logger = logging.getLogger(__name__)


class TrainingWorkers:
    """A queue of jobs and the daemon threads (started on first use) that train them.

    Args:
        book: the runner's job records (and lock).
        store: where finished models are saved (None: in memory only).
        train_fn: the training function (None: ``cellsparse_app.train.train``); an attribute,
            so that tests may swap it between jobs.
        workers: threads, i.e. trainings that may run at the same time.
        closing: set when shutdown begins; a waiting job then stops waiting for the slot.
    """

    def __init__(self, book: JobBook, *, store: "ModelStore | None",
                 train_fn: Callable[..., "TrainedModel"] | None, workers: int,
                 closing: threading.Event) -> None:
        self.book = book
        self.store = store
        self.train_fn = train_fn
        self.n_workers = workers
        self.closing = closing
        self._queue: queue.Queue[JobRecord | None] = queue.Queue()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Start the missing worker threads (call with the book's lock held)."""
        while len(self._threads) < self.n_workers:
            thread = threading.Thread(
                target=self._work, name=f"cellsparse-train-{len(self._threads)}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def put(self, job: JobRecord) -> None:
        """Queue ``job`` (it already holds its slot ticket)."""
        self._queue.put(job)

    def stop(self, timeout: float | None) -> None:
        """Tell every thread to end after its job and wait up to ``timeout`` s for each."""
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout)

    def _work(self) -> None:
        book = self.book
        while True:
            job = self._queue.get()
            if job is None:
                return
            # Wait for the training slot (another job, or a web-app round, may hold it).
            while job.ticket is not None and not job.ticket.wait(0.2):
                if job.state != QUEUED or self.closing.is_set():
                    break
            with book.lock:
                if job.state != QUEUED or self.closing.is_set():  # cancelled, or stopping
                    if job.ticket is not None and job.state == QUEUED:
                        job.ticket.release()  # stays queued on disk, for the next start
                    continue
                job.state = RUNNING
                job.started = time.time()
            book.save(job)
            try:
                self._run(job)
            except Exception as exc:  # a job failing must never kill the worker
                logger.exception("training job %s failed", job.id)
                with book.lock:
                    job.error = str(exc) or type(exc).__name__
                    job.error_type = type(exc).__name__
                    job.stop_reason = f"failed after {job.step} steps: {job.error}"
                    book.finish(job, FAILED)

    def _run(self, job: JobRecord) -> None:
        book = self.book
        try:
            model, cancelled, steps_done, saved = run_training(
                job, self.train_fn, self.store, book.lock, book.journal)
        finally:
            if job.ticket is not None:
                job.ticket.release()  # the next training may start while we save the record
        family = job.config.family
        with book.lock:
            job.result = model
            job.model_saved = saved
            job.step = steps_done
            cap = (getattr(model, "meta", None) or {}).get("step_cap")
            job.describe_stop(steps_done, cancelled, cap)
            if saved and cancelled:
                job.stop_reason += f"; the model trained so far is saved as {job.model_name!r}"
            state = INTERRUPTED if job.interrupted else CANCELLED if cancelled else DONE
            book.finish(job, state)
        log = logger.warning if job.cut or cancelled else logger.info
        log("training job %s (%s/%s) %s: %s", job.id, family, job.model_name, job.state,
            job.stop_reason)
