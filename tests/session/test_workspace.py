"""The workspace and its canvas and annotation tools, without a front end (no gradio): outline,
brush, accept, undo, erase, select and delete on a small synthetic image; image list; reload."""

from __future__ import annotations

import numpy as np
import pytest
from session_images import CENTRES, SHAPE, disk, synthetic_image

from cellsparse_app.session.canvas import CanvasView
from cellsparse_app.session.sam_bridge import BACKGROUND_BOX, ERASE, OUTLINE, SELECT
from cellsparse_app.session.workspace import Workspace


def _square(centre: tuple[int, int], half: int = 6) -> list[tuple[float, float]]:
    r, c = centre
    return [(r - half, c - half), (r - half, c + half), (r + half, c + half), (r + half, c - half)]


@pytest.fixture
def ws(tmp_path):
    ws = Workspace.create(tmp_path)
    ws.select_image(ws.project.add_image(synthetic_image(), "disks.png"))
    yield ws
    ws.close()


def test_outline_then_accept_adds_a_cell_with_a_background_ring(ws):
    view = ws.tools.outline(_square(CENTRES[0]))
    assert isinstance(view, CanvasView) and view.has_preview
    assert view.image.shape == (*SHAPE, 3) and view.image.dtype == np.uint8
    view = ws.tools.accept_foreground()
    labels = ws.project.labels(ws.current)
    assert labels.shape == SHAPE and labels.dtype == np.int32
    assert set(np.unique(labels)) == {-1, 0, 1}  # unlabelled, the margin's Background, the cell
    assert int((labels == 1).sum()) == 13 * 13 and f"{ws.tools.margin} px" in view.message
    assert view.summary.n_objects == 1 and view.can_undo and not view.has_preview
    assert [o["id"] for o in view.objects] == [1] and view.totals["n_objects"] == 1


def test_outline_clicks_brush_background_erase_and_undo(ws):
    ws.tools.set_margin(0)
    for point in _square(CENTRES[1])[:2]:
        view = ws.tools.click(row=int(point[0]), col=int(point[1]), mode=OUTLINE)
        assert "click at least 3" in view.message and not view.has_preview
    view = ws.tools.click(row=CENTRES[1][0] + 6, col=CENTRES[1][1] + 6, mode=OUTLINE)
    assert view.has_preview  # a triangle, three points
    ws.tools.accept_foreground()
    cell = ws.project.labels(ws.current) == 1
    assert cell.sum() > 50 and (ws.project.labels(ws.current) == 0).sum() == 0  # margin off

    ws.tools.paint(disk(CENTRES[2]), "foreground")  # the brush: one filled cell
    assert ws.project.editor(ws.current).summary().n_objects == 2
    strip = np.zeros(SHAPE, bool)
    strip[:, :6] = True
    view = ws.tools.paint(strip, "background")
    assert view.message == f"{int(strip.sum())} px marked Background"
    view = ws.tools.click(row=50, col=2, mode=ERASE)
    assert view.message.startswith("Erased") and (ws.project.labels(ws.current) == 0).sum() == 0
    assert ws.tools.undo().message == "Undone"
    assert (ws.project.labels(ws.current) == 0).sum() == strip.sum()
    ws.tools.click(row=90, col=90, mode=BACKGROUND_BOX)
    view = ws.tools.click(row=80, col=80, mode=BACKGROUND_BOX)
    assert view.message == "Marked 121 px as Background (cells inside are kept)"


def test_select_delete_and_refusals_name_the_problem(ws):
    ws.tools.outline(_square(CENTRES[0]))
    ws.tools.accept_foreground()
    view = ws.tools.click(row=CENTRES[0][0], col=CENTRES[0][1], mode=SELECT)
    assert view.selected == ("cell", 1) and ws.canvas.selected == ("cell", 1)
    assert ws.tools.delete_selected().message == "Deleted cell 1"
    assert ws.project.editor(ws.current).summary().n_objects == 0
    with pytest.raises(ValueError, match="select an annotated cell first"):
        ws.tools.delete_selected()
    with pytest.raises(ValueError, match="nothing to mark as Foreground"):
        ws.tools.accept_foreground()
    with pytest.raises(ValueError, match=r"click \(row=200, col=1\) is outside the 96x96"):
        ws.tools.click(row=200, col=1, mode=OUTLINE)
    with pytest.raises(ValueError, match="'wave'"):
        ws.tools.click(row=1, col=1, mode="wave")
    with pytest.raises(ValueError, match="'glitter'"):
        ws.tools.paint(disk(CENTRES[1]), "glitter")
    with pytest.raises(RuntimeError, match="no SAM engine"):
        ws.tools.prepare_sam()


def test_zoom_pan_and_the_image_list(ws):
    view = ws.canvas.set_zoom(2, (10, 10))
    assert view.image.shape == (48, 48, 3) and ws.canvas.viewport.origin == (0, 0)
    ws.canvas.pan(100, 100)
    assert ws.canvas.viewport.origin == (48, 48) and ws.canvas.to_image(0, 0) == (48, 48)
    first = ws.current
    second = ws.project.add_image(synthetic_image()[:64, :80], "small.png")
    view = ws.select_image(second)
    assert view.message == "Showing small" and view.image.shape == (32, 40, 3)  # zoom kept
    assert ws.remove_current() == first and ws.current == first
    with pytest.raises(ValueError, match="'nope'"):
        ws.select_image("nope")


def test_reopen_restores_current_image_and_margin(ws):
    second = ws.project.add_image(synthetic_image(), "again.png")
    ws.select_image(second)
    assert ws.tools.set_margin(2).startswith("Cells accepted from now on get a 2 px")
    again = Workspace.reopen(ws.directory)
    assert again.current == second and again.tools.margin == 2
    assert [r.name for r in again.project.images] == ["disks", "again"]


def test_without_an_image_actions_say_what_to_do(tmp_path):
    ws = Workspace(tmp_path / "empty")
    assert ws.current is None and ws.canvas.zoom == 1
    with pytest.raises(RuntimeError, match="upload an image"):
        ws.canvas.view()
    with pytest.raises(ValueError, match="no file given"):
        ws.add_images([])
