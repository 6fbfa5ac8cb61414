"""Outlines of labelled objects as exact pixel-edge polygons, and back.

Coordinates here are ``(x, y)`` in the *pixel-corner* convention of QuPath, ImageJ, GeoJSON and
COCO: pixel ``(row, col)`` covers ``[col, col + 1] x [row, row + 1]``. An object's outline follows
the edges of its pixels exactly (staircase, integer vertices), so rasterising the polygon (a pixel
is inside when its centre is) gives back the object's pixels. Holes are filled: an outline is the
exterior of one connected part (8-connectivity). ``simplify_tol`` > 0 drops vertices with
Douglas-Peucker (shapely, topology preserved); the result is then no longer pixel-exact.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage as ndi

logger = logging.getLogger(__name__)

_EIGHT = np.ones((3, 3), dtype=bool)


def mask_to_polygons(mask: np.ndarray, simplify_tol: float = 0.0) -> list[np.ndarray]:
    """Exterior rings of the connected parts of a boolean mask, largest part first.

    Args:
        mask: 2-D boolean mask.
        simplify_tol: Douglas-Peucker tolerance in pixels (0 keeps the exact outline).

    Returns:
        One ``float64 (N, 2)`` array of ``(x, y)`` vertices per part, closed (last == first).
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    if simplify_tol < 0:
        raise ValueError(f"simplify_tol must be >= 0, got {simplify_tol}")
    box = ndi.find_objects(mask.astype(np.uint8))
    if not box or box[0] is None:
        return []
    sl = box[0]
    parts, n = ndi.label(mask[sl], structure=_EIGHT)
    rings = []
    for k, part_sl in enumerate(ndi.find_objects(parts), start=1):
        part = ndi.binary_fill_holes(parts[part_sl] == k)
        ring = _trace(part)
        ring = ring + [sl[1].start + part_sl[1].start, sl[0].start + part_sl[0].start]
        rings.append((int(part.sum()), _finish(ring, simplify_tol)))
    rings.sort(key=lambda item: -item[0])
    return [r for _, r in rings]


def polygon_to_mask(ring: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Rasterise an ``(x, y)`` pixel-corner polygon: pixels whose centre lies inside."""
    from skimage.draw import polygon as draw_polygon

    ring = np.asarray(ring, dtype=float)
    rr, cc = draw_polygon(ring[:, 1] - 0.5, ring[:, 0] - 0.5, shape=shape)
    out = np.zeros(shape, dtype=bool)
    out[rr, cc] = True
    return out


def _trace(part: np.ndarray) -> np.ndarray:
    """Exact pixel-edge outline of one filled 8-connected part, ``(x, y)`` relative to ``part``."""
    from skimage.measure import find_contours

    padded = np.pad(part, 1).astype(np.float32)
    contours = find_contours(padded, 0.5, fully_connected="high")
    # Marching squares at 0.5 on a binary image puts vertices at the midpoints of pixel edges.
    mid = max(contours, key=lambda c: len(c))
    mid = np.round(mid * 2) / 2
    # A midpoint with an integer row lies on a vertical pixel edge, else on a horizontal one.
    on_vertical = mid[:, 0] == np.floor(mid[:, 0])
    a, b = mid[:-1], mid[1:]
    turn = on_vertical[:-1] != on_vertical[1:]
    # The pixel corner shared by a vertical edge (col from it) and a horizontal edge (row from it).
    corner = np.where(on_vertical[:-1, None], np.stack([b[:, 0], a[:, 1]], 1),
                      np.stack([a[:, 0], b[:, 1]], 1))
    seq = np.empty((len(a) + int(turn.sum()), 2))
    idx = np.arange(len(a)) + np.concatenate([[0], np.cumsum(turn)[:-1]])
    seq[idx] = a
    seq[idx[turn] + 1] = corner[turn]
    corners = seq[_is_vertex(seq)]
    # Centre coordinates of the padded image -> pixel-corner coordinates of ``part``.
    rc = corners + 0.5 - 1
    ring = rc[:, ::-1]
    return np.vstack([ring, ring[:1]])


def _is_vertex(seq: np.ndarray) -> np.ndarray:
    """True where the closed axis-aligned path ``seq`` changes direction."""
    prev = seq - np.roll(seq, 1, axis=0)
    nxt = np.roll(seq, -1, axis=0) - seq
    cross = prev[:, 0] * nxt[:, 1] - prev[:, 1] * nxt[:, 0]
    return np.abs(cross) > 1e-9


def _finish(ring: np.ndarray, simplify_tol: float) -> np.ndarray:
    """Orient counter-clockwise (GeoJSON exteriors), make valid and optionally simplify."""
    import shapely
    from shapely.geometry import Polygon

    poly = Polygon(ring)
    if not poly.is_valid:  # parts touching at a single corner pinch the ring
        poly = _largest(shapely.make_valid(poly))
    if simplify_tol > 0:
        simple = poly.simplify(simplify_tol, preserve_topology=True)
        if not simple.is_empty and simple.area > 0:
            poly = _largest(simple)
    poly = shapely.geometry.polygon.orient(poly, sign=1.0)
    return np.asarray(poly.exterior.coords, dtype=float)


def _largest(geom):
    from shapely.geometry import Polygon

    if isinstance(geom, Polygon):
        return Polygon(geom.exterior)
    polys = [g for g in getattr(geom, "geoms", []) if isinstance(g, Polygon)]
    if not polys:
        raise ValueError(f"cannot make a polygon of {geom.geom_type}")
    return Polygon(max(polys, key=lambda g: g.area).exterior)
