"""Handlers of the Predict & compare and Export tabs, and project save/load."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.utils import get_upload_folder

from cellsparse_app.session.results import NothingExported
from cellsparse_app.session.sam_bridge import SELECT
from cellsparse_app.session.workspace import Workspace
from cellsparse_app.ui import formatting as fmt
from cellsparse_app.ui.errors import friendly, require
from cellsparse_app.ui.fields import optional_float, optional_int
from cellsparse_app.ui.handlers_images import ANNOTATE_TAB, image_outputs
from cellsparse_app.ui.handlers_train import rounds_outputs

logger = logging.getLogger(__name__)

PREDICTION, ERRORS, CHANGES = "prediction", "errors", "changes"
LEGENDS = {PREDICTION: "", ERRORS: fmt.ERRORS_LEGEND, CHANGES: fmt.CHANGES_LEGEND}


def _slider(comparison: Any, right: str) -> tuple:
    """(slider value, legend, note) for the chosen right-hand picture."""
    picture = {PREDICTION: comparison.prediction, ERRORS: comparison.errors,
               CHANGES: comparison.changes}[right]
    note = ""
    if picture is None:
        note = ("No annotations or ground truth on this image to score against."
                if right == ERRORS else "No earlier round has predicted this image yet.")
        picture = comparison.prediction
    return (comparison.input, picture), LEGENDS[right] if not note else "", note


def predict_config(prob_threshold: Any = None, min_size: Any = None,
                   flow_threshold: Any = None, diameter: Any = None) -> Any:
    """The ``PredictConfig`` of the Predict tab's fields. Empty fields keep the defaults, so an
    untouched tab predicts exactly as ``cellsparse predict --model`` does: the model's own
    calibrated thresholds and the same minimum size."""
    from cellsparse_app.predict import PredictConfig

    cfg = PredictConfig()
    prob = optional_float(prob_threshold, "Probability threshold", low=0, high=1,
                          low_inclusive=False)
    if prob is not None:
        if prob >= 1:
            raise ValueError(f"Probability threshold must be below 1, got {prob:g}")
        cfg = cfg.replace(prob_threshold=prob)
    size = optional_int(min_size, "Min object size (px)", low=0)
    if size is not None:
        cfg = cfg.replace(min_size=size)
    flow = optional_float(flow_threshold, "Flow error threshold", low=0)
    if flow is not None:
        cfg = cfg.replace(flow_threshold=flow)
    size = optional_float(diameter, "Object diameter (px)", low=0, low_inclusive=False)
    if size is not None:
        cfg = cfg.replace(diameter=size)
    return cfg


@friendly
def predict(
    ws: Workspace | None, scope: str, prob_threshold: Any, min_size: Any,
    right: str, flow_threshold: Any = None, diameter: Any = None,
    progress: gr.Progress = gr.Progress(),
) -> tuple:
    """Predict with the active round. Outputs: slider, results text, legend, comparison text.

    ``flow_threshold`` is the Cellpose-style family's mask quality check (ignored by the others);
    empty uses the model's own, calibrated in training on the annotated objects. A higher value
    (or 0, no check) keeps more masks; on irregular cells the check removes fragments.
    ``diameter`` (px): the cells' size in images of another magnification than the training
    ones (empty: the model's own scale).
    """
    ws = require(ws)
    cfg = predict_config(prob_threshold, min_size, flow_threshold, diameter)
    predictions, comparison = ws.rounds.predict(scope, cfg,
                                                progress=lambda f, t: progress(f, desc=t))
    value, legend, note = _slider(comparison, right)
    text = fmt.prediction_markdown(predictions)
    summary = fmt.comparison_markdown(comparison) + (f"  \n*{note}*" if note else "")
    return value, text, legend, summary


@friendly
def show_comparison(ws: Workspace | None, right: str) -> tuple:
    """Switch what the slider's right side shows. Outputs: slider, legend, comparison text."""
    comparison = require(ws).rounds.compare()
    value, legend, note = _slider(comparison, right)
    return value, legend, fmt.comparison_markdown(comparison) + (f"  \n*{note}*" if note else "")


@friendly
def correct(ws: Workspace | None) -> tuple:
    """Go to the Annotate tab with prediction outlines and Select mode, to accept or fix.
    Outputs: tabs, click mode, show-prediction checkbox + canvas outputs."""
    from cellsparse_app.ui.handlers_images import canvas_outputs

    ws = require(ws)
    view = ws.canvas.set_show_prediction(True)
    return (gr.update(selected=ANNOTATE_TAB), SELECT, True, *canvas_outputs(view))


def _export_dir() -> Path:
    # Straight into Gradio's cache (random name): served from there whatever folder the
    # sessions live in, and cleaned up with the cache (``delete_cache`` in layout.py).
    return Path(get_upload_folder()) / f"cs-export-{uuid.uuid4().hex}"


@friendly
def export(ws: Workspace | None, source: str, scope: str, formats: list[str]) -> list[str]:
    """Write the chosen formats; returns the files for download."""
    ws = require(ws)
    try:
        result = ws.rounds.export(source, scope, list(formats or []), _export_dir())
    except NothingExported as exc:  # say why in the formats' own names
        raise ValueError(f"nothing exported: {fmt.skipped_text(exc.skipped)}") from exc
    gr.Info(f"Exported {len(result.files)} file(s)")
    if result.skipped:
        gr.Warning(f"Skipped: {fmt.skipped_text(result.skipped)}")
    return [str(p) for p in result.files]


@friendly
def export_model(ws: Workspace | None) -> str:
    ws = require(ws)
    return str(ws.rounds.export_model(_export_dir()))


@friendly
def save_project(ws: Workspace | None) -> str:
    ws = require(ws)
    dest = _export_dir()
    dest.mkdir(parents=True, exist_ok=True)
    return str(ws.save_project(dest / "cellsparse_project.zip"))


@friendly
def load_project(ws: Workspace | None, file: Any) -> tuple:
    """Open a saved project zip. Outputs: image outputs + rounds outputs."""
    ws = require(ws)
    if file is None:
        raise ValueError("choose a project .zip saved by this app")
    current = ws.load_project(Path(file if isinstance(file, str) else file.name))
    view = ws.canvas.view("Project loaded") if current else None
    return (*image_outputs(ws, view, go_annotate=current is not None), *rounds_outputs(ws))
