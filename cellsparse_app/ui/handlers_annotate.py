"""Handlers of the Annotate tab: SAM clicks and boxes, accept, Background, brush, undo, delete.

All return :func:`~cellsparse_app.ui.handlers_images.canvas_outputs` (canvas, status, counts,
cells table) unless stated otherwise.
"""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr

from cellsparse_app.ui.errors import friendly, require
from cellsparse_app.ui.handlers_images import canvas_outputs
from cellsparse_app.workspace import Workspace

logger = logging.getLogger(__name__)


@friendly
def click(ws: Workspace | None, mode: str, evt: gr.SelectData) -> tuple:
    """A click on the canvas; Gradio gives ``evt.index = (x, y)`` in image pixels."""
    ws = require(ws)
    x, y = (int(round(v)) for v in evt.index)
    return canvas_outputs(ws.click(row=y, col=x, mode=mode))


@friendly
def accept_foreground(ws: Workspace | None) -> tuple:
    return canvas_outputs(require(ws).accept_foreground())


@friendly
def accept_background(ws: Workspace | None) -> tuple:
    return canvas_outputs(require(ws).accept_background())


@friendly
def clear_prompts(ws: Workspace | None) -> tuple:
    return canvas_outputs(require(ws).clear_prompts())


@friendly
def undo(ws: Workspace | None) -> tuple:
    return canvas_outputs(require(ws).undo())


@friendly
def delete_selected(ws: Workspace | None) -> tuple:
    return canvas_outputs(require(ws).delete_selected())


@friendly
def auto_masks(ws: Workspace | None) -> tuple:
    return canvas_outputs(require(ws).auto_masks())


@friendly
def accept_all_candidates(ws: Workspace | None) -> tuple:
    return canvas_outputs(require(ws).accept_all("candidates"))


@friendly
def accept_all_predicted(ws: Workspace | None) -> tuple:
    return canvas_outputs(require(ws).accept_all("prediction"))


@friendly
def show_prediction(ws: Workspace | None, show: bool) -> tuple:
    return canvas_outputs(require(ws).set_show_prediction(bool(show)))


@friendly
def select_cell_row(ws: Workspace | None, evt: gr.SelectData) -> tuple:
    """A row of the cells table was clicked: select that cell on the canvas."""
    ws = require(ws)
    row = evt.row_value or []
    if not row:
        raise ValueError("click a row of the cells table")
    return canvas_outputs(ws.select_cell(int(row[0])))


def _layers(editor_value: dict[str, Any] | None) -> list:
    if not editor_value or not editor_value.get("layers"):
        raise ValueError("nothing painted: open the brush editor and paint first")
    return [layer for layer in editor_value["layers"] if layer is not None]


@friendly
def paint_background(ws: Workspace | None, editor_value: dict[str, Any] | None) -> tuple:
    """Painted strokes of the brush editor become Background (cells are kept)."""
    view = require(ws).paint(_layers(editor_value), "background")
    return (*canvas_outputs(view), _editor_value(view.image))


@friendly
def paint_erase(ws: Workspace | None, editor_value: dict[str, Any] | None) -> tuple:
    """Painted strokes become unlabelled again (Background and cell pixels)."""
    view = require(ws).paint(_layers(editor_value), "erase")
    return (*canvas_outputs(view), _editor_value(view.image))


@friendly
def load_brush_editor(ws: Workspace | None) -> dict[str, Any] | None:
    """Put the current annotation view under the brush (when the brush panel opens)."""
    ws = require(ws)
    return _editor_value(ws.view().image) if ws.current is not None else None


def _editor_value(image: Any) -> dict[str, Any]:
    # A fresh editor: the annotation view underneath, no strokes yet.
    return {"background": image, "layers": [], "composite": None}
