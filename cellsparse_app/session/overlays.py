"""Pictures for people: display images, annotation overlays, error and change maps.

All functions return ``uint8 (H, W, 3)`` RGB arrays and never change their inputs. The image
itself is drawn by :func:`cellsparse_app.data.display.to_rgb` (the one
image-to-RGB path, shared with SAM). Colours:

* Foreground cells: one saturated colour per cell, translucent, with a bright outline;
* Background: translucent blue; unlabelled pixels show the plain image (ignored in training);
* SAM preview (or hand outline): yellow; prompt points: green (+) / red (-); box: yellow
  rectangle; hand-outline vertices: yellow dots joined by a white line;
* predicted objects (to accept) and automatic-mask candidates: cyan / magenta outlines;
* errors: true positives green, false positives magenta, false negatives (missed) yellow;
* changes between rounds: new objects green, removed objects magenta, unchanged grey.

Colour pairs avoid red/green-only distinctions.
"""

from __future__ import annotations

import logging
from typing import Iterable, Sequence

import numpy as np

from cellsparse_app.data.drawing import polyline_mask

logger = logging.getLogger(__name__)

BACKGROUND_RGB = (40, 110, 255)
PREVIEW_RGB = (255, 221, 0)
POSITIVE_RGB = (40, 220, 90)
NEGATIVE_RGB = (255, 50, 50)
PREDICTION_RGB = (0, 230, 255)
CANDIDATE_RGB = (255, 60, 230)
SELECTED_RGB = (255, 255, 255)
TP_RGB = (50, 210, 90)
FP_RGB = (255, 60, 220)
FN_RGB = (255, 215, 0)
UNCHANGED_RGB = (160, 160, 160)

#: Distinct colours for cells (golden-angle hues; never blue, which means Background).
_PALETTE = np.array(
    [(255, 99, 71), (255, 165, 0), (154, 205, 50), (255, 105, 180), (240, 230, 140),
     (250, 128, 114), (173, 255, 47), (255, 140, 0), (218, 112, 214), (255, 215, 0),
     (127, 255, 0), (255, 20, 147)],
    dtype=np.float32,
)


def boundaries(labels: np.ndarray) -> np.ndarray:
    """Pixels of objects (> 0) whose 4-neighbour belongs to something else (inner outline)."""
    lab = np.asarray(labels)
    edge = np.zeros(lab.shape, dtype=bool)
    edge[1:, :] |= lab[1:, :] != lab[:-1, :]
    edge[:-1, :] |= lab[:-1, :] != lab[1:, :]
    edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
    edge[:, :-1] |= lab[:, :-1] != lab[:, 1:]
    edge[0, :] = edge[-1, :] = True
    edge[:, 0] = edge[:, -1] = True
    return edge & (lab > 0)


def thick(mask: np.ndarray, radius: int = 1) -> np.ndarray:
    """Dilate a boolean mask by ``radius`` pixels (square), to make thin lines visible."""
    out = mask.copy()
    for _ in range(radius):
        grown = out.copy()
        grown[1:, :] |= out[:-1, :]
        grown[:-1, :] |= out[1:, :]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


def line_width(shape: tuple[int, ...]) -> int:
    """Outline thickness that stays visible when a large image is shown small."""
    return max(0, int(round(max(shape[:2]) / 700)))


