"""Human-in-the-loop rounds on a :class:`~cellsparse_app.storage.project.Project`.

Train a round on the annotated images, predict, compare with the annotations, the ground truth
and the previous round, export. These functions glue the engines (``train``, ``predict``,
``metrics``, ``export``) to the project; the web UI reaches them through
:class:`~cellsparse_app.session.workspace.Workspace`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Callable, Generator, Sequence

import numpy as np

from cellsparse_app.data.labels import from_dense
from cellsparse_app.data.margins import annotation_warnings
from cellsparse_app.storage.project import Project, RoundRecord
from cellsparse_app.session import overlays
from cellsparse_app.jobs.slot import TrainingSlot, process_slot

logger = logging.getLogger(__name__)

#: Export formats: key -> (file suffix, what people call it).
EXPORT_FORMATS: dict[str, tuple[str, str]] = {
    "tiff": (".tif", "Label TIFF (napari / Fiji)"),
    "geojson": (".geojson", "QuPath GeoJSON"),
    "imagej": ("_rois.zip", "ImageJ ROI zip"),
    "coco": ("_coco.json", "COCO JSON"),
    "csv": ("_objects.csv", "CSV measurements"),
    "sparse": ("_sparse.tif", "Sparse annotation TIFF (-1/0/1..N, for cellsparse train)"),
}
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


@dataclasses.dataclass(frozen=True)
class Prediction:
    """Result of predicting one image with the active round's model."""

    image_id: str
    name: str
    round: int
    n_objects: int
    seconds: float
    vs_annotations: dict | None  # metrics.match_labels against the user's annotations
    vs_truth: dict | None  # ... against the full ground truth, when the image has one


@dataclasses.dataclass(frozen=True)
class Comparison:
    """What the compare step shows for one image (all pictures ``uint8 (H, W, 3)``)."""

    image_id: str
    round: int
    input: np.ndarray
    prediction: np.ndarray
    n_objects: int
    errors: np.ndarray | None  # TP/FP/FN colouring against ``errors_against``
    errors_against: str | None  # "ground truth" or "your annotations"
    metrics: dict | None  # match_labels result behind ``errors``
    changes: np.ndarray | None  # against the previous round's prediction
    previous_round: int | None
    n_new: int = 0
    n_removed: int = 0


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
        ValueError: nothing annotated, no Foreground cell, or an incompatible model to continue.
    """
    from cellsparse_app.train import TrainedModel

    snapshot = project.snapshot()  # the user may keep annotating while this round trains
    ids, images, labels = project.training_data(snapshot)
    totals = project.totals()
    if not ids:
        raise ValueError("nothing to train on yet: accept some Foreground cells and mark some "
                         "Background first")
    if totals["n_objects"] == 0:
        raise ValueError("no Foreground cell annotated: accept at least one cell (ideally 5-20)")
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
    step = max(1, len(history) // HISTORY_POINTS)
    record = RoundRecord(
        index=project.next_round_index(), family=cfg.family, parent=parent,
        steps=int(history[-1]["step"]), seconds=round(time.monotonic() - start, 2),
        final_loss=float(history[-1]["loss"]),  # the engine's mean over its last report
        cancelled=bool(meta.get("cancelled", False)), n_objects=totals["n_objects"],
        background_px=totals["background_px"], history=history[::step],
    )
    return project.add_round(model, record, snapshot)


def predict_images(
    project: Project,
    image_ids: Sequence[str],
    cfg: Any = None,
    *,
    cache: Callable[[tuple, Callable[[], Any]], Any] | None = None,
    progress: Callable[[float, str], None] | None = None,
) -> list[Prediction]:
    """Predict images with the active round's model, store predictions and metrics.

    Args:
        cache: ``cache(key, load)`` returns a loaded model for ``key`` (lets a session keep
            the model in memory between calls); None loads it every time.
        progress: ``progress(fraction, text)`` before each image.

    Raises:
        RuntimeError: no model trained yet.
    """
    from cellsparse_app.data.metrics import match_labels
    from cellsparse_app.predict import PredictConfig, predict_instances
    from cellsparse_app.train import TrainedModel

    rec = project.round()
    model_dir = project.model_dir()
    load = lambda: TrainedModel.load(model_dir)  # noqa: E731
    model = cache((rec.index, str(model_dir)), load) if cache else load()
    cfg = cfg or PredictConfig()
    results = []
    for k, image_id in enumerate(image_ids):
        name = project.record(image_id).name
        if progress:
            progress(k / len(image_ids), f"predicting {name} ({k + 1}/{len(image_ids)})")
        start = time.monotonic()
        pred = predict_instances(model, project.image(image_id), cfg)
        seconds = time.monotonic() - start
        project.set_prediction(image_id, pred)
        annotations, truth = project.labels(image_id), project.truth(image_id)
        vs_ann = match_labels(annotations, pred) if (annotations > 0).any() else None
        vs_truth = match_labels(truth, pred) if truth is not None else None
        for kind, metrics in (("annotations", vs_ann), ("truth", vs_truth)):
            if metrics is not None:
                project.set_metrics(image_id, kind, _brief(metrics))
        results.append(Prediction(image_id, name, rec.index, int(len(np.unique(pred)) - 1),
                                  seconds, vs_ann, vs_truth))
    return results


def compare(project: Project, image_id: str, display: np.ndarray) -> Comparison:
    """Pictures and numbers of the compare step for one image.

    Raises:
        RuntimeError: the image has no prediction from the active round yet.
    """
    from cellsparse_app.data.metrics import match_labels

    pred = project.prediction(image_id)
    if pred is None:
        raise RuntimeError("no prediction for this image yet: click Predict first")
    truth = project.truth(image_id)
    annotations = project.labels(image_id)
    errors = metrics = against = None
    if truth is not None or (annotations > 0).any():
        against = "ground truth" if truth is not None else "your annotations"
        reference = truth if truth is not None else annotations
        metrics = match_labels(reference, pred, (0.5,))
        errors = overlays.error_overlay(display, reference, pred, metrics["fp_ids"][0],
                                      metrics["fn_ids"][0], metrics["ignored_ids"][0])
    changes, prev_round, n_new, n_removed = None, None, 0, 0
    previous = project.previous_prediction(image_id)
    if previous is not None:
        prev_round, prev = previous
        diff = match_labels(from_dense(prev.astype(np.int64)), pred, (0.5,))
        n_new, n_removed = len(diff["fp_ids"][0]), len(diff["fn_ids"][0])
        changes = overlays.change_overlay(display, prev, pred, diff["fn_ids"][0], diff["fp_ids"][0])
    return Comparison(
        image_id=image_id, round=project.active_round or 0, input=display,
        prediction=overlays.instances_overlay(display, pred),
        n_objects=int(len(np.unique(pred)) - 1),
        errors=errors, errors_against=against, metrics=metrics, changes=changes,
        previous_round=prev_round, n_new=n_new, n_removed=n_removed,
    )


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What :func:`export_files` wrote, and what it skipped and why (one sentence each)."""

    files: list[Path]
    skipped: list[str]


