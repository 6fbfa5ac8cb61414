"""What a background training job is: its states, its record, the snapshot others may read.

:class:`JobRecord` is the mutable state that :class:`cellsparse_app.jobs.runner.JobRunner`
updates under its lock; :class:`JobSnapshot` is the frozen copy handed to other threads and
serialised by the API. :func:`check_training_data` rejects data that cannot train before a job is
queued, by the rules of :mod:`cellsparse_app.train.inputs`.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:
    from cellsparse_app.jobs.slot import Ticket
    from cellsparse_app.models.trained import TrainedModel
    from cellsparse_app.train import TrainConfig

QUEUED, RUNNING, DONE, CANCELLED, FAILED = "queued", "running", "done", "cancelled", "failed"
#: A job that was running when the server stopped (shutdown or crash); it can be resumed.
INTERRUPTED = "interrupted"
FINISHED_STATES = (DONE, CANCELLED, FAILED, INTERRUPTED)


@dataclasses.dataclass(frozen=True)
class JobSnapshot:
    """A consistent, read-only view of a job, safe to hand to other threads and serialise."""

    id: str
    state: str
    family: str
    model_name: str | None
    step: int
    total_steps: int | None
    loss: float | None
    elapsed: float
    fraction: float | None  # share of the budget (steps or time) used, when known
    history: tuple[tuple[int, float], ...]  # (step, loss), thinned to at most ``history_points``
    queue_position: int | None
    error: str | None
    error_type: str | None
    model_saved: bool
    created: float
    started: float | None
    finished: float | None
    steps_requested: int | None = None  # the request's step count (None: a time budget)
    max_seconds: float | None = None  # the time budget applied
    budget_note: str | None = None  # where the time budget came from (e.g. the server's cap)
    stop_reason: str | None = None  # why training ended, in words (finished jobs)
    cut: bool = False  # fewer steps than requested were trained
    resumed_from: str | None = None  # the job this one resumes or re-runs
    rerunnable: bool = False  # its training data is on disk: it can be resumed or re-run
    warnings: tuple[str, ...] = ()  # likely mistakes in the training data (it still trains)

    @property
    def done(self) -> bool:
        """Whether the job has finished (successfully or not)."""
        return self.state in FINISHED_STATES

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (history as ``[{"step", "loss"}]``)."""
        d = dataclasses.asdict(self)
        d["history"] = [{"step": s, "loss": v} for s, v in self.history]
        if self.state == DONE:
            d["progress"] = 1.0
        elif self.fraction is not None:
            d["progress"] = min(1.0, self.fraction)
        else:
            d["progress"] = min(1.0, self.step / self.total_steps) if self.total_steps else None
        return d


#: Snapshot fields that a :class:`JobRecord` holds under the same name (copied as they are).
_SHARED_FIELDS = tuple(
    f.name for f in dataclasses.fields(JobSnapshot)
    if f.name not in ("family", "history", "queue_position", "finished", "steps_requested",
                      "max_seconds", "warnings")
)


@dataclasses.dataclass
class JobRecord:
    """One job's data and progress; mutated only under the runner's lock."""

    id: str
    images: list[np.ndarray] | None
    labels: list[np.ndarray] | None
    config: "TrainConfig"
    model_name: str | None
    resume: bool
    model_config: Any
    image_config: Any
    initial: "TrainedModel | None"
    created: float = dataclasses.field(default_factory=time.time)
    state: str = QUEUED
    step: int = 0
    total_steps: int | None = None
    loss: float | None = None
    elapsed: float = 0.0
    fraction: float | None = None
    history: list[tuple[int, float]] = dataclasses.field(default_factory=list)
    error: str | None = None
    error_type: str | None = None
    model_saved: bool = False
    started: float | None = None
    finished_at: float | None = None
    result: "TrainedModel | None" = None
    budget_note: str | None = None
    stop_reason: str | None = None
    cut: bool = False
    resumed_from: str | None = None
    rerunnable: bool = False
    warnings: list[str] = dataclasses.field(default_factory=list)
    #: cancelled by a reset/delete: the partial model must not be stored
    discard_on_cancel: bool = False
    #: stopped by the server's shutdown: the job ends as ``interrupted``
    interrupted: bool = False
    cancel_event: threading.Event = dataclasses.field(default_factory=threading.Event)
    finished: threading.Event = dataclasses.field(default_factory=threading.Event)
    #: its place in the training slot's queue (:mod:`cellsparse_app.jobs.slot`)
    ticket: "Ticket | None" = None

    def snapshot(self, queue_position: int | None, history_points: int) -> JobSnapshot:
        """A frozen copy, the loss history thinned evenly to at most ``history_points``."""
        history = self.history
        if len(history) > history_points:
            idx = np.linspace(0, len(history) - 1, history_points).round().astype(int)
            history = [history[i] for i in idx]
        return JobSnapshot(
            **{name: getattr(self, name) for name in _SHARED_FIELDS},
            family=self.config.family,
            history=tuple(history),
            queue_position=queue_position,
            finished=self.finished_at,
            warnings=tuple(self.warnings),
            steps_requested=getattr(self.config, "steps", None),
            max_seconds=getattr(self.config, "max_seconds", None),
        )

    def describe_stop(self, steps_done: int, cancelled: bool, step_cap: int | None = None) -> None:
        """Set :attr:`stop_reason` and :attr:`cut` once training has ended.

        ``step_cap``: the step cap that the training applied to sparse annotations
        (``TrainedModel.meta["step_cap"]``), when it ended the round before the time budget.
        """
        requested = getattr(self.config, "steps", None)
        seconds = getattr(self.config, "max_seconds", None)
        self.cut = requested is not None and steps_done < requested
        if self.interrupted:
            self.stop_reason = f"interrupted by the server's shutdown after {steps_done} steps"
        elif cancelled:
            self.stop_reason = f"cancelled after {steps_done} steps"
        elif requested is not None and not self.cut:
            self.stop_reason = f"all {requested} requested steps done"
        elif requested is None and step_cap and steps_done >= step_cap:
            self.stop_reason = (f"stopped after {steps_done} steps, the step cap for sparse "
                                "annotations (longer training over-fits a few annotated cells)")
        elif seconds is not None:
            note = f" ({self.budget_note})" if self.budget_note else ""
            self.stop_reason = (f"time budget of {seconds:g} s reached after {steps_done} "
                                f"steps{note}")
        else:
            self.stop_reason = f"training ended after {steps_done} steps"


def check_training_data(
    images: Sequence[np.ndarray], labels: Sequence[np.ndarray]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Fail fast on training data that cannot work, before a job is queued.

    The rules and messages are :func:`cellsparse_app.train.inputs.check_data`'s (training
    applies the same ones).
    """
    # Imported here: the train package loads torch, which only submitting a job needs.
    from cellsparse_app.train.inputs import check_data

    return check_data(images, labels)


def training_warnings(labels: Sequence[np.ndarray]) -> list[str]:
    """Likely mistakes in training labels that still allow training (e.g. no background); see
    :func:`cellsparse_app.train.inputs.input_warnings`."""
    from cellsparse_app.train.inputs import input_warnings

    return input_warnings(labels)
