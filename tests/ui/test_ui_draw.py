"""Drawing when SAM cannot: hand outlines, a painted cell, the eraser click, and zoom/pan at full
resolution (canvas clicks and brush strokes land on the right image pixels), on the bundled
360x360 nuclei example."""

from __future__ import annotations

import gradio as gr
import numpy as np
import pytest

from cellsparse_app.session.sam_bridge import BACKGROUND_BOX, CENTRE, ERASE, OUTLINE, POSITIVE
from cellsparse_app.ui import handlers_annotate as ann

CANVAS, STATUS, SUMMARY, CELLS, EDITOR = range(5)
SHAPE = (360, 360)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _disk(centre, radius, shape=SHAPE):
    rr, cc = np.ogrid[: shape[0], : shape[1]]
    return (rr - centre[0]) ** 2 + (cc - centre[1]) ** 2 <= radius**2


def _circle(centre, radius, n=48):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return list(zip(centre[0] + radius * np.sin(t), centre[1] + radius * np.cos(t)))


def _click(ws, mode, rc, click_at):
    r, c = rc
    return ann.click(ws, mode, click_at(c, r))  # Gradio sends (x, y) on the canvas


def _layer(mask: np.ndarray) -> dict:
    layer = np.zeros((*mask.shape, 4), np.uint8)
    layer[mask, 3] = 255  # painted strokes are opaque pixels of the layer
    return {"background": None, "layers": [layer], "composite": None}


def test_outline_polygon_is_the_preview_and_accepting_adds_a_cell(example_ws):
    ws = example_ws
    disk = _disk((100, 120), 20)
    view = ws.tools.outline(_circle((100, 120), 20))
    assert view.has_preview and "Outline:" in view.message
    preview = ws.canvas.prompts.preview
    assert abs(int(preview.sum()) - int(disk.sum())) <= 0.05 * disk.sum()
    assert _iou(preview, disk) >= 0.95
    out = ann.accept_foreground(ws)
    assert out[SUMMARY].startswith("**1** Foreground cell")
    labels = ws.project.labels(ws.current)
    assert _iou(labels == 1, disk) >= 0.95 and ws.canvas.prompts.outline == []
    ann.undo(ws)  # Undo works on the accepted outline as on SAM masks
    assert (ws.project.labels(ws.current) == -1).all()


def test_outline_clicks_build_a_polygon_then_clear(example_ws, click_at, pixels):
    ws = example_ws
    for k, rc in enumerate([(10, 10), (10, 50)], start=1):
        out = _click(ws, OUTLINE, rc, click_at)
        assert f"{k} point(s)" in out[STATUS] and ws.canvas.prompts.preview is None
    canvas = pixels(out[CANVAS])
    assert (canvas[10, 30] == 255).all()  # the white polyline joins the two vertices
    out = _click(ws, OUTLINE, (50, 10), click_at)
    # The right triangle with legs of 40 px, border pixels included: 41 + 40 + ... + 1 pixels.
    assert int(ws.canvas.prompts.preview.sum()) == 41 * 42 // 2
    assert ws.canvas.prompts.outline == [(10.0, 10.0), (10.0, 50.0), (50.0, 10.0)]
    assert "861 px" in out[STATUS]
    ann.clear_prompts(ws)
    assert ws.canvas.prompts.outline == [] and ws.canvas.prompts.preview is None
    _click(ws, OUTLINE, (10, 10), click_at)
    _click(ws, POSITIVE, (100, 100), click_at)  # a SAM click replaces the unfinished outline
    assert ws.canvas.prompts.outline == [] and ws.canvas.prompts.points == [(100, 100)]
    with pytest.raises(ValueError, match="at least 3 points"):
        ws.tools.outline([(1, 1), (5, 5)])


def test_painted_outline_becomes_one_filled_cell(example_ws):
    ws = example_ws
    disk = _disk((200, 150), 18)
    ring = disk & ~_disk((200, 150), 15)
    ring[197:200, 160:175] = False  # a freehand outline that is not quite closed (3 px gap)
    out = ann.paint_foreground(ws, _layer(ring))
    assert out[SUMMARY].startswith("**1** Foreground cell") and "cell 1" in out[STATUS]
    cell = ws.project.labels(ws.current) == 1
    assert cell[200, 150] and _iou(cell, disk) >= 0.98  # the inside is filled
    assert out[EDITOR]["layers"] == [] and out[EDITOR]["background"].shape == (*SHAPE, 3)
    blobs = np.zeros(SHAPE, bool)
    blobs[20:40, 20:40] = True
    blobs[300:305, 300:305] = True  # a stray dab far away: only the largest part is the cell
    ann.paint_foreground(ws, _layer(blobs))
    labels = ws.project.labels(ws.current)
    assert int((labels == 2).sum()) == 400 and (labels[300:305, 300:305] == -1).all()


