"""Background margin rings around accepted cells, and the guidance on where Background lies
(cellsparse_app.data.margins), on synthetic disks with exact pixel counts."""

from __future__ import annotations

import numpy as np
import pytest

from cellsparse_app.data.annotations import LabelEditor
from cellsparse_app.data.labels import empty_labels
from cellsparse_app.data.margins import (
    DEFAULT_MARGIN_PX,
    NO_BACKGROUND,
    annotation_warnings,
    background_ring,
    cells_near_background,
    check_margin,
    object_rings,
)

SHAPE = (64, 64)


def disk(centre: tuple[int, int], radius: float, shape: tuple[int, int] = SHAPE) -> np.ndarray:
    rows, cols = np.indices(shape)
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


def distance_to(mask: np.ndarray) -> np.ndarray:
    """Brute-force Euclidean distance of every pixel to the nearest pixel of ``mask``."""
    pts = np.argwhere(mask)
    grid = np.indices(mask.shape).reshape(2, -1).T
    d2 = ((grid[:, None, :] - pts[None, :, :]) ** 2).sum(-1).min(1)
    return np.sqrt(d2).reshape(mask.shape)


@pytest.mark.parametrize("width", [1, 2, 4, 7])
def test_ring_is_every_unlabelled_pixel_within_width_outside_the_cell(width):
    cell = disk((32, 32), 8)
    ring = background_ring(cell, width, empty_labels(SHAPE))
    d = distance_to(cell)
    np.testing.assert_array_equal(ring, (d > 0) & (d <= width))
    expected = np.pi * ((8 + width) ** 2 - 8**2)  # annulus area
    assert abs(int(ring.sum()) - expected) < 0.12 * expected
    assert not (ring & cell).any()


def test_ring_is_clipped_at_the_image_border():
    cell = disk((2, 2), 5)
    ring = background_ring(cell, 4, empty_labels(SHAPE))
    d = distance_to(cell)
    np.testing.assert_array_equal(ring, (d > 0) & (d <= 4))


def test_ring_never_covers_annotated_cells_or_changes_background():
    labels = empty_labels(SHAPE)
    neighbour = disk((32, 50), 6)  # 3 px gap to the cell (radius 8 at col 32: edge at col 40)
    labels[neighbour] = 1
    labels[:, :5] = 0  # existing Background
    cell = disk((32, 32), 8)
    ring = background_ring(cell, 4, labels)
    assert not (ring & neighbour).any() and not ring[:, :5].any()
    d = distance_to(cell)
    np.testing.assert_array_equal(ring, (d > 0) & (d <= 4) & (labels == -1))


def test_ring_leaves_other_candidate_or_predicted_cells_alone_but_not_the_cell_itself():
    cell = disk((32, 24), 8)
    other = disk((32, 42), 7)  # another cell 2 px away that only SAM/the model sees
    objects = np.zeros(SHAPE, np.int32)
    objects[other] = 2
    bare = background_ring(cell, 4, empty_labels(SHAPE))
    assert int((bare & other).sum()) > 0  # without the objects the ring would eat into it
    ring = background_ring(cell, 4, empty_labels(SHAPE), [objects])
    assert not (ring & other).any()
    np.testing.assert_array_equal(ring, bare & ~other)
    # The model predicts this very cell 2.5x too large: that object is the cell, not a neighbour.
    too_large = np.zeros(SHAPE, np.uint32)
    too_large[disk((32, 24), 12.6)] = 7
    np.testing.assert_array_equal(background_ring(cell, 4, empty_labels(SHAPE), [too_large]), bare)
    # A small object mostly inside the cell (an over-segmented piece) is the cell too.
    piece = np.zeros(SHAPE, np.int32)
    piece[disk((32, 30), 4)] = 3
    np.testing.assert_array_equal(background_ring(cell, 4, empty_labels(SHAPE), [piece]), bare)


def test_margin_zero_and_bad_widths():
    cell = disk((32, 32), 8)
    assert not background_ring(cell, 0, empty_labels(SHAPE)).any()
    assert check_margin(4.0) == 4 and DEFAULT_MARGIN_PX == 4
    for bad in (-1, 2.5, "wide", None, 1000):
        with pytest.raises(ValueError, match="background margin must be a whole number"):
            background_ring(cell, bad, empty_labels(SHAPE))
    with pytest.raises(ValueError, match=r"cell mask \(64, 64\) and labels \(10, 10\)"):
        background_ring(cell, 4, empty_labels((10, 10)))


def test_editor_adds_cell_and_ring_in_one_undo_step():
    ed = LabelEditor(SHAPE)
    cell = disk((32, 32), 8)
    assert ed.add_foreground(cell, margin=4) == 1
    d = distance_to(cell)
    np.testing.assert_array_equal(ed.labels == 1, cell)
    np.testing.assert_array_equal(ed.labels == 0, (d > 0) & (d <= 4))
    assert ed.summary().background_px == int(((d > 0) & (d <= 4)).sum())
    assert ed.undo() and (ed.labels == -1).all()  # one undo: cell and ring gone
    assert not ed.can_undo
    ed.add_foreground(cell)  # margin 0 (the default of the editor): no ring
    assert ed.summary().background_px == 0


