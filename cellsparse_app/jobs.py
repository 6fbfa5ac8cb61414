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
(:mod:`cellsparse_app.jobs_journal`): after a restart the records are back, queued jobs run, and
jobs that were running are ``interrupted`` and can be resumed (:meth:`JobRunner.resume`).
Every job holds a :class:`~cellsparse_app.training_slot.Ticket` of the runner's
:class:`~cellsparse_app.training_slot.TrainingSlot` from submission on and trains only once it
is granted: the server passes the process's slot, which the web app's rounds also take, so a
REST job and a web-app training never run at the same time and a queued job's
``queue_position`` counts both (trainings waiting ahead of it; 0: next).
:meth:`JobRunner.shutdown` stops the running job (its model so far is saved, it ends
``interrupted``), keeps queued jobs on disk and wakes everyone waiting. Job states, records and
snapshots live in :mod:`cellsparse_app.job_records` (re-exported here).
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from cellsparse_app.job_records import (
    CANCELLED,
    DONE,
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
from cellsparse_app.job_training import run_training
from cellsparse_app.training_slot import TrainingSlot

if TYPE_CHECKING:
    from cellsparse_app.models.trained import TrainedModel
    from cellsparse_app.store import ModelStore
    from cellsparse_app.train import TrainConfig

__all__ = [
    "CANCELLED", "DONE", "FAILED", "FINISHED_STATES", "INTERRUPTED", "QUEUED", "RUNNING",
    "JobRunner", "JobSnapshot", "QueueFullError", "ShuttingDownError", "check_training_data",
]

logger = logging.getLogger(__name__)


class QueueFullError(RuntimeError):
    """Raised by :meth:`JobRunner.submit` when too many jobs are waiting."""


class ShuttingDownError(RuntimeError):
    """Raised by :meth:`JobRunner.submit` after :meth:`JobRunner.shutdown` began."""


class JobRunner:
    """Runs training jobs one at a time (by default) in a daemon worker thread.

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
            passes :func:`~cellsparse_app.training_slot.process_slot`, shared with the web app.
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
            raise ValueError(f"max_pending and workers must be >= 1, got {max_pending}, {workers}")
        self.store = store
        self.max_pending = max_pending
        self.history_points = history_points
        self.keep_finished = keep_finished
        self._train_fn = train_fn
        self.slot = slot if slot is not None else TrainingSlot(capacity=workers)
        self._queue: queue.Queue[JobRecord | None] = queue.Queue()
        self._jobs: dict[str, JobRecord] = {}
        self._order = itertools.count()
        self._lock = threading.RLock()
        self._n_workers = workers
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._closing = threading.Event()
        self._journal = None
        if journal_dir is not None:
            from cellsparse_app.jobs_journal import JobJournal

            self._journal = JobJournal(journal_dir)
            self._restore()

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
            from cellsparse_app.store import validate_name

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
            if self._closed:
                raise ShuttingDownError("the server is shutting down: no new training jobs")
            if self._n_pending() >= self.max_pending:
                raise QueueFullError(
                    f"{self.max_pending} training jobs are already waiting; try again later"
                )
            self._jobs[job.id] = job
            job.ticket = self.slot.enter(f"training job {job.id}")
            self._prune()
            self._start_workers()
        if self._journal is not None:
            durable = model_config is None and initial is None and hasattr(config, "to_dict")
            if durable:
                try:
                    self._journal.save_data(job.id, images, labels)
                    job.rerunnable = True
                except OSError as exc:
                    logger.error("could not keep the data of job %s on disk: %s", job.id, exc)
            self._journal.save(job)
        for text in job.warnings:
            logger.warning("training job %s: %s", job.id, text)
        self._queue.put(job)
        logger.info("queued training job %s (%s, model %r)", job.id, config.family, model_name)
        return job.id

    def get(self, job_id: str) -> JobSnapshot:
        """Snapshot of job ``job_id``.

        Raises:
            KeyError: unknown (or long forgotten) job id.
        """
        with self._lock:
            return self._snapshot(self._job(job_id))

    def list(self) -> list[JobSnapshot]:
        """Snapshots of all remembered jobs, oldest first."""
        with self._lock:
            return [self._snapshot(j) for j in sorted(self._jobs.values(), key=lambda j: j.created)]

    def cancel(self, job_id: str, *, keep_model: bool = True) -> JobSnapshot:
        """Ask job ``job_id`` to stop (a queued job never starts); returns its snapshot.

        A running job stops at its next step and saves the model trained so far under its
        name, unless ``keep_model`` is false (the model is being deleted or reset).
        """
        with self._lock:
            job = self._job(job_id)
            if job.state in FINISHED_STATES:
                return self._snapshot(job)
            job.discard_on_cancel = job.discard_on_cancel or not keep_model
            job.cancel_event.set()
            if job.state == QUEUED:
                job.stop_reason = "cancelled before it started"
                self._finish(job, CANCELLED)
            return self._snapshot(job)

    def cancel_model(self, family: str, model_name: str) -> list[str]:
        """Cancel every unfinished job that would write ``family/model_name``; returns ids."""
        with self._lock:
            ids = [
                j.id
                for j in self._jobs.values()
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
            job = self._job(job_id)
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

    def result(self, job_id: str) -> "TrainedModel | None":
        """The trained model of a finished job (partial for a cancelled one), else None."""
        with self._lock:
            return self._job(job_id).result

    def busy(self) -> dict[str, int]:
        """``{"queued": n, "running": m}``."""
        with self._lock:
            states = [j.state for j in self._jobs.values()]
        return {"queued": states.count(QUEUED), "running": states.count(RUNNING)}

    def shutdown(self, timeout: float | None = 10.0) -> None:
        """Stop: no new jobs, the running job ends ``interrupted`` (its model so far saved),
        queued jobs stay queued on disk (cancelled without a journal), waiters are woken.
        Waits up to ``timeout`` seconds for the workers. Safe to call twice."""
        with self._lock:
            self._closed = True
            self._closing.set()
            for job in self._jobs.values():
                if job.state == RUNNING:
                    job.interrupted = True
                    job.cancel_event.set()
                elif job.state == QUEUED and self._journal is None:
                    job.cancel_event.set()
                    job.stop_reason = "cancelled: the server shut down before it started"
                    self._finish(job, CANCELLED)
                elif job.state == QUEUED and job.ticket is not None:
                    job.ticket.release()  # stays queued on disk, for the next start
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout)

    def resume(self, job_id: str, *, restart: bool = False) -> str:
        """Queue a new job from an interrupted (or cancelled/failed) job's saved data.

        Args:
            job_id: the job to resume.
            restart: False: continue from the model saved under its name with the steps still
                to do (all of them for a time budget); True: run it again as it was submitted.

        Returns:
            The new job's id.

        Raises:
            ValueError: the job is still queued or running, or finished successfully.
            FileNotFoundError: its training data is not kept (jobs without a journal, or
                resumed already).
        """
        with self._lock:
            job = self._job(job_id)
            if job.state not in (INTERRUPTED, CANCELLED, FAILED):
                raise ValueError(f"job {job_id} is {job.state}; only interrupted, cancelled or "
                                 "failed jobs can be resumed")
            if self._journal is None or not job.rerunnable:
                raise FileNotFoundError(f"the training data of job {job_id} is not kept; "
                                        "submit the training again")
            config, resume = job.config, job.resume
            done = job.step
        images, labels = self._journal.load_data(job_id)
        if not restart:
            resume = True
            if getattr(config, "steps", None) is not None:
                config = config.replace(steps=max(1, int(config.steps) - int(done)))
        new_id = self.submit(images, labels, config, model_name=job.model_name, resume=resume,
                             image_config=job.image_config, budget_note=job.budget_note,
                             resumed_from=job_id)
        with self._lock:
            job.rerunnable = False
        self._journal.drop_data(job_id)
        self._journal.save(job)
        logger.info("job %s %s as job %s", job_id, "re-run" if restart else "resumed", new_id)
        return new_id

    # -- internals --------------------------------------------------------------------------
    def _job(self, job_id: str) -> JobRecord:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise KeyError(f"no training job with id {job_id!r}") from None

    def _n_pending(self) -> int:
        return sum(1 for j in self._jobs.values() if j.state == QUEUED)

    def _start_workers(self) -> None:
        while len(self._threads) < self._n_workers:
            thread = threading.Thread(
                target=self._work, name=f"cellsparse-train-{len(self._threads)}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def _prune(self) -> None:
        finished = sorted(
            (j for j in self._jobs.values() if j.state in FINISHED_STATES), key=lambda j: j.created
        )
        for job in finished[: max(0, len(finished) - self.keep_finished)]:
            del self._jobs[job.id]
            if self._journal is not None:
                self._journal.delete(job.id)

    def _restore(self) -> None:
        """Read the journal: records back, queued jobs queued again, running ones interrupted."""
        from cellsparse_app.jobs_journal import restore_jobs

        jobs, requeue = restore_jobs(self._journal)
        self._jobs.update({job.id: job for job in jobs})
        if requeue:
            self._start_workers()
            for job in requeue:
                job.ticket = self.slot.enter(f"training job {job.id}")
                self._queue.put(job)

    def _snapshot(self, job: JobRecord) -> JobSnapshot:
        position = None
        if job.state == QUEUED and job.ticket is not None:
            position = job.ticket.waiting_ahead()
        return job.snapshot(position, self.history_points)

    def _finish(self, job: JobRecord, state: str) -> None:
        job.state = state
        job.finished_at = time.time()
        job.images = job.labels = None  # free memory; snapshots do not need them
        if job.ticket is not None:
            job.ticket.release()  # leaves the queue, or frees the slot
        if self._journal is not None:
            if state == DONE:  # others keep their data (until pruned): they may be re-run
                self._journal.drop_data(job.id)
                job.rerunnable = False
            self._journal.save(job)
        job.finished.set()

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            # Wait for the training slot (another job, or a web-app round, may hold it).
            while job.ticket is not None and not job.ticket.wait(0.2):
                if job.state != QUEUED or self._closing.is_set():
                    break
            with self._lock:
                if job.state != QUEUED or self._closed:  # cancelled, or the server is stopping
                    if job.ticket is not None and job.state == QUEUED:
                        job.ticket.release()  # stays queued on disk, for the next start
                    continue
                job.state = RUNNING
                job.started = time.time()
            if self._journal is not None:
                self._journal.save(job)
            try:
                self._run(job)
            except Exception as exc:  # a job failing must never kill the worker
                logger.exception("training job %s failed", job.id)
                with self._lock:
                    job.error = str(exc) or type(exc).__name__
                    job.error_type = type(exc).__name__
                    job.stop_reason = f"failed after {job.step} steps: {job.error}"
                    self._finish(job, FAILED)

    def _run(self, job: JobRecord) -> None:
        try:
            model, cancelled, steps_done, saved = run_training(
                job, self._train_fn, self.store, self._lock, self._journal)
        finally:
            if job.ticket is not None:
                job.ticket.release()  # the next training may start while we save the record
        family = job.config.family
        with self._lock:
            job.result = model
            job.model_saved = saved
            job.step = steps_done
            cap = (getattr(model, "meta", None) or {}).get("step_cap")
            job.describe_stop(steps_done, cancelled, cap)
            if saved and cancelled:
                job.stop_reason += f"; the model trained so far is saved as {job.model_name!r}"
            state = INTERRUPTED if job.interrupted else CANCELLED if cancelled else DONE
            self._finish(job, state)
        log = logger.warning if job.cut or cancelled else logger.info
        log("training job %s (%s/%s) %s: %s", job.id, family, job.model_name, job.state,
            job.stop_reason)
