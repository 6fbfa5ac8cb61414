"""The visible part of the image on the annotation canvas: zoom and pan at full resolution.

A 1024² image shown in a ~560-pixel box hides small cells; zooming by ``2, 4, 8`` shows a crop of
``1/zoom`` of each side at the image's own resolution (one image pixel per canvas pixel, which
the browser then scales up). Everything else (SAM prompts, labels, masks) stays in full-image
``(row, col)`` coordinates: :meth:`Viewport.to_image` maps a canvas click back, :attr:`window`
crops a full-size array, :meth:`paste` puts a canvas-sized mask (brush strokes) back into the
image. The crop always lies inside the image: moving past a border stops at the border.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

logger = logging.getLogger(__name__)

#: Zoom factors offered by the canvas (1 = the whole image).
ZOOM_FACTORS = (1, 2, 4, 8)


@dataclasses.dataclass(frozen=True)
class Viewport:
    """A crop of an image of ``shape``; build it with :meth:`full`, then :meth:`zoomed`,
    :meth:`centred` or :meth:`panned` (each returns a new, clamped viewport).

    Attributes:
        shape: ``(H, W)`` of the whole image.
        zoom: one of :data:`ZOOM_FACTORS`.
        origin: ``(row, col)`` of the crop's top-left pixel in the image.
    """

    shape: tuple[int, int]
    zoom: int = 1
    origin: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        if self.zoom not in ZOOM_FACTORS:
            raise ValueError(f"zoom must be one of {ZOOM_FACTORS}, got {self.zoom!r}")
        h, w = self.shape
        if h < 1 or w < 1:
            raise ValueError(f"image shape must be positive, got {self.shape}")
        ch, cw = self.crop_shape
        r0, c0 = self.origin
        if not (0 <= r0 <= h - ch and 0 <= c0 <= w - cw):
            raise ValueError(f"crop {self.crop_shape} at {self.origin} leaves the {h}x{w} image")

    @classmethod
    def full(cls, shape: tuple[int, ...]) -> "Viewport":
        """The whole image (zoom 1)."""
        return cls((int(shape[0]), int(shape[1])))

    @property
    def crop_shape(self) -> tuple[int, int]:
        """``(rows, cols)`` shown: each side divided by the zoom (rounded up)."""
        h, w = self.shape
        return -(-h // self.zoom), -(-w // self.zoom)

    @property
    def centre(self) -> tuple[int, int]:
        """Image pixel at the middle of the crop."""
        (r0, c0), (ch, cw) = self.origin, self.crop_shape
        return r0 + ch // 2, c0 + cw // 2

    @property
    def window(self) -> tuple[slice, slice]:
        """Row and column slices of the crop (``array[viewport.window]``)."""
        (r0, c0), (ch, cw) = self.origin, self.crop_shape
        return slice(r0, r0 + ch), slice(c0, c0 + cw)

    @property
    def step(self) -> tuple[int, int]:
        """A pan step: half the crop in each direction (at least one pixel)."""
        ch, cw = self.crop_shape
        return max(ch // 2, 1), max(cw // 2, 1)

    def describe(self) -> str:
        """One line for the status bar: the zoom and which rows and columns are shown."""
        if self.zoom == 1:
            return "Zoom 1×: the whole image (zoom in to draw small cells)"
        rows, cols = self.window
        h, w = self.shape
        return (f"Zoom {self.zoom}×: rows {rows.start}–{rows.stop - 1}, cols {cols.start}–"
                f"{cols.stop - 1} of {h}×{w} (pan with the arrows or a Centre click)")

    def zoomed(self, zoom: int, centre_rc: tuple[int, int] | None = None) -> "Viewport":
        """The view at ``zoom`` around ``centre_rc`` (None: the current centre)."""
        centre = self.centre if centre_rc is None else centre_rc
        return Viewport(self.shape, zoom, _origin_at(self.shape, zoom, centre))

    def centred(self, centre_rc: tuple[int, int]) -> "Viewport":
        """The same zoom around ``centre_rc`` (image coordinates)."""
        return self.zoomed(self.zoom, centre_rc)

    def panned(self, d_rows: int, d_cols: int) -> "Viewport":
        """The crop moved by ``(d_rows, d_cols)`` image pixels, stopped at the borders."""
        r0, c0 = self.origin
        return Viewport(self.shape, self.zoom,
                        _clamp_origin(self.shape, self.zoom, (r0 + d_rows, c0 + d_cols)))

    def to_image(self, row: int, col: int) -> tuple[int, int]:
        """Canvas ``(row, col)`` (a pixel of the crop) to image ``(row, col)``.

        Raises:
            ValueError: for a point outside the crop.
        """
        ch, cw = self.crop_shape
        if not (0 <= row < ch and 0 <= col < cw):
            raise ValueError(f"canvas point (row={row}, col={col}) is outside the {ch}x{cw} view")
        return self.origin[0] + int(row), self.origin[1] + int(col)

    def to_canvas(self, row: float, col: float) -> tuple[float, float]:
        """Image ``(row, col)`` to canvas coordinates (may lie outside the crop)."""
        return row - self.origin[0], col - self.origin[1]

    def paste(self, crop: np.ndarray) -> np.ndarray:
        """A boolean mask of the crop's shape placed into an all-False image-sized mask.

        Raises:
            ValueError: when ``crop`` does not have the crop's shape (the view changed).
        """
        crop = np.asarray(crop, dtype=bool)
        if crop.shape != self.crop_shape:
            raise ValueError(f"mask of shape {crop.shape} does not fit the {self.crop_shape} view "
                             "(was it drawn before zooming or panning?)")
        out = np.zeros(self.shape, dtype=bool)
        out[self.window] = crop
        return out


def _origin_at(shape: tuple[int, int], zoom: int, centre: tuple[int, int]) -> tuple[int, int]:
    ch, cw = -(-shape[0] // zoom), -(-shape[1] // zoom)
    return _clamp_origin(shape, zoom, (int(centre[0]) - ch // 2, int(centre[1]) - cw // 2))


def _clamp_origin(shape: tuple[int, int], zoom: int, origin: tuple[int, int]) -> tuple[int, int]:
    ch, cw = -(-shape[0] // zoom), -(-shape[1] // zoom)
    return (min(max(int(origin[0]), 0), shape[0] - ch), min(max(int(origin[1]), 0), shape[1] - cw))
