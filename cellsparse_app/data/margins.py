"""Background next to cells: the automatic margin around accepted cells, and the check that an
annotation shows the model where cells end.

A network trained on a few clicked cells plus Background boxes in an empty corner never sees
Background right next to a cell. It cannot learn where cells end, so it predicts them too large
(Sugawara 2023: sparse training needs Background annotated near the cells). Two remedies:

* :func:`background_ring`: a ring ``width`` px wide just outside an accepted cell. It covers only
  unlabelled pixels and leaves out the other cells that SAM's automatic candidates or the model's
  prediction see there. :class:`~cellsparse_app.data.annotations.LabelEditor` marks it Background
  together with the cell, as one undo step.
* :func:`annotation_warnings`: guidance before training when Background is missing, or when it
  lies nowhere near the annotated cells (rule: :func:`cells_near_background`).

Why :data:`DEFAULT_MARGIN_PX` is 4 px: in the development data the median object radius is 8 px
(DSB histology nuclei), 12 px (DSB fluorescence nuclei), 23 px (the bundled example) and 34 px
(Usiigaci phase-contrast cells). The median gap to the nearest neighbour is 5 to 8.5 px, and
a quarter of the objects touch one. Where a neighbour touches, a ring falls partly on it (still
unannotated), whatever its width. Rings were drawn around 8 random objects per image (the first
30 images of each set), using the full ground truth. The share of ring pixels that land on
another object was, for DSB fluorescence / DSB histology / Usiigaci / example:

* 1 px: 2.6 / 5.6 / 0.9 / 3.2 %
* 4 px: 3.2 / 6.9 / 1.4 / 4.0 %
* 8 px: 4.8 / 8.8 / 3.0 / 6.1 %

So a 4 px ring gives each cell about four times the Background next to it that a 1 px ring
gives, at little more wrong labelling. Beyond that the error grows faster.

The effect on a first model, tested on the bundled example: 8 nuclei (ground-truth masks) plus
a 12x12 Background box in a corner, Cellpose-style, 300 steps on the CPU, seeds 0 and 1. With
no margin, the median predicted nucleus was 1.52 / 1.61x its true area, with a matched IoU at
0.5 of 0.74 / 0.70 (AP50 0.70 / 0.74). With the 4 px margin, it was 1.06 / 1.09x, with an IoU
of 0.96 / 0.96 (AP50 0.72 / 0.78).
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

from cellsparse_app.data.labels import BACKGROUND, UNLABELLED, instance_ids

logger = logging.getLogger(__name__)

#: Default width (px) of the Background ring added around each accepted cell (0 turns it off).
DEFAULT_MARGIN_PX: int = 4
#: Largest ring width accepted.
MAX_MARGIN_PX: int = 32
#: An object of another instance image (candidates, prediction) is the accepted cell itself, and
#: not a neighbour, when at least this share of the cell lies in it or of it lies in the cell.
SAME_CELL_FRACTION: float = 0.5
#: A cell "sees" Background when a Background pixel lies within this many px of it.
NEAR_PX: int = 3
#: Warn before training when fewer than this share of the annotated cells see Background.
MIN_CELLS_NEAR_BACKGROUND: float = 0.5

NO_BACKGROUND = ("No Background marked: the model cannot learn what is not a cell. Mark some "
                 "Background (box or brush) for a much better model.")


def check_margin(width: object) -> int:
    """``width`` as a ring width in px.

    Raises:
        ValueError: unless it is a whole number from 0 to :data:`MAX_MARGIN_PX`.
    """
    try:
        value = int(width)  # type: ignore[call-overload]
        whole = float(width) == value  # type: ignore[arg-type]
    except (TypeError, ValueError):
        whole = False
    if not whole or not 0 <= value <= MAX_MARGIN_PX:
        raise ValueError(f"background margin must be a whole number of pixels from 0 (off) to "
                         f"{MAX_MARGIN_PX}, got {width!r}")
    return value


def background_ring(
    mask: np.ndarray,
    width: int,
    labels: np.ndarray,
    others: Sequence[np.ndarray] = (),
    *,
    same_cell: float = SAME_CELL_FRACTION,
) -> np.ndarray:
    """Pixels that become Background around an accepted cell.

    These are the pixels at a Euclidean distance of 1 to ``width`` px outside ``mask`` that are
    unlabelled in ``labels``. Pixels of annotated cells and existing Background are left alone.
    So are the objects of ``others`` that are other cells. An object is the accepted cell itself
    when at least ``same_cell`` of the cell lies in it (such as a predicted object that is too
    large) or at least ``same_cell`` of it lies in the cell.

    Args:
        mask: boolean ``(H, W)`` mask of the accepted cell.
        width: ring width in px; 0 gives an empty ring.
        labels: the annotation (-1/0/1..N) the ring goes into.
        others: instance images (0 = nothing, ``1..M`` objects), e.g. SAM's automatic candidates
            and the model's prediction.
        same_cell: overlap share that makes an object of ``others`` the accepted cell itself.

    Returns:
        Boolean ``(H, W)`` mask of the ring.

    Raises:
        ValueError: for shapes that differ from ``mask``'s or a bad ``width``.
    """
    mask = np.asarray(mask).astype(bool, copy=False)
    width = check_margin(width)
    labels = np.asarray(labels)
    if mask.ndim != 2 or labels.shape != mask.shape:
        raise ValueError(f"cell mask {mask.shape} and labels {labels.shape} must be the same 2-D "
                         "shape")
    ring = np.zeros(mask.shape, dtype=bool)
    if width == 0 or not mask.any():
        return ring
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    box = _padded((slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)),
                  width)
    ring[box] = _ring_in_box(mask[box], box, width, labels, others, same_cell)
    return ring


def object_rings(
    instances: np.ndarray,
    ids: Sequence[int],
    width: int,
    labels: np.ndarray,
    others: Sequence[np.ndarray] = (),
    *,
    same_cell: float = SAME_CELL_FRACTION,
) -> np.ndarray:
    """The union of :func:`background_ring` around the objects ``ids`` of ``instances``.

    The other objects of ``instances`` count as other cells. Each ring is computed on its
    object's bounding box, so accepting hundreds of predicted objects stays fast.

    Returns:
        Boolean ``(H, W)`` mask of all the rings.
    """
    instances, labels = np.asarray(instances), np.asarray(labels)
    width = check_margin(width)
    if instances.ndim != 2 or labels.shape != instances.shape:
        raise ValueError(f"objects {instances.shape} and labels {labels.shape} must be the same "
                         "2-D shape")
    rings = np.zeros(instances.shape, dtype=bool)
    ids = [int(i) for i in ids if int(i) > 0]
    if width == 0 or not ids:
        return rings
    boxes = ndi.find_objects(instances.astype(np.int64, copy=False), max_label=max(ids))
    for obj in ids:
        if boxes[obj - 1] is None:
            continue
        box = _padded(boxes[obj - 1], width)
        rings[box] |= _ring_in_box(instances[box] == obj, box, width, labels,
                                   (instances, *others), same_cell)
    return rings


def _padded(box: tuple[slice, slice], width: int) -> tuple[slice, slice]:
    # Numpy clips the stops at the image's edge; the starts are clipped here.
    return tuple(slice(max(s.start - width, 0), s.stop + width) for s in box)  # type: ignore


def _ring_in_box(cell: np.ndarray, box: tuple[slice, slice], width: int, labels: np.ndarray,
                 others: Sequence[np.ndarray], same_cell: float) -> np.ndarray:
    """The ring around ``cell`` (the crop ``box`` of the cell's mask, which holds the whole cell
    plus ``width`` px around it where the image allows)."""
    distance = ndi.distance_transform_edt(~cell)
    near = (distance > 0) & (distance <= width) & (labels[box] == UNLABELLED)
    for objects in others:
        objects = np.asarray(objects)
        if objects.shape != labels.shape:
            raise ValueError(f"object image has shape {objects.shape}, expected {labels.shape}")
        near &= ~_other_cells(objects, cell, box, same_cell)
    return near


def _other_cells(objects: np.ndarray, cell: np.ndarray, box: tuple[slice, slice],
                 same_cell: float) -> np.ndarray:
    """Pixels of ``box`` that belong to objects other than ``cell`` (the cell's mask in ``box``)."""
    sub = objects[box]
    inside, overlap = np.unique(sub[cell & (sub > 0)], return_counts=True)
    cell_area = int(np.count_nonzero(cell))
    same = []
    for obj, n in zip(inside.tolist(), overlap.tolist()):
        if n >= same_cell * cell_area:
            same.append(obj)
            continue
        in_box = int(np.count_nonzero(sub == obj))  # the full area only when it can matter
        if n >= same_cell * in_box and n >= same_cell * int(np.count_nonzero(objects == obj)):
            same.append(obj)
    return (sub > 0) & ~np.isin(sub, same)


def cells_near_background(labels: np.ndarray, near_px: int = NEAR_PX) -> tuple[int, int]:
    """``(cells, cells_near)``: the annotated cells, and how many of them have a Background pixel
    within ``near_px`` px (Euclidean) of one of their pixels. A Background pixel touching the
    cell is 1 px away."""
    labels = np.asarray(labels)
    ids = instance_ids(labels)
    if ids.size == 0:
        return 0, 0
    background = labels == BACKGROUND
    if not background.any():
        return int(ids.size), 0
    near = (ndi.distance_transform_edt(~background) <= near_px) & (labels > 0)
    return int(ids.size), int(np.unique(labels[near]).size)


def annotation_warnings(
    labels_list: Sequence[np.ndarray],
    *,
    near_px: int = NEAR_PX,
    min_fraction: float = MIN_CELLS_NEAR_BACKGROUND,
) -> list[str]:
    """What to fix in a training set's annotations before training, as messages for the user.

    The rule is as follows. Over all images, if there is no Background, say so. Otherwise, if
    fewer than ``min_fraction`` of the annotated cells have Background within ``near_px`` px
    (:func:`cells_near_background`), say that Background is too far from the cells. Nothing is
    said when no cell is annotated: training refuses that case anyway.

    Args:
        labels_list: annotations (-1/0/1..N), one per image.
    """
    cells = near = background = 0
    for labels in labels_list:
        n, k = cells_near_background(labels, near_px)
        cells, near = cells + n, near + k
        background += int(np.count_nonzero(np.asarray(labels) == BACKGROUND))
    if cells == 0:
        return []
    if background == 0:
        return [NO_BACKGROUND]
    if near < min_fraction * cells:
        return [f"Background is far from your cells: only {near} of {cells} annotated cells have "
                f"Background within {near_px} px. The model must see where cells end, or it "
                "predicts them too large. Accept cells with the Background margin on (Annotate "
                "tab), or mark Background (box or brush) right up to the cells' edges."]
    return []
