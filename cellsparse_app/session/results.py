"""Results of a round on a :class:`~cellsparse_app.storage.project.Project`: predictions,
the compare step's pictures and numbers, and export files.

These functions glue the engines (``predict``, ``metrics``, ``export``) to the project and
return data (dataclasses, numbers, paths); the front ends word and lay them out.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from cellsparse_app.data.labels import from_dense
from cellsparse_app.session import overlays
from cellsparse_app.storage.project import Project

logger = logging.getLogger(__name__)

#: Export formats: key -> file suffix (the front ends name them).
EXPORT_SUFFIXES: dict[str, str] = {
    "tiff": ".tif",
    "geojson": ".geojson",
    "imagej": "_rois.zip",
    "coco": "_coco.json",
    "csv": "_objects.csv",
    "sparse": "_sparse.tif",
}
#: Where each export source comes from.
EXPORT_SOURCES = ("prediction", "annotations")


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
    errors_against: str | None  # "truth" or "annotations": the reference of ``errors``
    metrics: dict | None  # match_labels result behind ``errors``
    changes: np.ndarray | None  # against the previous round's prediction
    previous_round: int | None
    n_new: int = 0
    n_removed: int = 0


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
        against = "truth" if truth is not None else "annotations"
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
class Skipped:
    """An export left out, and why: of ``image`` (None: every image) in ``format`` (a key of
    :data:`EXPORT_SUFFIXES`; None: every format)."""

    image: str | None
    format: str | None
    reason: str

    def __str__(self) -> str:
        where = [self.image or "", f"format {self.format!r}" if self.format else ""]
        return f"{', '.join(w for w in where if w)}: {self.reason}"


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What :func:`export_files` wrote, and what it skipped."""

    files: list[Path]
    skipped: list[Skipped]


class NothingExported(ValueError):
    """No file could be written; :attr:`skipped` says why for each."""

    def __init__(self, skipped: list[Skipped]) -> None:
        super().__init__("nothing exported: " + "; ".join(map(str, skipped)))
        self.skipped = skipped


def export_files(
    project: Project, image_ids: Sequence[str], source: str, formats: Sequence[str], dest: Path
) -> ExportResult:
    """Write every chosen format (keys of :data:`EXPORT_SUFFIXES`) that applies to the
    prediction or annotation of each image; the rest is skipped with the reason, never fatal.

    Args:
        source: ``"prediction"`` (active round) or ``"annotations"`` (Foreground cells).

    Raises:
        ValueError: unknown source/format or no format chosen.
        NothingExported: nothing could be written.
    """
    from cellsparse_app.data import export

    unknown = [f for f in formats if f not in EXPORT_SUFFIXES]
    if unknown or not formats:
        raise ValueError(f"choose export formats among {list(EXPORT_SUFFIXES)}, "
                         f"got {list(formats)}")
    if source not in EXPORT_SOURCES:
        raise ValueError(f"export source must be one of {EXPORT_SOURCES}, got {source!r}")
    formats = list(dict.fromkeys(formats))
    skipped: list[Skipped] = []
    if "sparse" in formats and source != "annotations":
        formats.remove("sparse")
        skipped.append(Skipped(None, "sparse", "only for annotations (a prediction has no "
                                               "unlabelled pixels)"))
    dest.mkdir(parents=True, exist_ok=True)
    names, stacks, written = [], [], []
    for image_id in image_ids:
        name = project.record(image_id).name
        if source == "prediction":
            pred = project.prediction(image_id) if project.active_round else None
            if pred is None:
                skipped.append(Skipped(name, None, "no prediction yet (Predict it first)"))
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
            path = Path(f"{stem}{EXPORT_SUFFIXES[fmt]}")
            try:
                written.append(_write_format(fmt, path, labels, project, image_id))
            except (ValueError, OSError) as exc:
                logger.warning("export of %s as %s failed: %s", name, fmt, exc)
                skipped.append(Skipped(name, fmt, str(exc)))
    if "coco" in formats and stacks:
        stem = names[0][:-4] if len(names) == 1 else "all_images"
        written.append(export.write_coco(dest / f"{stem}_{source}_coco.json", stacks,
                                         file_names=names))
    if not written:
        raise NothingExported(skipped)
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
    from cellsparse_app.storage.model_zip import zip_model

    rec = project.round()
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"cellsparse_{rec.family}_round{rec.index}.zip"
    path.write_bytes(zip_model(project.model_dir()))
    return path


def _brief(metrics: dict) -> dict:
    """The scalars of a match_labels result (what a round keeps)."""
    keys = ("thresholds", "ap", "precision", "recall", "tp", "fp", "fn", "n_true", "n_pred")
    return {k: metrics[k] for k in keys if k in metrics}
