"""Masks from what the user draws by hand, for when SAM cannot segment a cell.

Coordinates are ``(row, col)`` pixel centres, as everywhere in the core. A hand outline is a
polygon through clicked border points (:func:`polygon_mask`); a freehand brush outline or blob
becomes one filled cell (:func:`filled_cell`); an eraser click removes the annotated cell or the
connected Background region under it (:func:`erase_region`).
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

from cellsparse_app.data.labels import BACKGROUND

logger = logging.getLogger(__name__)

#: Gaps up to about this many pixels in a freehand outline are closed before filling.
CLOSE_GAPS_PX = 4


def polygon_mask(points_rc: Sequence[tuple[float, float]], shape: tuple[int, ...]) -> np.ndarray:
    """Boolean mask of the closed polygon through ``points_rc``: the pixels whose centre lies
    inside it or on its edges (clicked border pixels belong to the cell).

    Args:
        points_rc: at least three vertices ``(row, col)``; vertices outside the image are
            allowed (the mask is clipped to it).
        shape: ``(H, W, ...)`` of the image.

    Raises:
        ValueError: for fewer than three vertices or points that are not ``(row, col)`` pairs.
    """
    from skimage.draw import polygon

    pts = np.asarray(points_rc, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or not np.isfinite(pts).all():
        raise ValueError(f"outline points must be finite (row, col) pairs, got shape {pts.shape}")
    if len(pts) < 3:
        raise ValueError(f"an outline needs at least 3 points, got {len(pts)}")
    mask = np.zeros((int(shape[0]), int(shape[1])), dtype=bool)
    rr, cc = polygon(pts[:, 0], pts[:, 1], shape=mask.shape)
    mask[rr, cc] = True
    return mask


def polyline_mask(points_rc: Sequence[tuple[float, float]], shape: tuple[int, ...]) -> np.ndarray:
    """One-pixel line through ``points_rc`` in order (open; vertices rounded, clipped to
    ``shape``); a single point gives one pixel."""
    from skimage.draw import line

    mask = np.zeros((int(shape[0]), int(shape[1])), dtype=bool)
    pts = np.rint(np.asarray(points_rc, dtype=np.float64).reshape(-1, 2)).astype(np.int64)
    for (r0, c0), (r1, c1) in zip(pts, pts[1:] if len(pts) > 1 else pts):
        rr, cc = line(r0, c0, r1, c1)
        inside = (rr >= 0) & (rr < mask.shape[0]) & (cc >= 0) & (cc < mask.shape[1])
        mask[rr[inside], cc[inside]] = True
    return mask


def filled_cell(mask: np.ndarray) -> np.ndarray:
    """One cell from brush strokes: small gaps closed, holes filled, the largest part kept.

    An outline drawn freehand thus becomes the filled cell it encloses.

    Raises:
        ValueError: when nothing is painted.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise ValueError("nothing painted: paint over the cell (or its outline) first")
    disk = _disk(CLOSE_GAPS_PX)
    closed = ndi.binary_erosion(ndi.binary_dilation(mask, disk), disk) | mask
    cell = ndi.binary_fill_holes(closed)
    parts, n = ndi.label(cell)
    if n > 1:
        sizes = np.bincount(parts.ravel())[1:]
        cell = parts == 1 + int(np.argmax(sizes))
        logger.info("painted cell has %d parts; kept the largest (%d px)", n, int(sizes.max()))
    return cell


def erase_region(labels: np.ndarray, row: int, col: int) -> tuple[np.ndarray, str]:
    """What an eraser click at ``(row, col)`` returns to unlabelled, and its name.

    Returns:
        ``(mask, what)``: the annotated cell under the click, or the connected (4-neighbour)
        Background region under it; an empty mask on an unlabelled pixel.
    """
    labels = np.asarray(labels)
    value = int(labels[row, col])
    if value > 0:
        return labels == value, f"cell {value}"
    if value == BACKGROUND:
        regions, _ = ndi.label(labels == BACKGROUND)
        return regions == regions[row, col], "a Background region"
    return np.zeros(labels.shape, dtype=bool), "nothing"


def _disk(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    return r[:, None] ** 2 + r[None, :] ** 2 <= radius**2
