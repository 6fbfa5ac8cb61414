"""Training jobs that run in the background: one worker thread, a bounded queue, progress, cancel.

Used by the REST API and the UI so that a model can train while SAM clicks and other users keep
being answered::

    runner = JobRunner(ModelStore(data_dir))
    job_id = runner.submit(images, labels, TrainConfig(max_seconds=60), model_name="default")
    runner.get(job_id).step          # progress snapshot (step, loss, history ...)
    runner.cancel(job_id)            # stops cleanly at the next step
    runner.wait(job_id).state        # "done" | "cancelled" | "failed"

A finished job's model is saved to the store atomically. A cancelled or failed job never touches
the stored model, so the last good model is kept; the partial model of a cancelled job stays
available in memory through :meth:`JobRunner.result`. Job states, records and snapshots live in
:mod:`cellsparse_app.job_records` (re-exported here).
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from cellsparse_app.job_records import (
    CANCELLED,
    DONE,
    FAILED,
    FINISHED_STATES,
    QUEUED,
    RUNNING,
    JobRecord,
    JobSnapshot,
    check_training_data,
)

if TYPE_CHECKING:
    from cellsparse_app.models.trained import TrainedModel
    from cellsparse_app.store import ModelStore
    from cellsparse_app.train import TrainConfig

__all__ = [
    "CANCELLED", "DONE", "FAILED", "FINISHED_STATES", "QUEUED", "RUNNING", "JobRunner",
    "JobSnapshot", "QueueFullError", "check_training_data",
]

logger = logging.getLogger(__name__)


class QueueFullError(RuntimeError):
    """Raised by :meth:`JobRunner.submit` when too many jobs are waiting."""


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
    ) -> None:
        if max_pending < 1 or workers < 1:
            raise ValueError(f"max_pending and workers must be >= 1, got {max_pending}, {workers}")
        self.store = store
        self.max_pending = max_pending
        self.history_points = history_points
        self.keep_finished = keep_finished
        self._train_fn = train_fn
        self._queue: queue.Queue[JobRecord | None] = queue.Queue()
        self._jobs: dict[str, JobRecord] = {}
        self._order = itertools.count()
        self._lock = threading.RLock()
        self._n_workers = workers
        self._threads: list[threading.Thread] = []
        self._closed = False

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
    ) -> str:
        """Queue a training job and return its id.

        Args:
            images, labels: training data (labels -1 unlabelled / 0 background / 1..N).
            config: a ``TrainConfig`` (its ``family`` picks the model family).
            model_name: save the result under this name in the store (validated).
            resume: continue from the stored model of that name, if any (loaded when the job
                starts, so queued jobs build on each other).
            model_config, image_config, initial: passed to ``train``.

        Raises:
            ValueError, TypeError: bad data (checked now, not when the job runs).
            QueueFullError: if ``max_pending`` jobs are already waiting.
            RuntimeError: after :meth:`shutdown`.
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
        )
        with self._lock:
            if self._closed:
                raise RuntimeError("the job runner has been shut down")
            if self._n_pending() >= self.max_pending:
                raise QueueFullError(
                    f"{self.max_pending} training jobs are already waiting; try again later"
                )
            self._jobs[job.id] = job
            self._prune()
            self._start_workers()
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

    def cancel(self, job_id: str) -> JobSnapshot:
        """Ask job ``job_id`` to stop (a queued job never starts); returns its snapshot."""
        with self._lock:
            job = self._job(job_id)
            job.cancel_event.set()
            if job.state == QUEUED:
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
            self.cancel(job_id)
        return ids

    def wait(self, job_id: str, timeout: float | None = None) -> JobSnapshot:
        """Block until job ``job_id`` finishes (or ``timeout`` seconds pass); returns a snapshot."""
        with self._lock:
            job = self._job(job_id)
        job.finished.wait(timeout)
        return self.get(job_id)

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
        """Cancel all jobs and stop the workers (waiting up to ``timeout`` seconds)."""
        with self._lock:
            self._closed = True
            jobs = [j for j in self._jobs.values() if j.state in (QUEUED, RUNNING)]
        for job in jobs:
            self.cancel(job.id)
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout)

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

    def _snapshot(self, job: JobRecord) -> JobSnapshot:
        position = None
        if job.state == QUEUED:
            queued = sorted(
                (j for j in self._jobs.values() if j.state == QUEUED), key=lambda j: j.created
            )
            position = next(i for i, j in enumerate(queued) if j is job)
        return job.snapshot(position, self.history_points)

    def _finish(self, job: JobRecord, state: str) -> None:
        job.state = state
        job.finished_at = time.time()
        job.images = job.labels = None  # free memory; snapshots do not need them
        job.finished.set()

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            with self._lock:
                if job.state != QUEUED:  # cancelled while waiting
                    continue
                job.state = RUNNING
                job.started = time.time()
            try:
                self._run(job)
            except Exception as exc:  # a job failing must never kill the worker
                logger.exception("training job %s failed", job.id)
                with self._lock:
                    job.error = str(exc) or type(exc).__name__
                    job.error_type = type(exc).__name__
                    self._finish(job, FAILED)

    def _run(self, job: JobRecord) -> None:
        train_fn = self._train_fn
        if train_fn is None:
            from cellsparse_app.train import train as train_fn
        initial = job.initial
        family = job.config.family
        if initial is None and job.resume and job.model_name and self.store is not None:
            if self.store.exists(family, job.model_name):
                initial = self.store.load(family, job.model_name)
                logger.info("job %s continues training %s/%s", job.id, family, job.model_name)

        def progress(p: Any) -> None:
            with self._lock:
                job.step = int(p.step)
                job.total_steps = p.total_steps
                job.loss = float(p.loss)
                job.elapsed = float(p.elapsed)
                fraction = getattr(p, "fraction", None)
                job.fraction = None if fraction is None else float(fraction)
                job.history.append((int(p.step), float(p.loss)))

        model = train_fn(
            job.images,
            job.labels,
            job.config,
            model_config=job.model_config,
            image_config=job.image_config,
            initial=initial,
            progress=progress,
            should_stop=job.cancel_event.is_set,
        )
        cancelled = job.cancel_event.is_set() or bool(getattr(model, "meta", {}).get("cancelled"))
        saved = False
        if not cancelled and job.model_name and self.store is not None:
            self.store.save(family, job.model_name, model)
            saved = True
        with self._lock:
            job.result = model
            job.model_saved = saved
            self._finish(job, CANCELLED if cancelled else DONE)
        logger.info("training job %s %s", job.id, job.state)

