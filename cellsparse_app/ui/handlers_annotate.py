"""Handlers of the Annotate tab: SAM clicks and boxes, hand outlines, accept, Background, brush,
eraser, undo, delete, zoom and pan.

All return :func:`~cellsparse_app.ui.handlers_images.canvas_outputs` (canvas, status, counts,
cells table) unless stated otherwise.
"""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr

from cellsparse_app.session.sam_bridge import CENTRE
from cellsparse_app.session.workspace import Workspace
from cellsparse_app.ui.errors import friendly, require
from cellsparse_app.ui.handlers_images import canvas_outputs

logger = logging.getLogger(__name__)


#: Pan buttons: ``(rows, cols)`` direction, in steps of half the visible crop.
PAN_DIRECTIONS = {"left": (0, -1), "up": (-1, 0), "down": (1, 0), "right": (0, 1)}


@friendly
def click(ws: Workspace | None, mode: str, evt: gr.SelectData) -> tuple:
    """A click on the canvas; Gradio gives ``evt.index = (x, y)`` in canvas pixels, which the
    workspace maps to the image (the canvas shows a crop when zoomed).

    Returns:
        :func:`canvas_outputs` + the brush editor (refreshed when a Centre click moved the view).
    """
    ws = require(ws)
    x, y = (int(round(v)) for v in evt.index)
    row, col = ws.canvas.to_image(y, x)
    view = ws.tools.click(row=row, col=col, mode=mode)
    return (*canvas_outputs(view), _editor_value(view.image) if mode == CENTRE else gr.skip())


@friendly
def zoom(ws: Workspace | None, factor: int) -> tuple:
    """Zoom the canvas (and the brush editor) around the current centre."""
    view = require(ws).canvas.set_zoom(int(factor))
    return (*canvas_outputs(view), _editor_value(view.image))


def pan_handler(direction: str):
    """The handler of one pan button (``PAN_DIRECTIONS``): canvas outputs + brush editor."""
    d_rows, d_cols = PAN_DIRECTIONS[direction]

    @friendly
    def pan(ws: Workspace | None) -> tuple:
        ws = require(ws)
        step_rows, step_cols = ws.canvas.viewport.step
        view = ws.canvas.pan(d_rows * step_rows, d_cols * step_cols)
        return (*canvas_outputs(view), _editor_value(view.image))

    pan.__name__ = f"pan_{direction}"
    return pan


@friendly
def accept_foreground(ws: Workspace | None) -> tuple:
    return canvas_outputs(require(ws).tools.accept_foreground())


@friendly
def accept_background(ws: Workspace | None) -> tuple:
    return canvas_outputs(require(ws).tools.accept_background())


@friendly
def clear_prompts(ws: Workspace | None) -> tuple:
    return canvas_outputs(require(ws).tools.clear_prompts())


@friendly
def undo(ws: Workspace | None) -> tuple:
    return canvas_outputs(require(ws).tools.undo())


@friendly
def delete_selected(ws: Workspace | None) -> tuple:
    return canvas_outputs(require(ws).tools.delete_selected())


@friendly
def auto_masks(ws: Workspace | None) -> tuple:
    return canvas_outputs(require(ws).tools.auto_masks())


@friendly
def accept_all_candidates(ws: Workspace | None) -> tuple:
    return canvas_outputs(require(ws).tools.accept_all("candidates"))


@friendly
def accept_all_predicted(ws: Workspace | None) -> tuple:
    return canvas_outputs(require(ws).tools.accept_all("prediction"))


@friendly
def show_prediction(ws: Workspace | None, show: bool) -> tuple:
    return canvas_outputs(require(ws).canvas.set_show_prediction(bool(show)))


@friendly
def set_margin(ws: Workspace | None, px: float) -> str:
    """The Background-margin slider moved: ring width around cells accepted from now on
    (returns the status line)."""
    return require(ws).tools.set_margin(px)


@friendly
def select_cell_row(ws: Workspace | None, evt: gr.SelectData) -> tuple:
    """A row of the cells table was clicked: select that cell on the canvas."""
    ws = require(ws)
    row = evt.row_value or []
    if not row:
        raise ValueError("click a row of the cells table")
    return canvas_outputs(ws.tools.select_cell(int(row[0])))


def _layers(editor_value: dict[str, Any] | None) -> list:
    if not editor_value or not editor_value.get("layers"):
        raise ValueError("nothing painted: open the brush editor and paint first")
    return [layer for layer in editor_value["layers"] if layer is not None]


@friendly
def paint_background(ws: Workspace | None, editor_value: dict[str, Any] | None) -> tuple:
    """Painted strokes of the brush editor become Background (cells are kept)."""
    view = require(ws).tools.paint(_layers(editor_value), "background")
    return (*canvas_outputs(view), _editor_value(view.image))


@friendly
def paint_foreground(ws: Workspace | None, editor_value: dict[str, Any] | None) -> tuple:
    """The painted area (holes filled: a drawn outline counts as the cell) becomes one cell."""
    view = require(ws).tools.paint(_layers(editor_value), "foreground")
    return (*canvas_outputs(view), _editor_value(view.image))


@friendly
def paint_erase(ws: Workspace | None, editor_value: dict[str, Any] | None) -> tuple:
    """Painted strokes become unlabelled again (Background and cell pixels)."""
    view = require(ws).tools.paint(_layers(editor_value), "erase")
    return (*canvas_outputs(view), _editor_value(view.image))


@friendly
def load_brush_editor(ws: Workspace | None) -> dict[str, Any] | None:
    """Put the current annotation view under the brush (when the brush panel opens)."""
    ws = require(ws)
    return _editor_value(ws.canvas.view().image) if ws.current is not None else None


def _editor_value(image: Any) -> dict[str, Any]:
    # A fresh editor: the annotation view underneath, no strokes yet.
    return {"background": image, "layers": [], "composite": None}
