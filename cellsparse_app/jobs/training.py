"""Running one training job's training: its data, the model it continues, progress, the save.

A worker of :class:`~cellsparse_app.jobs.workers.TrainingWorkers` calls :func:`run_training` once
the job holds the training slot; it and the :class:`~cellsparse_app.jobs.book.JobBook` keep the
bookkeeping (states, stop reasons, the journal).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, Callable

from cellsparse_app.jobs.records import JobRecord

if TYPE_CHECKING:
    from cellsparse_app.jobs.journal import JobJournal
    from cellsparse_app.models.trained import TrainedModel
    from cellsparse_app.storage.model_store import ModelStore

logger = logging.getLogger(__name__)


def run_training(
    job: JobRecord,
    train_fn: Callable[..., "TrainedModel"] | None,
    store: "ModelStore | None",
    lock: threading.RLock,
    journal: "JobJournal | None",
) -> tuple["TrainedModel", bool, int, bool]:
    """Train ``job`` and save its model under its name when it should be kept.

    Args:
        job: the job (its progress fields are updated under ``lock`` at every step).
        train_fn: the training function (None: ``cellsparse_app.train.train``).
        store: the model store (None: nothing saved).
        lock: the runner's lock.
        journal: where the data of a job restored from disk is (None: in memory).

    Returns:
        ``(model, cancelled, steps_done, saved)``. A cancelled job's model is kept when it
        made progress and was not cancelled by deleting or resetting its model.
    """
    if train_fn is None:
        from cellsparse_app.train import train as train_fn
    if job.images is None and journal is not None:  # restored from disk
        job.images, job.labels = journal.load_data(job.id)
    initial = job.initial
    family = job.config.family
    if (initial is None and job.resume and job.model_name and store is not None
            and store.exists(family, job.model_name)):
        initial = store.load(family, job.model_name)
        logger.info("job %s continues training %s/%s", job.id, family, job.model_name)

    def progress(p: Any) -> None:
        with lock:
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
    meta = getattr(model, "meta", {}) or {}
    cancelled = job.cancel_event.is_set() or bool(meta.get("cancelled"))
    steps_done = int(meta.get("steps", job.step))
    saved = False
    keep = not cancelled or (steps_done > 0 and not job.discard_on_cancel)
    if keep and job.model_name and store is not None:
        store.save(family, job.model_name, model)
        saved = True
    return model, cancelled, steps_done, saved
