"""Training rounds of a :class:`~cellsparse_app.storage.project.Project`, and a session's handle
on them.

:func:`train_round` trains on the annotated images and saves the model as the next round;
:class:`Rounds` is what a :class:`~cellsparse_app.session.workspace.Workspace` offers its front
end: train and stop, roll back, predict, compare and export the shown image (the last three
through :mod:`cellsparse_app.session.results`).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, Generator

import numpy as np

from cellsparse_app.data.margins import annotation_warnings
from cellsparse_app.jobs.slot import TrainingSlot, process_slot
from cellsparse_app.session import results
from cellsparse_app.session.canvas import Canvas, CanvasView
from cellsparse_app.storage.project import Project, RoundRecord

logger = logging.getLogger(__name__)

#: Most points kept in a round's stored loss curve.
HISTORY_POINTS = 500
#: Seconds between two :class:`Waiting` items while a round waits for the training slot.
WAIT_POLL = 0.25


@dataclasses.dataclass(frozen=True)
class Notice:
    """A warning for the user, yielded by :func:`train_round` before training starts."""

    text: str


@dataclasses.dataclass(frozen=True)
class Waiting:
    """Yielded by :func:`train_round` while other trainings hold the process's training slot.

    Attributes:
        ahead: trainings before this one (training now or waiting ahead).
    """

    ahead: int

    @property
    def text(self) -> str:
        return f"waiting for a free training slot: {self.ahead} ahead"


def train_round(
    project: Project,
    cfg: Any,
    *,
    continue_training: bool = False,
    should_stop: Callable[[], bool] | None = None,
    slot: TrainingSlot | None = None,
) -> Generator[Any, None, RoundRecord | None]:
    """Train on every annotated image and save the model as the next round.

    Yields :class:`Notice` items first (:func:`~cellsparse_app.data.margins.annotation_warnings`: no
    Background annotated, or none near the cells), then :class:`Waiting` items while other
    trainings of the process hold the training ``slot`` (default
    :func:`~cellsparse_app.jobs.slot.process_slot`, which REST jobs also take), then the
    engine's ``TrainProgress`` per step. Returns the new :class:`RoundRecord`, or None when the
    run was stopped before its first step (a stop while waiting leaves the queue). A run stopped
    by ``should_stop`` (or by closing the generator) keeps the model trained so far as a round
    marked ``cancelled``; a failing run raises and leaves annotations and earlier rounds
    untouched.

    Raises:
        ValueError: nothing annotated, an incompatible model to continue, or training data that
            :func:`~cellsparse_app.train.inputs.check_inputs` refuses (e.g. no Foreground cell).
        TypeError: ditto, for labels or images of the wrong type.
    """
    from cellsparse_app.train import TrainedModel
    from cellsparse_app.train.inputs import check_inputs

    snapshot = project.snapshot()  # the user may keep annotating while this round trains
    ids, images, labels = project.training_data(snapshot)
    totals = project.totals()
    if not ids:
        raise ValueError("nothing to train on yet: accept some Foreground cells and mark some "
                         "Background first")
    # The engine checks again once it holds the slot; checking now refuses bad data (no
    # Foreground cell...) at once, not after a wait in the queue.
    check_inputs(images, labels, project.image_config, warn=False)  # notices below say it
    for text in annotation_warnings(labels):  # no Background, or none near the cells
        yield Notice(text)
    initial, parent = None, None
    if continue_training:
        if project.active_round is None:
            raise ValueError("no model to continue from: train from scratch first")
        parent = project.active_round
        initial = TrainedModel.load(project.model_dir())
        if initial.family != cfg.family:
            raise ValueError(f"round {parent} is a {initial.family!r} model; cannot continue it as "
                             f"{cfg.family!r} (train from scratch instead)")
    user_stop = should_stop or (lambda: False)
    with (slot or process_slot()).enter(f"web app round ({project.directory.name})") as ticket:
        while not ticket.wait(WAIT_POLL):
            if user_stop():
                logger.info("training stopped while waiting for the training slot")
                return None
            yield Waiting(ticket.ahead())
        return (yield from _train_engine(project, cfg, images, labels, initial, parent, totals,
                                         snapshot, user_stop))


def _train_engine(
    project: Project, cfg: Any, images: Any, labels: Any, initial: Any, parent: int | None,
    totals: dict[str, int], snapshot: dict[str, np.ndarray], user_stop: Callable[[], bool],
) -> Generator[Any, None, RoundRecord | None]:
    """Run the engine, yield its progress and save the round (see :func:`train_round`)."""
    from cellsparse_app.train import train_iter

    stop_now = [False]
    engine = train_iter(images, labels, cfg, image_config=project.image_config, initial=initial,
                        should_stop=lambda: stop_now[0] or user_stop())
    history: list[dict[str, float]] = []
    start = time.monotonic()
    model = None
    try:
        while True:
            progress = next(engine)
            history.append({"step": int(progress.step), "loss": float(progress.loss)})
            yield progress
    except StopIteration as finished:
        model = finished.value
    except GeneratorExit:
        # The consumer went away (page closed, event cancelled): stop cleanly, keep the model.
        stop_now[0] = True
        model = _drain(engine)
        _save_round(project, model, cfg, parent, history, start, totals, snapshot)
        raise
    return _save_round(project, model, cfg, parent, history, start, totals, snapshot)


def _drain(engine: Generator) -> Any:
    try:
        while True:
            next(engine)
    except StopIteration as finished:
        return finished.value


def _save_round(
    project: Project, model: Any, cfg: Any, parent: int | None, history: list[dict[str, float]],
    start: float, totals: dict[str, int], snapshot: dict[str, np.ndarray],
) -> RoundRecord | None:
    if model is None or not history or history[-1]["step"] < 1:
        logger.info("training stopped before the first step; no round saved")
        return None
    meta = getattr(model, "meta", {}) or {}
    config = getattr(model, "config", None)  # the family's config: diameter, scale
    step = max(1, len(history) // HISTORY_POINTS)
    record = RoundRecord(
        index=project.next_round_index(), family=cfg.family, parent=parent,
        steps=int(history[-1]["step"]), seconds=round(time.monotonic() - start, 2),
        final_loss=float(history[-1]["loss"]),  # the engine's mean over its last report
        cancelled=bool(meta.get("cancelled", False)), n_objects=totals["n_objects"],
        background_px=totals["background_px"], history=history[::step],
        step_cap=meta.get("step_cap"), diameter=getattr(config, "diameter", None),
        scale=float(getattr(config, "scale", 1.0) or 1.0),
    )
    return project.add_round(model, record, snapshot)


class Rounds:
    """A session's rounds on the project its ``canvas`` shows; see the module docstring.

    Args:
        canvas: the shown image (its project trains; compare and "current" scopes use its image).
        lock: the session's lock (shared with the canvas).
        cancel: the session's stop flag; set it (:meth:`request_stop`) to stop a running or
            queued training after its current step.
    """

    def __init__(self, canvas: Canvas, *, lock: threading.RLock, cancel: threading.Event) -> None:
        self.canvas = canvas
        self.cancel = cancel
        self._lock = lock
        self._model: tuple[tuple, Any] | None = None

    @property
    def project(self) -> Project:
        return self.canvas.project

    def arm_training(self) -> None:
        """Forget earlier stop requests; call when the user asks for a training run (a stop
        pressed while the run still waits in the queue then cancels it before it starts)."""
        self.cancel.clear()

    def request_stop(self) -> None:
        """Ask the running (or queued) training to stop after its current step."""
        self.cancel.set()

    def train(
        self, cfg: Any, *, continue_training: bool = False
    ) -> Generator[Any, None, RoundRecord | None]:
        """Train a round on every annotated image; yields notices and progress, returns the
        round (None if stopped before the first step). See :func:`train_round`."""
        return (yield from train_round(self.project, cfg, continue_training=continue_training,
                                       should_stop=self.cancel.is_set))

    def rollback(self, index: int) -> CanvasView:
        """Return to round ``index`` (model + annotations)."""
        with self._lock:
            self.project.rollback(index)
            self.canvas.reset_prompts()
            return self.canvas.view(f"Rolled back to round {index}")

    def predict(
        self, scope: str = "current", cfg: Any = None,
        progress: Callable[[float, str], None] | None = None,
    ) -> tuple[list[results.Prediction], results.Comparison]:
        """Predict the current image (``scope="current"``) or all images with the active model;
        returns the predictions and the comparison of the current image."""
        predictions = results.predict_images(self.project, self._ids(scope), cfg,
                                             cache=self._cached_model, progress=progress)
        return predictions, self.compare()

    def compare(self) -> results.Comparison:
        """Prediction vs input, errors vs annotations/ground truth, changes vs previous round."""
        return results.compare(self.project, self.canvas.require_image(), self.canvas.display())

    def export(
        self, source: str, scope: str, formats: list[str], dest: str | Path
    ) -> results.ExportResult:
        """Write annotation or prediction exports; see :func:`results.export_files`."""
        return results.export_files(self.project, self._ids(scope), source, formats, Path(dest))

    def export_model(self, dest: str | Path) -> Path:
        """The active round's model as a zip in ``dest``."""
        return results.export_model(self.project, Path(dest))

    def _ids(self, scope: str) -> list[str]:
        if scope == "all":
            return [r.id for r in self.project.images]
        return [self.canvas.require_image()]

    def _cached_model(self, key: tuple, load: Callable[[], Any]) -> Any:
        # One loaded model per session: predicting again with the same round costs nothing.
        if self._model is None or self._model[0] != key:
            self._model = (key, load())
        return self._model[1]
