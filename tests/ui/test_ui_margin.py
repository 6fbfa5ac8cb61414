"""Annotations that teach the model where cells end: the Background margin ring around accepted
cells, the guidance before training, and the second-press check for implausible masks, through
the Workspace (no browser) on the bundled nuclei example."""

from __future__ import annotations

import gradio as gr
import numpy as np
import pytest
from scipy import ndimage as ndi

from cellsparse_app.data.margins import DEFAULT_MARGIN_PX, annotation_warnings
from cellsparse_app.session import rounds
from cellsparse_app.session.sam_bridge import POSITIVE
from cellsparse_app.ui import handlers_annotate as ann

CANVAS, STATUS, SUMMARY, CELLS = range(4)


def _ring(mask: np.ndarray, width: int) -> np.ndarray:
    d = ndi.distance_transform_edt(~mask)
    return (d > 0) & (d <= width)


def _touching_pair(truth: np.ndarray) -> tuple[int, int]:
    """Two nuclei less than 4 px apart (a ring around the first reaches the second)."""
    for a in np.unique(truth[truth > 0]):
        reach = _ring(truth == a, DEFAULT_MARGIN_PX) & (truth > 0) & (truth != a)
        if reach.any():
            return int(a), int(np.bincount(truth[reach]).argmax())
    raise AssertionError("the example has no close neighbours")


def test_accepted_cell_gets_a_background_ring_removed_by_one_undo(example_ws, example_truth,
                                                                  pixels):
    ws = example_ws
    assert ws.tools.margin == DEFAULT_MARGIN_PX == 4
    cell = example_truth == 8
    ws.canvas.prompts.preview = cell
    out = ann.accept_foreground(ws)
    assert "Added cell 1 with a 4 px Background margin" in out[STATUS]
    labels = ws.project.labels(ws.current)
    np.testing.assert_array_equal(labels == 1, cell)
    np.testing.assert_array_equal(labels == 0, _ring(cell, 4))
    blue = pixels(out[CANVAS])[labels == 0].astype(int)  # the ring is drawn blue
    assert (blue[:, 2] > blue[:, 0] + 30).all()
    out = ann.undo(ws)
    assert (ws.project.labels(ws.current) == -1).all()  # cell and ring in one step
    assert out[SUMMARY].startswith("**0** Foreground cells")


def test_margin_zero_is_off_and_bad_values_are_explained(example_ws, example_truth):
    ws = example_ws
    assert "off" in ann.set_margin(ws, 0) and ws.tools.margin == 0
    ws.canvas.prompts.preview = example_truth == 8
    ws.tools.accept_foreground()
    labels = ws.project.labels(ws.current)
    assert (labels == 1).sum() == (example_truth == 8).sum() and not (labels == 0).any()
    assert "2 px" in ann.set_margin(ws, 2.0) and ws.tools.margin == 2
    with pytest.raises(gr.Error, match="whole number of pixels from 0 \\(off\\) to 32, got -1"):
        ann.set_margin(ws, -1)
    assert ws.tools.margin == 2


def test_ring_keeps_off_cells_that_candidates_or_the_prediction_see(example_ws, example_truth,
                                                                    monkeypatch):
    ws = example_ws
    a, b = _touching_pair(example_truth)
    cell, neighbour = example_truth == a, example_truth == b
    ws.canvas.prompts.preview = cell
    ws.tools.accept_foreground()  # no candidates, no prediction: the ring reaches the neighbour
    assert (ws.project.labels(ws.current)[neighbour] == 0).any()
    ws.tools.undo()
    ws.canvas.candidates = example_truth.copy()  # SAM's automatic masks see the neighbour
    ws.canvas.prompts.preview = cell
    ws.tools.accept_foreground()
    labels = ws.project.labels(ws.current)
    assert not (labels[neighbour] == 0).any()
    ring = labels == 0
    np.testing.assert_array_equal(ring, _ring(cell, 4) & (example_truth == 0))
    ws.tools.undo()
    # The same with the model's prediction instead of candidates.
    ws.canvas.candidates = None
    prediction = example_truth.astype(np.uint32)
    monkeypatch.setattr(ws.project, "prediction", lambda image_id, index=None: prediction)
    ws.canvas.prompts.preview = cell
    ws.tools.accept_foreground()
    assert not (ws.project.labels(ws.current)[neighbour] == 0).any()