def test_a_later_cell_takes_back_the_ring_of_its_neighbour():
    ed = LabelEditor(SHAPE)
    a, b = disk((32, 20), 8), disk((32, 38), 8)  # 1 px apart: a's ring covers b's edge
    ed.add_foreground(a, margin=4)
    ed.add_foreground(b, margin=4)
    np.testing.assert_array_equal(ed.labels == 2, b)  # b keeps all its pixels
    np.testing.assert_array_equal(ed.labels == 1, a)
    assert ((ed.labels == 0) & (a | b)).sum() == 0
    ed.undo()
    np.testing.assert_array_equal(ed.labels == 1, a)
    assert int((ed.labels == 0).sum()) > 0 and not (ed.labels == 2).any()


def test_accept_objects_rings_every_object_without_covering_the_others():
    objects = np.zeros(SHAPE, np.int32)
    objects[disk((20, 20), 7)] = 1
    objects[disk((20, 36), 7)] = 2  # 2 px gap
    objects[disk((46, 46), 7)] = 3  # not accepted: stays a protected neighbour
    candidates = np.zeros(SHAPE, np.int32)
    candidates[disk((44, 20), 6)] = 5  # another source's object
    ed = LabelEditor(SHAPE)
    assert ed.accept_objects(objects, ids=[1, 2], margin=3, others=[candidates]) == [1, 2]
    lab = ed.labels
    np.testing.assert_array_equal(lab == 1, objects == 1)
    np.testing.assert_array_equal(lab == 2, objects == 2)
    ring = lab == 0
    near = (distance_to(objects == 1) <= 3) | (distance_to(objects == 2) <= 3)
    np.testing.assert_array_equal(ring, near & (objects == 0) & (candidates == 0))
    assert ed.undo() and (ed.labels == -1).all()


def test_object_rings_match_one_ring_per_object_on_its_bounding_box():
    objects = np.zeros(SHAPE, np.uint32)
    objects[disk((6, 6), 5)] = 4  # at the image's corner
    objects[disk((30, 30), 9)] = 9
    objects[disk((30, 50), 6)] = 2
    labels = empty_labels(SHAPE)
    labels[:, 60:] = 0
    candidate = np.zeros(SHAPE, np.int32)
    candidate[disk((46, 30), 4)] = 1  # 2 px below object 9
    others = [candidate]
    rings = object_rings(objects, [4, 9], 5, labels, others)
    expected = np.zeros(SHAPE, bool)
    for obj in (4, 9):
        expected |= background_ring(objects == obj, 5, labels, [objects, *others])
    np.testing.assert_array_equal(rings, expected)
    assert rings.any() and not (rings & (objects == 2)).any() and not rings[:, 60:].any()
    assert not (rings & (candidate > 0)).any()
    assert (background_ring(objects == 9, 5, labels) & (candidate > 0)).any()
    assert not object_rings(objects, [4, 9], 0, labels).any()
    assert not object_rings(objects, [], 4, labels).any()


def test_cells_near_background_rule():
    labels = empty_labels(SHAPE)
    labels[disk((16, 16), 6)] = 1
    labels[disk((16, 48), 6)] = 2
    labels[disk((48, 32), 6)] = 3
    assert cells_near_background(labels) == (3, 0)
    labels[16, 16 + 6 + 3] = 0  # 3 px from cell 1's edge pixel
    labels[16, 48 - 6 - 4] = 0  # 4 px from cell 2: too far
    assert cells_near_background(labels) == (3, 1)
    assert cells_near_background(labels, near_px=4) == (3, 2)
    assert cells_near_background(empty_labels(SHAPE)) == (0, 0)


def _eight_cells() -> tuple[np.ndarray, list[np.ndarray]]:
    labels = empty_labels((128, 128))
    cells = [disk((20 + 28 * (k // 4), 20 + 28 * (k % 4)), 7, (128, 128)) for k in range(8)]
    for k, cell in enumerate(cells, start=1):
        labels[cell] = k
    return labels, cells


def test_guidance_warns_for_corner_only_background_not_for_background_hugging_cells():
    labels, cells = _eight_cells()
    assert annotation_warnings([labels]) == [NO_BACKGROUND]
    corner = labels.copy()
    corner[100:, 100:] = 0  # the new user's box in an empty corner
    (warning,) = annotation_warnings([corner])
    assert "only 0 of 8 annotated cells have Background within 3 px" in warning
    assert "where cells end" in warning and "margin" in warning
    # The same cells accepted with the margin: every cell sees Background.
    ed = LabelEditor((128, 128))
    for cell in cells:
        ed.add_foreground(cell, margin=DEFAULT_MARGIN_PX)
    assert annotation_warnings([ed.labels]) == []
    # A box touching half the cells is enough (4 of 8); three of 8 is not.
    boxed = labels.copy()
    boxed[:30, :] = np.where(boxed[:30, :] == -1, 0, boxed[:30, :])  # hugs the top row of 4
    assert annotation_warnings([boxed]) == []
    boxed[:30, 90:] = np.where(boxed[:30, 90:] == 0, -1, boxed[:30, 90:])  # 3 of 8 now
    assert "only 3 of 8" in annotation_warnings([boxed])[0]
    # Counted over all images together; nothing to say without cells.
    assert annotation_warnings([boxed, corner]) == annotation_warnings([corner, boxed])
    assert annotation_warnings([empty_labels((8, 8))]) == []
