"""What the annotation canvas shows: the current image of a project, its prompts, selection,
automatic-mask candidates and zoom, rendered as a :class:`CanvasView`.

:class:`Canvas` holds that on-screen state;
:class:`~cellsparse_app.session.annotating.AnnotationTools` changes it and the annotations,
:class:`~cellsparse_app.session.rounds.Rounds` reads it to compare. Coordinates are
``(row, col)``.
"""

from __future__ import annotations

import dataclasses
import logging
import threading

import numpy as np

from cellsparse_app.data.annotations import AnnotationSummary
from cellsparse_app.data.display import to_rgb
from cellsparse_app.session import overlays
from cellsparse_app.session.sam_bridge import Prompts
from cellsparse_app.session.viewport import Viewport
from cellsparse_app.storage.project import Project

logger = logging.getLogger(__name__)

#: Kinds of selectable objects besides annotated cells (``Canvas.selected[0]``).
OBJECT_SOURCES = ("candidate", "candidates", "prediction")


@dataclasses.dataclass(frozen=True)
class CanvasView:
    """Everything the annotation canvas shows.

    Attributes:
        image: ``uint8 (H, W, 3)`` overlay (see :mod:`cellsparse_app.session.overlays`).
        summary: counts of the current image's annotation.
        message: what just happened, for the status line.
        has_preview: a SAM mask is waiting to be accepted.
        selected: ``(kind, id)`` of the selected object (kind: cell, prediction, candidate).
        can_undo: the annotation has something to undo.
        objects: one row per annotated cell (id, area, centroid).
        totals: project-wide counts (cells, background px, annotated images).
    """

    image: np.ndarray
    summary: AnnotationSummary
    message: str
    has_preview: bool
    selected: tuple[str, int] | None
    can_undo: bool
    objects: list[dict[str, int]]
    totals: dict[str, int]