def test_erase_click_removes_a_cell_or_a_background_region(example_ws, click_at):
    ws = example_ws
    ws.tools.outline(_circle((100, 120), 20))
    ws.tools.accept_foreground()
    ws.tools.outline(_circle((250, 250), 15))
    ws.tools.accept_foreground()
    _click(ws, BACKGROUND_BOX, (300, 0), click_at)
    _click(ws, BACKGROUND_BOX, (359, 100), click_at)
    ws.tools.paint(_disk((10, 350), 5), "background")  # a second, separate Background region
    before = ws.project.labels(ws.current)
    out = _click(ws, ERASE, (100, 120), click_at)
    labels = ws.project.labels(ws.current)
    assert "Erased cell 1" in out[STATUS] and out[SUMMARY].startswith("**1** Foreground cell")
    assert (labels[before == 1] == -1).all() and (labels[before == 2] == 1).all()  # renumbered
    out = _click(ws, ERASE, (330, 50), click_at)
    labels = ws.project.labels(ws.current)
    kept = before == 0
    kept[300:, :101] = False  # only the clicked Background region is erased
    assert "Erased a Background region" in out[STATUS]
    assert ((labels == 0) == kept).all() and (labels[10, 350] == 0)
    out = _click(ws, ERASE, (150, 150), click_at)
    assert "Nothing to erase" in out[STATUS]
    ann.undo(ws)
    ann.undo(ws)
    assert (ws.project.labels(ws.current) == before).all()


def test_zoomed_view_is_a_full_resolution_crop(example_ws):
    ws = example_ws
    full = ws.canvas.view().image
    assert full.shape == (*SHAPE, 3)
    view = ws.canvas.set_zoom(2, (100, 300))
    vp = ws.canvas.viewport
    assert vp.crop_shape == (180, 180) and vp.origin == (10, 180)  # clamped at the right border
    assert view.image.shape == (180, 180, 3) and "Zoom 2×" in view.message
    assert (view.image == ws.canvas.display()[vp.window]).all()  # nothing annotated: plain pixels
    assert ws.canvas.set_zoom(8, (0, 0)).image.shape == (45, 45, 3)
    assert ws.canvas.viewport.origin == (0, 0)
    assert ws.canvas.set_zoom(1).image.shape == (*SHAPE, 3)
    with pytest.raises(ValueError, match="zoom must be one of"):
        ws.canvas.set_zoom(3)


def test_canvas_click_at_zoom_lands_on_the_image_pixel(example_ws, click_at):
    ws = example_ws
    ws.canvas.set_zoom(2, (100, 300))  # crop origin (10, 180)
    _click(ws, POSITIVE, (5, 7), click_at)
    assert ws.canvas.prompts.points == [(15, 187)]
    ann.clear_prompts(ws)
    ws.canvas.set_zoom(4, (200, 200))  # 90x90 crop at (155, 155)
    for rc in [(10, 10), (10, 50), (50, 10)]:
        _click(ws, OUTLINE, rc, click_at)
    assert ws.canvas.prompts.outline == [(165.0, 165.0), (165.0, 205.0), (205.0, 165.0)]
    preview = ws.canvas.prompts.preview
    assert int(preview.sum()) == 861 and preview[165:206, 165].all()
    with pytest.raises(gr.Error, match="outside the 90x90 view"):
        _click(ws, POSITIVE, (95, 3), click_at)
    # A Centre click moves the view there and puts the new crop under the brush.
    out = _click(ws, CENTRE, (80, 80), click_at)
    assert ws.canvas.viewport.centre == (235, 235)
    assert out[EDITOR]["background"].shape == (90, 90, 3)
    out = _click(ws, POSITIVE, (1, 1), click_at)
    assert out[EDITOR] == gr.skip()  # other clicks keep the brush strokes


def test_pan_moves_by_half_a_view_and_stops_at_the_borders(example_ws):
    ws = example_ws
    ws.canvas.set_zoom(4)  # 90x90 around the centre: origin (135, 135)
    assert ws.canvas.viewport.origin == (135, 135)
    out = ann.pan_handler("right")(ws)
    assert ws.canvas.viewport.origin == (135, 180)
    assert out[EDITOR]["background"].shape == (90, 90, 3)
    ann.pan_handler("up")(ws)
    assert ws.canvas.viewport.origin == (90, 180)
    ws.canvas.pan(-1000, 10**6)
    assert ws.canvas.viewport.origin == (0, 270)
    ws.canvas.pan(10**6, -10**6)
    assert ws.canvas.viewport.origin == (270, 0)
    out = ann.zoom(ws, 1)
    assert ws.canvas.viewport.origin == (0, 0) and out[EDITOR]["background"].shape == (*SHAPE, 3)


def test_painting_in_a_zoomed_view_lands_on_the_image(example_ws):
    ws = example_ws
    ws.canvas.set_zoom(4, (200, 200))  # 90x90 crop at (155, 155)
    strokes = np.zeros((90, 90), bool)
    strokes[10:20, 30:50] = True
    out = ann.paint_background(ws, _layer(strokes))
    labels = ws.project.labels(ws.current)
    expected = np.zeros(SHAPE, bool)
    expected[165:175, 185:205] = True
    assert ((labels == 0) == expected).all()
    assert out[EDITOR]["background"].shape == (90, 90, 3)
    cell = _disk((45, 45), 12, (90, 90))
    ann.paint_foreground(ws, _layer(cell))
    assert ((ws.project.labels(ws.current) == 1) == _disk((200, 200), 12)).all()
    with pytest.raises(gr.Error, match="brush layer 0 has shape"):  # painted before zooming
        ann.paint_erase(ws, _layer(np.ones(SHAPE, bool)))


def test_zoom_survives_switching_images(example_ws):
    ws = example_ws
    ws.canvas.set_zoom(2, (0, 0))
    image = np.zeros((100, 60), np.uint8)
    image[40:60, 20:40] = 200
    ws.project.add_image(image, "small.png")
    other = [r.id for r in ws.project.images if r.id != ws.current][0]
    view = ws.select_image(other)
    assert ws.canvas.viewport.zoom == 2 and view.image.shape == (50, 30, 3)
    assert ws.canvas.viewport.origin == (25, 15)  # centred on the new image