def export_files(
    project: Project, image_ids: Sequence[str], source: str, formats: Sequence[str], dest: Path
) -> ExportResult:
    """Write every chosen format (keys of :data:`EXPORT_FORMATS`) that applies to the prediction
    or annotation of each image; the rest is skipped with the reason, never fatal.

    Args:
        source: ``"prediction"`` (active round) or ``"annotations"`` (Foreground cells).

    Raises:
        ValueError: unknown source/format, no format chosen, or nothing could be written
            (the message gives every reason).
    """
    from cellsparse_app.data import export

    unknown = [f for f in formats if f not in EXPORT_FORMATS]
    if unknown or not formats:
        raise ValueError(f"choose export formats among {list(EXPORT_FORMATS)}, got {list(formats)}")
    if source not in ("prediction", "annotations"):
        raise ValueError(f"export source must be 'prediction' or 'annotations', got {source!r}")
    formats = list(dict.fromkeys(formats))
    skipped: list[str] = []
    if "sparse" in formats and source != "annotations":
        formats.remove("sparse")
        skipped.append(f"{EXPORT_FORMATS['sparse'][1]}: only for 'My annotations' (a prediction "
                       "has no unlabelled pixels)")
    dest.mkdir(parents=True, exist_ok=True)
    names, stacks, written = [], [], []
    for image_id in image_ids:
        name = project.record(image_id).name
        if source == "prediction":
            pred = project.prediction(image_id) if project.active_round else None
            if pred is None:
                skipped.append(f"{name}: no prediction yet (Predict it first)")
                continue
            labels = pred.astype(np.int32)
        else:
            labels = project.labels(image_id)
        stem = dest / f"{name}_{source}"
        names.append(f"{name}.tif")
        stacks.append(labels)
        for fmt in formats:
            if fmt == "coco":
                continue  # one file for all images, below
            path = Path(f"{stem}{EXPORT_FORMATS[fmt][0]}")
            try:
                written.append(_write_format(fmt, path, labels, project, image_id))
            except (ValueError, OSError) as exc:
                logger.warning("export of %s as %s failed: %s", name, fmt, exc)
                skipped.append(f"{name}, {EXPORT_FORMATS[fmt][1]}: {exc}")
    if "coco" in formats and stacks:
        stem = names[0][:-4] if len(names) == 1 else "all_images"
        written.append(export.write_coco(dest / f"{stem}_{source}_coco.json", stacks,
                                         file_names=names))
    if not written:
        raise ValueError("nothing exported: " + "; ".join(skipped))
    return ExportResult(written, skipped)


def _write_format(fmt: str, path: Path, labels: np.ndarray, project: Project,
                  image_id: str) -> Path:
    from cellsparse_app.data import export

    if fmt == "tiff":
        return export.write_label_tiff(path, labels)
    if fmt == "sparse":
        return export.write_label_tiff(path, labels, keep_unlabelled=True)
    if fmt == "geojson":
        return export.write_geojson(path, labels, label="cell")
    if fmt == "imagej":
        return export.write_imagej_rois(path, labels)
    if fmt == "csv":
        path.write_text(export.measure_objects(labels, project.image(image_id)))
        return path
    raise ValueError(f"unknown export format {fmt!r}")


def export_model(project: Project, dest: Path) -> Path:
    """The active round's model directory as a zip the CLI and API can load."""
    from cellsparse_app.data.export import zip_model

    rec = project.round()
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"cellsparse_{rec.family}_round{rec.index}.zip"
    path.write_bytes(zip_model(project.model_dir()))
    return path


def _brief(metrics: dict) -> dict:
    """The scalars of a match_labels result (what a round keeps)."""
    keys = ("thresholds", "ap", "precision", "recall", "tp", "fp", "fn", "n_true", "n_pred")
    return {k: metrics[k] for k in keys if k in metrics}