def annotation_overlay(
    display: np.ndarray,
    labels: np.ndarray,
    *,
    preview: np.ndarray | None = None,
    points: Sequence[tuple[int, int]] = (),
    point_labels: Sequence[int] = (),
    box: tuple[int, int, int, int] | None = None,
    box_start: tuple[int, int] | None = None,
    outline: Sequence[tuple[float, float]] = (),
    prediction: np.ndarray | None = None,
    candidates: np.ndarray | None = None,
    selected: np.ndarray | None = None,
    window: tuple[slice, slice] | None = None,
) -> np.ndarray:
    """The annotation canvas: image + Background + cells + prompts (see module colours).

    Args:
        display: ``uint8 (H, W, 3)`` from :func:`~cellsparse_app.data.display.to_rgb`.
        labels: annotation, -1/0/1..N.
        preview: boolean SAM mask not yet accepted.
        points, point_labels: prompt points ``(row, col)`` with 1 positive / 0 negative.
        box: ``(row0, col0, row1, col1)`` box prompt; ``box_start``: first corner of a box.
        prediction, candidates: instance images (0 = none) drawn as outlines.
        selected: boolean mask of the selected object (white outline).
        outline: vertices ``(row, col)`` of a hand outline, drawn as a polyline.
        window: ``(row slice, col slice)`` of the image to draw (a zoomed view): the result has
            the window's shape, line widths and dots fit it; every other argument stays in
            full-image coordinates.
    """
    if window is not None:
        return _overlay_window(
            window, display, labels, preview=preview, points=points,
            point_labels=point_labels, box=box, box_start=box_start, outline=outline,
            prediction=prediction, candidates=candidates, selected=selected,
        )
    out = display.astype(np.float32).copy()
    width = line_width(labels.shape)
    _blend(out, labels == 0, BACKGROUND_RGB, 0.38)
    # A stronger edge where Background meets unlabelled pixels: thin margin rings stay visible.
    _blend(out, (labels == 0) & thick(labels < 0, max(width, 1)), BACKGROUND_RGB, 0.7)
    cells = labels > 0
    if cells.any():
        colours = _PALETTE[(labels[cells] - 1) % len(_PALETTE)]
        out[cells] = 0.5 * out[cells] + 0.5 * colours
        edge = thick(boundaries(np.where(cells, labels, 0)), width) & cells
        out[edge] = 0.15 * out[edge] + 0.85 * _PALETTE[(labels[edge] - 1) % len(_PALETTE)]
    for objects, colour in ((prediction, PREDICTION_RGB), (candidates, CANDIDATE_RGB)):
        if objects is not None:
            out[thick(boundaries(objects), width) & ~cells] = colour
    if preview is not None and preview.any():
        _blend(out, preview, PREVIEW_RGB, 0.45)
        out[thick(boundaries(preview.astype(np.int32)), width)] = PREVIEW_RGB
    if selected is not None and selected.any():
        out[thick(boundaries(selected.astype(np.int32)), width + 1)] = SELECTED_RGB
    if box is not None:
        _rectangle(out, box, PREVIEW_RGB, width + 1)
    radius = max(3, int(round(max(labels.shape) / 120)))
    if box_start is not None:
        _disc(out, box_start, radius, PREVIEW_RGB)
    if len(outline):
        out[thick(polyline_mask(outline, labels.shape), width)] = SELECTED_RGB
        for vertex in outline:
            _disc(out, vertex, radius, (0, 0, 0))
            _disc(out, vertex, max(radius - 1, 1), PREVIEW_RGB)
    for (r, c), lab in zip(points, point_labels):
        _disc(out, (r, c), radius + 1, (255, 255, 255))
        _disc(out, (r, c), radius, POSITIVE_RGB if lab else NEGATIVE_RGB)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def instances_overlay(
    display: np.ndarray, instances: np.ndarray, alpha: float = 0.45
) -> np.ndarray:
    """Predicted (or any) instances as translucent colours with outlines."""
    out = display.astype(np.float32).copy()
    objects = instances > 0
    if objects.any():
        colours = _PALETTE[(instances[objects].astype(np.int64) - 1) % len(_PALETTE)]
        out[objects] = (1 - alpha) * out[objects] + alpha * colours
        edge = thick(boundaries(instances), line_width(instances.shape))
        out[edge] = _PALETTE[(instances[edge].astype(np.int64) - 1) % len(_PALETTE)]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def error_overlay(
    display: np.ndarray,
    truth: np.ndarray,
    pred: np.ndarray,
    fp_ids: Iterable[int],
    fn_ids: Iterable[int],
    ignored_ids: Iterable[int] = (),
) -> np.ndarray:
    """Matched predictions green, false positives magenta, missed truth objects yellow.

    ``fp_ids``/``ignored_ids`` are predicted ids and ``fn_ids`` truth ids, as returned by
    ``metrics.match_labels``; ignored predictions (on unlabelled pixels) are drawn grey.
    """
    out = display.astype(np.float32).copy()
    width = line_width(pred.shape)
    fp = np.isin(pred, list(fp_ids)) & (pred > 0)
    ignored = np.isin(pred, list(ignored_ids)) & (pred > 0)
    tp = (pred > 0) & ~fp & ~ignored
    fn = np.isin(truth, list(fn_ids)) & (truth > 0)
    for mask, colour, alpha in ((tp, TP_RGB, 0.35), (fp, FP_RGB, 0.5), (fn, FN_RGB, 0.5)):
        _blend(out, mask, colour, alpha)
    out[thick(boundaries(np.where(ignored, pred, 0)), width)] = UNCHANGED_RGB
    out[thick(boundaries(np.where(tp, pred, 0)), width)] = TP_RGB
    out[thick(boundaries(np.where(fp, pred, 0)), width)] = FP_RGB
    out[thick(boundaries(np.where(fn, truth, 0)), width)] = FN_RGB
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def change_overlay(
    display: np.ndarray,
    previous: np.ndarray,
    current: np.ndarray,
    removed_ids: Iterable[int],
    new_ids: Iterable[int],
) -> np.ndarray:
    """Objects new in ``current`` green, gone from ``previous`` magenta, the rest grey outlines."""
    out = display.astype(np.float32).copy()
    width = line_width(current.shape)
    new = np.isin(current, list(new_ids)) & (current > 0)
    removed = np.isin(previous, list(removed_ids)) & (previous > 0)
    _blend(out, new, TP_RGB, 0.5)
    _blend(out, removed, FP_RGB, 0.5)
    out[thick(boundaries(np.where(new, 0, current)), width)] = UNCHANGED_RGB
    out[thick(boundaries(np.where(new, current, 0)), width)] = TP_RGB
    out[thick(boundaries(np.where(removed, previous, 0)), width)] = FP_RGB
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def painted_mask(layers: Sequence[np.ndarray] | np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Union of brush strokes: a boolean mask, or RGBA/grey layers where painted pixels are
    opaque (alpha > 0) or non-zero.

    Raises:
        ValueError: a layer does not have the image's height and width.
    """
    if isinstance(layers, np.ndarray) and layers.dtype == bool:
        layers = [layers]
    mask = np.zeros(shape[:2], dtype=bool)
    for i, layer in enumerate(layers):
        layer = np.asarray(layer)
        if layer.shape[:2] != mask.shape:
            raise ValueError(f"brush layer {i} has shape {layer.shape[:2]}, image is {mask.shape}")
        if layer.ndim == 3 and layer.shape[-1] == 4:
            mask |= layer[..., 3] > 0
        elif layer.ndim == 3:
            mask |= layer.any(axis=-1)
        else:
            mask |= layer.astype(bool)
    return mask


def box_mask(shape: tuple[int, ...], box: tuple[int, int, int, int]) -> np.ndarray:
    """Boolean mask of the rectangle ``(row0, col0, row1, col1)`` (corners inclusive, any order)."""
    r0, c0, r1, c1 = box
    r0, r1 = sorted((int(r0), int(r1)))
    c0, c1 = sorted((int(c0), int(c1)))
    mask = np.zeros(shape[:2], dtype=bool)
    mask[max(r0, 0) : max(r1 + 1, 0), max(c0, 0) : max(c1 + 1, 0)] = True
    return mask


def _overlay_window(window: tuple[slice, slice], display: np.ndarray, labels: np.ndarray,
                    **kw) -> np.ndarray:
    # Draw the window plus a one-pixel margin (outlines of cells cut by the window's edge stay
    # off that edge), shifted into the window's coordinates, then drop the margin.
    h, w = labels.shape[:2]
    rows, cols = window
    r0, r1 = max(rows.start - 1, 0), min(rows.stop + 1, h)
    c0, c1 = max(cols.start - 1, 0), min(cols.stop + 1, w)
    crop = (slice(r0, r1), slice(c0, c1))
    for key in ("preview", "prediction", "candidates", "selected"):
        if kw[key] is not None:
            kw[key] = kw[key][crop]
    shift = np.array([r0, c0], dtype=np.float64)
    for key in ("points", "outline"):
        kw[key] = [tuple(np.asarray(p, dtype=np.float64) - shift) for p in kw[key]]
    if kw["box_start"] is not None:
        kw["box_start"] = tuple(np.asarray(kw["box_start"]) - shift)
    if kw["box"] is not None:
        kw["box"] = tuple(np.asarray(kw["box"]) - np.tile(shift, 2))
    out = annotation_overlay(display[crop], labels[crop], **kw)
    return out[rows.start - r0 : rows.stop - r0, cols.start - c0 : cols.stop - c0]


def _blend(out: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int], alpha: float) -> None:
    if mask.any():
        out[mask] = (1 - alpha) * out[mask] + alpha * np.asarray(colour, dtype=np.float32)


def _rectangle(out: np.ndarray, box: tuple[int, int, int, int], colour, width: int) -> None:
    inside = box_mask(out.shape, box)
    out[inside & ~_erode(inside, max(width, 1))] = colour


def _erode(mask: np.ndarray, radius: int) -> np.ndarray:
    return ~thick(~mask, radius)


def _disc(out: np.ndarray, centre: tuple[int, int], radius: int, colour) -> None:
    r, c = int(centre[0]), int(centre[1])
    h, w = out.shape[:2]
    r0, r1 = max(r - radius, 0), min(r + radius + 1, h)
    c0, c1 = max(c - radius, 0), min(c + radius + 1, w)
    if r0 >= r1 or c0 >= c1:
        return
    rr, cc = np.ogrid[r0:r1, c0:c1]
    disc = (rr - r) ** 2 + (cc - c) ** 2 <= radius**2
    out[r0:r1, c0:c1][disc] = colour
