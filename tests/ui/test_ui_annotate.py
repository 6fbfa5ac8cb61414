"""Step 2 (annotate): SAM clicks and boxes, accept Foreground, Background box/brush, select,
delete, undo, on the bundled nuclei example with the offline SAM fallback."""

from __future__ import annotations

import gradio as gr
import numpy as np
import pytest

from cellsparse_app.session import overlays
from cellsparse_app.session.sam_bridge import BACKGROUND_BOX, BOX, NEGATIVE, POSITIVE, SELECT
from cellsparse_app.ui import handlers_annotate as ann

CANVAS, STATUS, SUMMARY, CELLS = range(4)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _click(ws, mode, rc, click_at):
    r, c = rc
    return ann.click(ws, mode, click_at(c, r))  # Gradio sends (x, y)


def test_click_previews_then_accept_adds_the_nucleus(example_ws, example_truth, inner_point,
                                                     click_at, pixels):
    ws = example_ws
    hits = 0
    objects = [7, 8, 19]
    for k, obj in enumerate(objects, start=1):
        out = _click(ws, POSITIVE, inner_point(example_truth, obj), click_at)
        assert "mask:" in out[STATUS]
        preview = ws.canvas.prompts.preview
        canvas = pixels(out[CANVAS])
        yellowish = (canvas[..., 0] > 150) & (canvas[..., 1] > 150) & (canvas[..., 2] < 120)
        assert yellowish[preview].mean() > 0.5  # the preview is drawn where the mask is
        out = ann.accept_foreground(ws)
        assert out[SUMMARY].startswith(f"**{k}** Foreground cell")
        assert len(out[CELLS]) == k
        hits += _iou(ws.project.labels(ws.current) == k, example_truth == obj) >= 0.6
    assert hits >= 2  # the fallback segments most clicked nuclei well


def test_negative_point_and_box_prompts(example_ws, example_truth, inner_point, click_at):
    ws = example_ws
    r, c = inner_point(example_truth, 8)
    _click(ws, POSITIVE, (r, c), click_at)
    first = ws.canvas.prompts.preview.copy()
    _click(ws, NEGATIVE, (r, c), click_at)  # "not this" at the same spot shrinks the mask
    assert ws.canvas.prompts.labels == [1, 0]
    assert ws.canvas.prompts.preview.sum() < first.sum() or not ws.canvas.prompts.preview[r, c]
    ann.clear_prompts(ws)
    rows, cols = np.nonzero(example_truth == 8)
    out = _click(ws, BOX, (rows.min() - 3, cols.min() - 3), click_at)
    assert "opposite corner" in out[STATUS] and ws.canvas.prompts.preview is None
    _click(ws, BOX, (rows.max() + 3, cols.max() + 3), click_at)
    box = overlays.box_mask(example_truth.shape, ws.canvas.prompts.box)
    assert ws.canvas.prompts.preview.any() and not (ws.canvas.prompts.preview & ~box).any()
    assert _iou(ws.canvas.prompts.preview, example_truth == 8) >= 0.5


def test_background_box_select_delete_undo(example_ws, example_truth, inner_point, click_at,
                                           pixels):
    ws = example_ws
    ws.tools.set_margin(0)  # only the box marks Background here (test_ui_margin.py: the ring)
    _click(ws, POSITIVE, inner_point(example_truth, 8), click_at)
    ann.accept_foreground(ws)
    _click(ws, BACKGROUND_BOX, (0, 0), click_at)
    out = _click(ws, BACKGROUND_BOX, (99, 199), click_at)
    labels = ws.project.labels(ws.current)
    assert (labels[:100, :200] >= 0).all()  # all annotated inside the box
    assert int((labels == 0).sum()) == int((labels[:100, :200] == 0).sum()) > 0
    assert "%** Background" in out[SUMMARY]
    blue = pixels(out[CANVAS])[labels == 0]
    assert (blue[:, 2].astype(int) > blue[:, 0].astype(int) + 30).all()
    # Select the cell on the canvas, delete it, undo.
    rr, cc = np.argwhere(labels == 1)[0]
    out = _click(ws, SELECT, (rr, cc), click_at)
    assert "Selected cell 1" in out[STATUS]
    out = ann.delete_selected(ws)
    assert out[SUMMARY].startswith("**0** Foreground cells")
    out = ann.undo(ws)
    assert out[SUMMARY].startswith("**1** Foreground cell")
    # The cells table selects too.
    out = ann.select_cell_row(ws, gr.SelectData(None, {"index": [0, 0], "value": 1,
                                                       "row_value": [1, 100, 5, 5]}))
    assert ws.canvas.selected == ("cell", 1)


def test_brush_background_and_erase(example_ws):
    ws = example_ws
    layer = np.zeros((360, 360, 4), np.uint8)
    layer[300:340, 10:60, 3] = 255  # painted strokes are opaque pixels of the layer
    out = ann.paint_background(ws, {"background": None, "layers": [layer], "composite": None})
    assert int((ws.project.labels(ws.current) == 0).sum()) == 40 * 50
    assert out[-1]["layers"] == [] and out[-1]["background"].shape == (360, 360, 3)
    ann.paint_erase(ws, {"background": None, "layers": [layer], "composite": None})
    assert (ws.project.labels(ws.current) == -1).all()
    with pytest.raises(gr.Error, match="nothing painted"):
        ann.paint_background(ws, {"background": None, "layers": [], "composite": None})


def test_auto_masks_candidates_can_be_picked(example_ws, example_truth):
    ws = example_ws
    out = ann.auto_masks(ws)
    assert "candidate masks" in out[STATUS]
    n = len(np.unique(ws.canvas.candidates)) - 1
    assert n >= 5  # finds many of the 23 nuclei
    out = ann.accept_all_candidates(ws)
    assert out[SUMMARY].startswith(f"**{n}** Foreground cells")
    assert ws.canvas.candidates is None


def test_mistakes_are_explained_not_crashing(example_ws):
    with pytest.raises(gr.Error, match="nothing to mark as Foreground"):
        ann.accept_foreground(example_ws)
    with pytest.raises(gr.Error, match="select an annotated cell first"):
        ann.delete_selected(example_ws)
    with pytest.raises(gr.Error, match="no prediction objects"):
        ann.accept_all_predicted(example_ws)


def test_click_without_image(ws, click_at):
    with pytest.raises(gr.Error, match="no image yet"):
        ann.click(ws, POSITIVE, click_at(3, 3))