def test_accept_all_rings_each_object_without_covering_another(example_ws, example_truth):
    ws = example_ws
    ws.canvas.candidates = np.where(np.isin(example_truth, [3, 7, 8, 12, 19]), example_truth, 0)
    out = ann.accept_all_candidates(ws)
    assert out[SUMMARY].startswith("**5** Foreground cells")
    labels = ws.project.labels(ws.current)
    accepted = labels > 0
    assert ws.canvas.candidates is None
    np.testing.assert_array_equal(accepted, np.isin(example_truth, [3, 7, 8, 12, 19]))
    rings = np.zeros_like(accepted)
    for obj in (3, 7, 8, 12, 19):
        rings |= _ring(example_truth == obj, 4)
    np.testing.assert_array_equal(labels == 0, rings & ~accepted)
    ws.tools.undo()
    assert (ws.project.labels(ws.current) == -1).all()


def test_huge_mask_is_flagged_and_needs_a_second_press(example_ws, example_truth, click_at,
                                                       monkeypatch):
    ws = example_ws
    for obj in (3, 7, 8):  # three cells of 2180-2701 px: median 2534 px
        ws.canvas.prompts.preview = example_truth == obj
        ws.tools.accept_foreground()
    clump = np.zeros(example_truth.shape, bool)
    clump[200:310, 200:310] = True  # 12100 px: 9% of the image but > 4x the median cell
    monkeypatch.setattr("cellsparse_app.session.annotating.sam_bridge.segment",
                        lambda *args: (clump, 0.9, "stub"))
    out = ann.click(ws, POSITIVE, click_at(250, 250))
    assert "Check it: this mask has 12100 px, 4.8x the median" in out[STATUS]
    assert "Accept asks twice" in out[STATUS]
    with pytest.raises(gr.Error, match="Not added: this mask has 12100 px.*median of your 3 "
                                       "annotated cells.*press Accept as Foreground again"):
        ann.accept_foreground(ws)
    assert ws.project.editor(ws.current).summary().n_objects == 3
    assert ws.canvas.prompts.preview is clump
    before = ws.project.labels(ws.current)
    out = ann.accept_foreground(ws)  # the user insists
    assert out[SUMMARY].startswith("**4** Foreground cells")
    assert int((ws.project.labels(ws.current) == 4).sum()) == int((clump & (before < 1)).sum())
    # A plausible click is not flagged.
    monkeypatch.setattr("cellsparse_app.session.annotating.sam_bridge.segment",
                        lambda *args: (example_truth == 19, 0.9, "stub"))
    out = ann.click(ws, POSITIVE, click_at(10, 10))
    assert "Check it" not in out[STATUS]
    assert "Added cell 5" in ann.accept_foreground(ws)[STATUS]


def test_training_warns_when_background_is_only_in_a_corner(example_ws, example_truth):
    ws = example_ws
    ws.tools.set_margin(0)
    for obj in (3, 7, 8, 12, 19, 20, 21, 22):
        ws.canvas.prompts.preview = example_truth == obj
        ws.tools.accept_foreground()
    editor = ws.project.editor(ws.current)
    corner = np.zeros(example_truth.shape, bool)
    corner[:12, :12] = True
    assert not (corner & (example_truth > 0)).any()
    editor.add_background(corner)
    run = rounds.train_round(ws.project, None)
    notice = next(run)  # the notices come before any training
    run.close()
    assert isinstance(notice, rounds.Notice)
    assert "only 0 of 8 annotated cells have Background within 3 px" in notice.text
    # The same cells accepted with the default margin: no warning.
    editor.clear()
    ws.tools.set_margin(DEFAULT_MARGIN_PX)
    for obj in (3, 7, 8, 12, 19, 20, 21, 22):
        ws.canvas.prompts.preview = example_truth == obj
        ws.tools.accept_foreground()
    assert annotation_warnings(ws.project.training_data()[2]) == []