class Canvas:
    """The shown image of ``project`` and the transient state drawn over it.

    Args:
        project: the project whose images are shown.
        lock: the session's lock (shared with the tools and rounds of the same workspace).
        zoom: initial zoom factor (kept when another project is opened).

    Attributes:
        image_id: the current image (None before the first image).
        prompts: SAM prompts or a hand outline and the mask they produced.
        candidates: SAM automatic-mask candidates of the current image (label image) or None.
        selected: ``(kind, id)`` of the selected cell, predicted object or candidate.
        show_prediction: draw the active round's prediction outlines.
    """

    def __init__(self, project: Project, *, lock: threading.RLock, zoom: int = 1) -> None:
        self.project = project
        self._lock = lock
        self.image_id: str | None = None
        self.prompts = Prompts()
        self.candidates: np.ndarray | None = None
        self.selected: tuple[str, int] | None = None
        self.show_prediction = True
        self._zoom = zoom
        self._viewport: Viewport | None = None
        self._display_key: tuple | None = None
        self._display: np.ndarray | None = None

    def require_image(self) -> str:
        """The current image id (``RuntimeError`` before any image was added)."""
        if self.image_id is None:
            raise RuntimeError("no image yet: upload an image or load the example first")
        return self.image_id

    def show(self, image_id: str | None) -> None:
        """Make ``image_id`` current; prompts, selection and candidates belong to the old one."""
        with self._lock:
            self.image_id = image_id
            self.reset_prompts()
            self.candidates = None

    def reset_prompts(self) -> None:
        self.prompts = Prompts()
        self.selected = None

    def display(self) -> np.ndarray:
        """Contrast-stretched RGB of the current image (cached; also what SAM sees)."""
        image_id = self.require_image()
        key = (image_id, self.project.image_config)
        with self._lock:
            if self._display_key != key:
                self._display = to_rgb(self.project.image(image_id), key[1])
                self._display_key = key
            return self._display  # type: ignore[return-value]

    def set_show_prediction(self, show: bool) -> CanvasView:
        with self._lock:
            self.show_prediction = bool(show)
            return self.view("Prediction outlines shown" if show else "Prediction outlines hidden")

    # -- zoom and pan --------------------------------------------------------------------------
    @property
    def viewport(self) -> Viewport:
        """The visible crop of the current image (a new image keeps the zoom, centred)."""
        shape = tuple(self.project.record(self.require_image()).shape[:2])
        with self._lock:
            if self._viewport is None or self._viewport.shape != shape:
                zoom = self._zoom if self._viewport is None else self._viewport.zoom
                self._viewport = Viewport.full(shape).zoomed(zoom)
            return self._viewport

    @property
    def zoom(self) -> int:
        """The zoom factor (also before any image is shown)."""
        return self._zoom if self._viewport is None else self._viewport.zoom

    def set_zoom(self, factor: int, centre_rc: tuple[int, int] | None = None) -> CanvasView:
        """Show the image at ``factor`` (:data:`~cellsparse_app.session.viewport.ZOOM_FACTORS`)
        around image ``centre_rc`` (None: the current centre), at full resolution."""
        with self._lock:
            self._viewport = self.viewport.zoomed(int(factor), centre_rc)
            return self.view(self._viewport.describe())

    def pan(self, d_rows: int, d_cols: int) -> CanvasView:
        """Move the zoomed view by ``(d_rows, d_cols)`` image pixels (stops at the borders)."""
        with self._lock:
            self._viewport = self.viewport.panned(int(d_rows), int(d_cols))
            return self.view(self._viewport.describe())

    def to_image(self, row: int, col: int) -> tuple[int, int]:
        """Canvas ``(row, col)`` of the current view to image ``(row, col)``."""
        return self.viewport.to_image(row, col)

    def painted(self, layers: list[np.ndarray] | np.ndarray) -> np.ndarray:
        """Boolean image mask of brush strokes: a mask of the whole image, or RGBA layers of
        the current view (a crop when zoomed: the brush editor shows what the canvas shows)."""
        vp = self.viewport
        if isinstance(layers, np.ndarray) and layers.dtype == bool and layers.shape == vp.shape:
            return layers
        return vp.paste(overlays.painted_mask(layers, vp.crop_shape))

    # -- objects -------------------------------------------------------------------------------
    def objects(self, kind: str) -> np.ndarray | None:
        """Label image of the automatic-mask candidates or of the current prediction."""
        if kind not in OBJECT_SOURCES:
            raise ValueError(f"unknown object source {kind!r}; use one of {OBJECT_SOURCES}")
        if kind == "prediction":
            return self.project.prediction(self.require_image())
        return self.candidates

    def other_objects(self) -> list[np.ndarray]:
        """Objects that SAM's candidates or the model see: the margin ring keeps off them."""
        found = (self.candidates, self.project.prediction(self.require_image()))
        return [objects for objects in found if objects is not None]

    # -- rendering -----------------------------------------------------------------------------
    def view(self, message: str = "") -> CanvasView:
        """Render the canvas of the current image (the visible crop when zoomed)."""
        image_id = self.require_image()
        with self._lock:
            editor = self.project.editor(image_id)
            labels = editor.labels
            p = self.prompts
            prediction = self.project.prediction(image_id) if self.show_prediction else None
            selected = None
            if self.selected:
                objects = labels if self.selected[0] == "cell" else self.objects(self.selected[0])
                selected = None if objects is None else objects == self.selected[1]
            image = overlays.annotation_overlay(
                self.display(), labels, preview=p.preview, points=p.points, point_labels=p.labels,
                box=p.box, box_start=p.box_start, outline=p.outline, prediction=prediction,
                candidates=self.candidates, selected=selected, window=self.viewport.window,
            )
            return CanvasView(image, editor.summary(), message, p.preview is not None,
                              self.selected, editor.can_undo, editor.objects(),
                              self.project.totals())
