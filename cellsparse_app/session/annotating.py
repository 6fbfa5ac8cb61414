"""Annotating the current image: SAM clicks and boxes, hand outlines, the brush, accepting masks
as Foreground or Background, selecting, deleting, erasing and undo.

:class:`AnnotationTools` edits the project's annotations of the image its
:class:`~cellsparse_app.session.canvas.Canvas` shows, keeps the canvas's prompts and selection
up to date and answers each action with the new :class:`~cellsparse_app.session.canvas.CanvasView`.
Coordinates are ``(row, col)``; a click on a zoomed canvas is mapped with
:meth:`Canvas.to_image <cellsparse_app.session.canvas.Canvas.to_image>` first.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Sequence

import numpy as np

from cellsparse_app.data import drawing
from cellsparse_app.data.margins import DEFAULT_MARGIN_PX, check_margin
from cellsparse_app.data.plausibility import AcceptGuard, implausible_mask_reason
from cellsparse_app.session import overlays, sam_bridge
from cellsparse_app.session.canvas import Canvas, CanvasView
from cellsparse_app.session.folders import SessionFile
from cellsparse_app.session.sam_bridge import (
    BACKGROUND_BOX,
    BOX,
    CENTRE,
    CLICK_MODES,
    ERASE,
    OUTLINE,
    POSITIVE,
    SELECT,
    Prompts,
)
from cellsparse_app.storage.project import Project

logger = logging.getLogger(__name__)


class AnnotationTools:
    """The annotation actions on ``canvas``'s current image; see the module docstring.

    Args:
        canvas: what is shown (its project is the one edited).
        lock: the session's lock (shared with the canvas).
        state_file: where the Background margin is kept for a page reload.
        sam: returns the shared ``SamAnnotator`` (called lazily: loading SAM costs seconds).
        margin: Background ring (px) around accepted cells; 0: off.
    """

    def __init__(
        self, canvas: Canvas, *, lock: threading.RLock, state_file: SessionFile,
        sam: Callable[[], Any] | None = None, margin: int = DEFAULT_MARGIN_PX,
    ) -> None:
        self.canvas = canvas
        self._lock = lock
        self._state_file = state_file
        self._sam = sam
        self.margin = check_margin(margin)
        self._guard = AcceptGuard()

    @property
    def project(self) -> Project:
        return self.canvas.project

    def prepare_sam(self) -> str:
        """Compute the SAM embedding of the current image now, so that clicks answer at once."""
        return sam_bridge.prepare(self._annotator(), self.canvas.display())

    def click(self, row: int, col: int, mode: str) -> CanvasView:
        """Handle a click in one of :data:`~cellsparse_app.session.sam_bridge.CLICK_MODES` at
        image ``(row, col)``."""
        image_id = self.canvas.require_image()
        h, w = self.project.record(image_id).shape[:2]
        if not (0 <= row < h and 0 <= col < w):
            raise ValueError(f"click (row={row}, col={col}) is outside the {h}x{w} image")
        if mode not in CLICK_MODES:
            raise ValueError(f"unknown click mode {mode!r}; use one of {CLICK_MODES}")
        with self._lock:
            if mode == SELECT:
                return self._select_at(row, col)
            if mode == BACKGROUND_BOX:
                return self._background_corner(row, col)
            if mode == CENTRE:
                return self.canvas.set_zoom(self.canvas.viewport.zoom, (row, col))
            if mode == ERASE:
                return self._erase_at(row, col)
            if mode == OUTLINE:
                return self._outline_vertex(row, col)
            return self._sam_prompt(row, col, mode)

    def outline(self, points_rc: Sequence[tuple[float, float]]) -> CanvasView:
        """Make the polygon through ``points_rc`` (image ``(row, col)``: clicked border points or
        a freehand stroke; at least 3) the mask to accept, instead of a SAM mask."""
        image_id = self.canvas.require_image()
        vertices = [(float(r), float(c)) for r, c in points_rc]
        mask = drawing.polygon_mask(vertices, self.project.record(image_id).shape)
        with self._lock:
            self.canvas.reset_prompts()
            self.canvas.prompts = Prompts(outline=vertices, preview=mask)
            return self.canvas.view(f"Outline: {int(mask.sum())} px · Accept as Foreground or "
                                    "Background, or click more border points")

    def accept_foreground(self) -> CanvasView:
        """Add the SAM preview (or the selected predicted/candidate object) as a cell."""
        image_id = self.canvas.require_image()
        with self._lock:
            mask = self._pending_mask("Foreground")
            self._guard.check(image_id, mask, self._cell_areas())
            new_id = self.project.editor(image_id).add_foreground(
                mask, margin=self.margin, others=self.canvas.other_objects())
            self.project.edited(image_id)
            self.canvas.reset_prompts()
            ring = f" with a {self.margin} px Background margin" if self.margin else ""
            return self.canvas.view(f"Added cell {new_id}{ring}")

    def accept_background(self) -> CanvasView:
        """Mark the SAM preview (or selected object's area) as Background."""
        image_id = self.canvas.require_image()
        with self._lock:
            n = self.project.editor(image_id).add_background(self._pending_mask("Background"))
            self.project.edited(image_id)
            self.canvas.reset_prompts()
            return self.canvas.view(f"Marked {n} px as Background")

    def paint(self, layers: list[np.ndarray] | np.ndarray, kind: str) -> CanvasView:
        """Apply brush strokes (a boolean mask of the image, or RGBA layers of the current view
        whose painted pixels count): ``kind`` "background", "erase" (back to unlabelled) or
        "foreground" (one new cell, holes filled: a freehand outline becomes the cell)."""
        image_id = self.canvas.require_image()
        mask = self.canvas.painted(layers)
        if not mask.any():
            raise ValueError("nothing painted: paint over the image with the brush first")
        with self._lock:
            editor = self.project.editor(image_id)
            if kind == "background":
                n, what = editor.add_background(mask), "Background"
            elif kind == "erase":
                n, what = editor.unlabel(mask), "unlabelled"
            elif kind == "foreground":  # accepted as a preview would be (margin, size check)
                self.canvas.reset_prompts()
                self.canvas.prompts.preview = drawing.filled_cell(mask)
                return self.accept_foreground()
            else:
                raise ValueError(f"unknown paint kind {kind!r} (background, erase or foreground)")
            self.project.edited(image_id)
            return self.canvas.view(f"{n} px marked {what}")

    def delete_selected(self) -> CanvasView:
        """Delete the selected annotated cell."""
        image_id = self.canvas.require_image()
        with self._lock:
            selected = self.canvas.selected
            if not selected or selected[0] != "cell":
                raise ValueError("select an annotated cell first (Select mode, click the cell)")
            self.project.editor(image_id).delete_objects([selected[1]])
            self.project.edited(image_id)
            self.canvas.selected = None
            return self.canvas.view(f"Deleted cell {selected[1]}")

    def accept_all(self, source: str) -> CanvasView:
        """Accept every predicted object (``source="prediction"``) or automatic-mask candidate."""
        image_id = self.canvas.require_image()
        with self._lock:
            objects = self.canvas.objects(source)
            if objects is None:
                raise ValueError(f"no {source} objects on this image yet")
            added = self.project.editor(image_id).accept_objects(
                objects, margin=self.margin, others=self.canvas.other_objects())
            self.project.edited(image_id)
            if source == "candidates":
                self.canvas.candidates = None
            return self.canvas.view(f"Accepted {len(added)} object(s) as Foreground")

    def auto_masks(self) -> CanvasView:
        """SAM automatic mask generation: candidates to pick from (Select mode) or accept."""
        with self._lock:
            self.canvas.candidates = sam_bridge.auto_masks(self._annotator(),
                                                           self.canvas.display())
            n = int(len(np.unique(self.canvas.candidates)) - 1)
            return self.canvas.view(
                f"{n} candidate masks (magenta): select one and Accept, or accept all")

    def undo(self) -> CanvasView:
        """Undo the last annotation change of the current image."""
        image_id = self.canvas.require_image()
        with self._lock:
            done = self.project.editor(image_id).undo()
            self.project.edited(image_id)
            self.canvas.selected = None
            return self.canvas.view("Undone" if done else "Nothing to undo")

    def select_cell(self, cell: int) -> CanvasView:
        """Select an annotated cell by id (e.g. from the list of cells)."""
        image_id = self.canvas.require_image()
        with self._lock:
            if cell not in {o["id"] for o in self.project.editor(image_id).objects()}:
                raise ValueError(f"no annotated cell {cell} on this image")
            self.canvas.reset_prompts()
            self.canvas.selected = ("cell", int(cell))
            return self.canvas.view(f"Selected cell {cell}: Delete it, or keep it")

    def set_margin(self, px: int) -> str:
        """Width (px) of the Background ring marked around each cell accepted from now on;
        0 turns it off. Returns a status message."""
        with self._lock:
            self.margin = check_margin(px)
            self._state_file.update(margin=self.margin)
        if not self.margin:
            return "Background margin off: mark Background right up to the cells yourself"
        return f"Cells accepted from now on get a {self.margin} px Background margin"

    def clear_prompts(self) -> CanvasView:
        with self._lock:
            self.canvas.reset_prompts()
            return self.canvas.view("Prompts cleared")

    # -- internals -----------------------------------------------------------------------------
    def _annotator(self) -> Any:
        if self._sam is None:
            raise RuntimeError("no SAM engine configured for this workspace")
        return self._sam()

    def _sam_prompt(self, row: int, col: int, mode: str) -> CanvasView:
        if self.canvas.prompts.outline:  # SAM prompts replace a hand outline
            self.canvas.prompts = Prompts()
        p = self.canvas.prompts
        if mode == BOX:
            if p.box_start is None or p.box is not None:
                p.box_start, p.box = (row, col), None
                return self.canvas.view("Box: now click the opposite corner")
            p.box = (*p.box_start, row, col)
            p.box_start = None
        else:
            p.points.append((row, col))
            p.labels.append(1 if mode == POSITIVE else 0)
        self.canvas.selected = None
        mask, score, model = sam_bridge.segment(self._annotator(), self.canvas.display(),
                                               p.points, p.labels, p.box)
        p.preview, p.score = mask, score
        area = int(mask.sum())
        note = f"SAM ({model}) mask: {area} px" + (f", score {score:.2f}" if score else "")
        if area == 0:
            note = "SAM found no object there: try another point or a box"
        reason = implausible_mask_reason(area, self._cell_areas(), mask.size) if area else None
        if reason:
            note += f" · ⚠ Check it: {reason}; Accept asks twice"
        return self.canvas.view(note + " · Accept as Foreground or Background, or refine")

    def _cell_areas(self) -> list[int]:
        # Areas (px) of the cells annotated so far, over all images.
        editors = [self.project.editor(rec.id) for rec in self.project.images]
        return [row["area"] for editor in editors for row in editor.objects()]

    def _pending_mask(self, what: str) -> np.ndarray:
        p, selected = self.canvas.prompts, self.canvas.selected
        if p.preview is not None and p.preview.any():
            return p.preview
        if selected and selected[0] in ("prediction", "candidate"):
            objects = self.canvas.objects(selected[0])
            if objects is not None:
                return objects == selected[1]
        raise ValueError(
            f"nothing to mark as {what}: click a cell to get a SAM mask, or select a predicted "
            "object first"
        )

    def _outline_vertex(self, row: int, col: int) -> CanvasView:
        vertices = [*self.canvas.prompts.outline, (float(row), float(col))]
        if len(vertices) >= 3:
            return self.outline(vertices)
        self.canvas.reset_prompts()
        self.canvas.prompts.outline = vertices
        return self.canvas.view(
            f"Outline: {len(vertices)} point(s); click at least 3 along the border")

    def _erase_at(self, row: int, col: int) -> CanvasView:
        image_id = self.canvas.require_image()
        editor = self.project.editor(image_id)
        mask, what = drawing.erase_region(editor.labels, row, col)
        self.canvas.reset_prompts()
        n = editor.unlabel(mask)
        if not n:
            return self.canvas.view("Nothing to erase here (unlabelled pixel)")
        self.project.edited(image_id)
        return self.canvas.view(f"Erased {what} ({n} px)")

    def _select_at(self, row: int, col: int) -> CanvasView:
        image_id = self.canvas.require_image()
        cell = self.project.editor(image_id).object_at(row, col)
        self.canvas.reset_prompts()
        if cell > 0:
            self.canvas.selected = ("cell", cell)
            return self.canvas.view(f"Selected cell {cell}: Delete it, or keep it")
        for kind in ("candidate", "prediction"):
            objects = self.canvas.objects(kind)
            if objects is not None and objects[row, col] > 0:
                self.canvas.selected = (kind, int(objects[row, col]))
                return self.canvas.view(f"Selected {kind} object: Accept as Foreground?")
        what = {0: "Background", -1: "unlabelled"}[cell]
        return self.canvas.view(f"Nothing to select here ({what} pixel)")

    def _background_corner(self, row: int, col: int) -> CanvasView:
        p = self.canvas.prompts
        if p.box_start is None:
            self.canvas.reset_prompts()
            self.canvas.prompts.box_start = (row, col)
            return self.canvas.view("Background box: now click the opposite corner")
        box = (*p.box_start, row, col)
        image_id = self.canvas.require_image()
        mask = overlays.box_mask(self.project.record(image_id).shape, box)
        n = self.project.editor(image_id).add_background(mask)
        self.project.edited(image_id)
        self.canvas.reset_prompts()
        return self.canvas.view(f"Marked {n} px as Background (cells inside are kept)")
