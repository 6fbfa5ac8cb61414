"""Prompts (points, box, mask) in the core's ``(row, col)`` coordinates, validated once.

Coordinates
-----------
The core, like numpy indexing, uses ``(row, col)``: a point is ``(r, c)`` with ``0 <= r < H`` and
``0 <= c < W`` (floats allowed), a box is ``(row0, col0, row1, col1)`` given by its top-left and
bottom-right pixels, both inside the box (inclusive). SAM, like most UIs, uses ``(x, y)`` =
``(col, row)`` and boxes ``(x0, y0, x1, y1)``, with the same pixel-index convention (SAM adds the
half-pixel itself). :meth:`Prompt.to_sam` is the only place the core converts to SAM's order,
:meth:`Prompt.from_xy` the only place front ends convert from ``(x, y)``.

Point labels are 1 (positive: part of the object) and 0 (negative: not part of it).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

import numpy as np

logger = logging.getLogger(__name__)

#: Side of SAM's low-resolution mask logits (``mask_input`` / ``MaskResult.logits``).
LOW_RES = 256
#: Most points one prompt may carry.
MAX_POINTS = 256


@dataclasses.dataclass(frozen=True)
class SamPrompt:
    """A prompt in SAM's ``(x, y)`` convention, ready for ``SamPredictor``-style calls.

    Attributes:
        point_coords: ``float32 (N, 2)`` ``(x, y)`` or None.
        point_labels: ``int32 (N,)`` or None.
        box: ``float32 (4,)`` ``(x0, y0, x1, y1)`` or None.
        mask_input: ``float32 (1, 256, 256)`` logits or None.
    """

    point_coords: np.ndarray | None
    point_labels: np.ndarray | None
    box: np.ndarray | None
    mask_input: np.ndarray | None


@dataclasses.dataclass(frozen=True)
class Prompt:
    """A validated prompt for one image; build it with :meth:`create` or :meth:`from_xy`.

    Attributes:
        shape: ``(H, W)`` of the image the prompt belongs to.
        points_rc: ``float32 (N, 2)`` ``(row, col)`` or None.
        labels: ``int32 (N,)`` 1 positive / 0 negative, or None.
        box_rc: ``float32 (4,)`` ``(row0, col0, row1, col1)`` or None.
        mask_input: ``float32 (1, 256, 256)`` low-resolution logits from a previous result
            (``MaskResult.logits[i]``), or None.
    """

    shape: tuple[int, int]
    points_rc: np.ndarray | None = None
    labels: np.ndarray | None = None
    box_rc: np.ndarray | None = None
    mask_input: np.ndarray | None = None

    @classmethod
    def create(
        cls,
        shape: Sequence[int],
        points_rc: Sequence[Sequence[float]] | np.ndarray | None = None,
        labels: Sequence[int] | np.ndarray | None = None,
        box_rc: Sequence[float] | np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
    ) -> "Prompt":
        """Validate and build a prompt.

        Args:
            shape: image shape (only ``H, W`` are used).
            points_rc: ``(N, 2)`` ``(row, col)`` points, or None.
            labels: ``(N,)`` 1/0 labels; None means all positive.
            box_rc: ``(row0, col0, row1, col1)``, inclusive corners, or None.
            mask_input: ``(256, 256)`` or ``(1, 256, 256)`` logits (a previous result's
                ``logits[i]``), or a mask of the image's shape (converted by
                :func:`mask_to_logits`), or None.

        Raises:
            ValueError: no prompt at all, wrong shapes, point/label count mismatch, labels other
                than 0/1, non-finite values, points or box outside the image, empty box.
        """
        h, w = int(shape[0]), int(shape[1])
        points = labels_arr = box = mask = None
        if points_rc is not None and len(points_rc) > 0:
            points = np.asarray(points_rc, dtype=np.float64)
            if points.ndim != 2 or points.shape[1] != 2:
                raise ValueError(f"points must have shape (N, 2) as (row, col), got {points.shape}")
            if len(points) > MAX_POINTS:
                raise ValueError(f"{len(points)} points; at most {MAX_POINTS} are allowed")
            _check_finite("points", points)
            outside = ~((points[:, 0] >= 0) & (points[:, 0] <= h - 1)
                        & (points[:, 1] >= 0) & (points[:, 1] <= w - 1))
            if outside.any():
                bad = points[np.argmax(outside)].tolist()
                raise ValueError(
                    f"point (row, col) = {tuple(bad)} is outside the {h}x{w} image "
                    f"(rows 0..{h - 1}, cols 0..{w - 1})"
                )
            if labels is None:
                labels_arr = np.ones(len(points), dtype=np.int32)
            else:
                raw = np.asarray(labels).reshape(-1)
                if len(raw) != len(points):
                    raise ValueError(f"{len(points)} points but {len(raw)} labels")
                if raw.dtype == bool:
                    raw = raw.astype(np.int32)
                if not np.all(np.isin(raw, (0, 1))):
                    raise ValueError(
                        "point labels must be 1 (positive) or 0 (negative), got "
                        f"{sorted(set(raw.tolist()))}"
                    )
                labels_arr = raw.astype(np.int32)
        elif labels is not None and len(labels) > 0:
            raise ValueError(f"{len(labels)} labels but no points")
        if box_rc is not None:
            box = np.asarray(box_rc, dtype=np.float64).reshape(-1)
            if box.shape != (4,):
                raise ValueError(f"box must be (row0, col0, row1, col1), got {np.shape(box_rc)}")
            _check_finite("box", box)
            r0, c0, r1, c1 = box
            if r1 <= r0 or c1 <= c0:
                raise ValueError(
                    f"empty box (row0, col0, row1, col1) = {tuple(box.tolist())}: row1 must be > "
                    "row0 and col1 > col0"
                )
            if r0 < 0 or c0 < 0 or r1 > h - 1 or c1 > w - 1:
                raise ValueError(
                    f"box (row0, col0, row1, col1) = {tuple(box.tolist())} is outside the {h}x{w} "
                    "image"
                )
        if mask_input is not None:
            mask = np.asarray(mask_input)
            if mask.shape == (h, w) and (h, w) != (LOW_RES, LOW_RES):
                mask = mask_to_logits(mask)
            mask = mask.astype(np.float32)
            if mask.shape == (LOW_RES, LOW_RES):
                mask = mask[None]
            if mask.shape != (1, LOW_RES, LOW_RES):
                raise ValueError(
                    f"mask_input must be low-resolution logits of shape ({LOW_RES}, {LOW_RES}) "
                    f"(a previous result's logits) or a mask of the image's shape {(h, w)}, "
                    f"got {mask.shape}"
                )
            _check_finite("mask_input", mask)
        if points is None and box is None:
            raise ValueError("empty prompt: give at least one point or a box")
        return cls(
            (h, w),
            None if points is None else points.astype(np.float32),
            labels_arr,
            None if box is None else box.astype(np.float32),
            mask,
        )

    @classmethod
    def from_xy(
        cls,
        shape: Sequence[int],
        points_xy: Sequence[Sequence[float]] | np.ndarray | None = None,
        labels: Sequence[int] | np.ndarray | None = None,
        box_xyxy: Sequence[float] | np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
    ) -> "Prompt":
        """Build from front-end ``(x, y)`` points and an ``(x0, y0, x1, y1)`` box."""
        points = None
        if points_xy is not None and len(points_xy) > 0:
            points = np.asarray(points_xy, dtype=np.float64)
            if points.ndim != 2 or points.shape[1] != 2:
                raise ValueError(f"points must have shape (N, 2) as (x, y), got {points.shape}")
            points = points[:, ::-1]
        box = None
        if box_xyxy is not None:
            xyxy = np.asarray(box_xyxy, dtype=np.float64).reshape(-1)
            if xyxy.shape != (4,):
                raise ValueError(f"box must be (x0, y0, x1, y1), got {np.shape(box_xyxy)}")
            box = xyxy[[1, 0, 3, 2]]
        return cls.create(shape, points, labels, box, mask_input)

    @property
    def positive_rc(self) -> np.ndarray:
        """``(P, 2)`` positive points (may be empty)."""
        if self.points_rc is None:
            return np.zeros((0, 2), np.float32)
        return self.points_rc[self.labels == 1]

    @property
    def negative_rc(self) -> np.ndarray:
        """``(Q, 2)`` negative points (may be empty)."""
        if self.points_rc is None:
            return np.zeros((0, 2), np.float32)
        return self.points_rc[self.labels == 0]

    @property
    def n_points(self) -> int:
        return 0 if self.points_rc is None else len(self.points_rc)

    def to_sam(self) -> SamPrompt:
        """This prompt in SAM's ``(x, y)`` order: the one conversion point of the core."""
        coords = None if self.points_rc is None else self.points_rc[:, ::-1].copy()
        box = None if self.box_rc is None else self.box_rc[[1, 0, 3, 2]].copy()
        return SamPrompt(coords, self.labels, box, self.mask_input)


def mask_to_logits(mask: np.ndarray, side: int = 1024, strength: float = 8.0) -> np.ndarray:
    """A full-resolution mask (non-zero = object) as SAM's ``(256, 256)`` mask-prompt logits.

    The mask is placed like SAM places the image (longest side scaled to ``side``, padded at the
    bottom/right) and averaged down to 256x256; inside maps to ``+strength``, outside to
    ``-strength``.
    """
    from scipy import ndimage as ndi

    m = (np.asarray(mask) > 0).astype(np.float32)
    h, w = m.shape
    scale = side / max(h, w)
    new_h, new_w = int(h * scale + 0.5), int(w * scale + 0.5)
    resized = ndi.zoom(m, (new_h / h, new_w / w), order=1)[:new_h, :new_w]
    canvas = np.zeros((side, side), dtype=np.float32)
    canvas[: resized.shape[0], : resized.shape[1]] = resized
    f = side // LOW_RES
    low = canvas.reshape(LOW_RES, f, LOW_RES, f).mean(axis=(1, 3))
    return ((2.0 * low - 1.0) * strength).astype(np.float32)


def _check_finite(name: str, values: np.ndarray) -> None:
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name} contain NaN or infinite values")
