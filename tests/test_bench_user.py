"""The simulated-user benchmark (bench/user.py): the person's moves, and a tiny run end to end."""

from __future__ import annotations

import itertools
import json
from types import SimpleNamespace

import numpy as np
import pytest

from bench import user
from bench.conditions import split_samples


def _disks(shape=(64, 64), centres=((16, 16), (16, 46), (46, 30)), radius=7):
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    dense = np.zeros(shape, dtype=np.int32)
    for k, (r, c) in enumerate(centres, start=1):
        dense[(rr - r) ** 2 + (cc - c) ** 2 <= radius**2] = k
    image = np.where(dense > 0, 200, 20).astype(np.uint8)
    return image, dense


class StubAnnotator:
    """Answers points with ``point_mask`` and boxes with ``box_mask`` (None: nothing found)."""

    model_name = "stub"

    def __init__(self, point_mask=None, box_mask=None):
        self.point_mask, self.box_mask = point_mask, box_mask

    @staticmethod
    def _result(mask):
        return SimpleNamespace(masks=[] if mask is None else [mask],
                               scores=[] if mask is None else [0.9], model="stub")

    def segment_from_points(self, rgb, points_rc, labels, mode="best"):
        return self._result(self.point_mask)

    def segment_from_box(self, rgb, box, points_rc=None, labels=None, mode="best"):
        return self._result(self.box_mask)


def _workspace(tmp_path, annotator):
    from cellsparse_app.session.workspace import Workspace

    image, dense = _disks()
    ws = Workspace.create(tmp_path, sam=lambda: annotator)
    ws.select_image(ws.project.add_image(image, "disks"))
    return ws, dense


def test_click_point_is_the_deepest_interior_point():
    _, dense = _disks()
    assert user.deepest_point(dense == 1) == (16, 16)
    edge = np.zeros((10, 10), dtype=bool)
    edge[:3, :5] = True  # touching the image border: the border counts as the cell's edge
    assert user.deepest_point(edge) == (1, 2)


@pytest.mark.parametrize("answers, path", [
    ((True, None), "sam"),  # the click's mask is right
    ((False, True), "box"),  # wrong mask from the click, right one from the box
    ((False, False), "outline"),  # neither: drawn by hand
])
def test_each_tool_is_tried_in_turn(tmp_path, answers, path):
    _, dense = _disks()
    cell = dense == 2
    wrong = dense == 1
    point_mask = cell if answers[0] else wrong
    box_mask = None if answers[1] is None else (cell if answers[1] else None)
    ws, _ = _workspace(tmp_path, StubAnnotator(point_mask, box_mask))
    got, click, iou, presses = user.annotate_cell(ws, cell)
    assert got == path and cell[click] and presses == 1
    assert iou > 0.75  # the outline: points along the true edge, simplified by 1 px
    assert ws.project.totals()["n_objects"] == 1


def test_refused_accept_is_pressed_again_then_skipped(tmp_path, monkeypatch):
    _, dense = _disks()
    ws, _ = _workspace(tmp_path, StubAnnotator(dense == 3))
    original, calls = ws.tools.accept_foreground, []

    def refuse_once():
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("implausible mask: press Accept again")
        return original()

    monkeypatch.setattr(ws.tools, "accept_foreground", refuse_once)
    assert user.annotate_cell(ws, dense == 3)[::3] == ("sam", 2)
    def refuse():
        raise ValueError("no")

    monkeypatch.setattr(ws.tools, "accept_foreground", refuse)
    path, _, iou, presses = user.annotate_cell(ws, dense == 3)
    assert (path, iou, presses) == ("skipped", None, 2) and ws.canvas.prompts.preview is None


def test_largest_empty_rectangle_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(20):
        free = rng.random((7, 9)) > 0.25
        best = 0
        for r0, r1 in itertools.combinations_with_replacement(range(7), 2):
            for c0, c1 in itertools.combinations_with_replacement(range(9), 2):
                if free[r0:r1 + 1, c0:c1 + 1].all():
                    best = max(best, (r1 - r0 + 1) * (c1 - c0 + 1))
        r0, c0, r1, c1 = user.largest_empty_rectangle(free)
        assert free[r0:r1 + 1, c0:c1 + 1].all() and (r1 - r0 + 1) * (c1 - c0 + 1) == best
    assert user.largest_empty_rectangle(np.zeros((3, 3), bool)) is None


def test_background_boxes_keep_off_cells():
    from scipy import ndimage as ndi

    _, dense = _disks()
    boxes = user.background_boxes(dense)
    near = ndi.distance_transform_edt(dense == 0) <= user.BOX_CLEARANCE
    covered = np.zeros(dense.shape, dtype=int)
    for r0, c0, r1, c1 in boxes:
        assert not near[r0:r1 + 1, c0:c1 + 1].any() and (r1 - r0) * (c1 - c0) > 50
        covered[r0:r1 + 1, c0:c1 + 1] += 1
    assert len(boxes) == 2 and covered.max() == 1


def test_band_labels_are_the_cells_and_a_ring_of_true_background():
    _, dense = _disks()
    labels = user.band_labels(dense, [1, 3], width=6)
    assert labels.max() == 2 and (labels[dense == 1] == 1).all()
    assert (labels[dense == 2] == -1).all()
    assert labels[16, 16 + 7 + 6] == 0 and labels[16, 16 + 7 + 8] == -1  # 6 px ring
    assert labels[0, 63] == -1


def test_tiny_run_end_to_end(capsys):
    argv = ["--images", "1", "--test", "1", "--cells", "3", "--steps", "3", "--crop", "128",
            "--seeds", "0", "--out", "", "--json"]
    assert user.main(argv) == 0
    out = capsys.readouterr().out
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert len(rows) == 1
    row = rows[0]
    for key in ("ap50", "ap75", "band_ap50", "band_ap75", "cells", "train_s", "mask_iou_median",
                "prompt_engine", "paths", "steps", "band_steps"):
        assert key in row, key
    for key in ("ap50", "ap75", "band_ap50", "band_ap75"):
        assert 0.0 <= row[key] <= 1.0
    assert row["cells"] == row["cells_requested"] == 3 and row["steps"] == row["band_steps"] == 3
    assert sum(row["paths"].values()) == 3 and row["bg_boxes"] == 2
    assert row["prompt_engine"] in ("fallback", "vit_t") and 0.5 <= row["mask_iou_median"] <= 1
    train, _ = split_samples(user.load_samples(user.DEFAULT_DATA, crop=128), 1, 1)
    for index, cell_id, r, c in row["clicks"]:
        assert train[index].mask[r, c] == cell_id  # every click lies inside its intended cell
    assert "| simulated user |" in out and "user / band AP@0.5" in out
