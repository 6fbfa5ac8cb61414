"""One user's working session: a :class:`~cellsparse_app.storage.project.Project` plus what is on screen.

The web UI keeps one :class:`Workspace` per browser session (in ``gr.State``); its handlers call
exactly one method here and format the returned :class:`CanvasView`. The workspace holds the
transient state of annotating (SAM prompt points and box, the mask preview, the selected object,
automatic-mask candidates) and forwards training, prediction, comparison and export to
:mod:`cellsparse_app.session.rounds`. Nothing here imports a front end.

Coordinates are ``(row, col)``; the UI converts Gradio's ``(x, y)`` before calling.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from cellsparse_app.data import drawing
from cellsparse_app.data.annotations import AnnotationSummary
from cellsparse_app.data.images import ImageConfig, read_image
from cellsparse_app.data.margins import DEFAULT_MARGIN_PX, check_margin
from cellsparse_app.data.plausibility import AcceptGuard, implausible_mask_reason
from cellsparse_app.storage.project import Project
from cellsparse_app.session import overlays, sam_bridge
from cellsparse_app.session.folders import SESSION_PREFIX, SessionFile, session_folder
from cellsparse_app.session.workspace_rounds import RoundsMixin
from cellsparse_app.session.sam_bridge import (  # noqa: F401  (the click modes are part of this API)
    BACKGROUND_BOX,
    BOX,
    CENTRE,
    CLICK_MODES,
    ERASE,
    NEGATIVE,
    OUTLINE,
    POSITIVE,
    SELECT,
    Prompts,
)
from cellsparse_app.session.viewport import ZOOM_FACTORS, Viewport  # noqa: F401  (zoom is part of this API)

logger = logging.getLogger(__name__)


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


class Workspace(RoundsMixin):
    """A user's project and annotation state; see the module docstring.

    Args:
        directory: folder of this session's project (created lazily on first use).
        sam: returns the shared ``SamAnnotator`` (called lazily: loading SAM costs seconds).
    """

    def __init__(self, directory: str | Path, sam: Callable[[], Any] | None = None) -> None:
        self.directory = Path(directory)
        self._state_file = SessionFile(directory)
        self._sam = sam
        self._project: Project | None = None
        self._lock = threading.RLock()
        self.current: str | None = None
        self.prompts = Prompts()
        self.candidates: np.ndarray | None = None
        self.selected: tuple[str, int] | None = None
        self.show_prediction = True
        self.cancel = threading.Event()
        self._display_key: tuple | None = None
        self._display: np.ndarray | None = None
        self._model_cache: tuple[tuple, Any] | None = None
        self._viewport: Viewport | None = None
        self.margin = DEFAULT_MARGIN_PX  # Background ring (px) around accepted cells; 0: off
        self._guard = AcceptGuard()

    @classmethod
    def create(
        cls, root: str | Path, sam: Callable[[], Any] | None = None, *, token: str | None = None
    ) -> "Workspace":
        """A workspace in a fresh private folder under ``root`` (named after ``token``, see
        :func:`~cellsparse_app.session.folders.session_folder`, or random)."""
        Path(root).mkdir(parents=True, exist_ok=True)
        if token is None:
            return cls(tempfile.mkdtemp(prefix=SESSION_PREFIX, dir=root), sam)
        folder = session_folder(root, token)
        folder.mkdir(mode=0o700)
        return cls(folder, sam)

    @classmethod
    def reopen(cls, directory: str | Path, sam: Callable[[], Any] | None = None) -> "Workspace":
        """The workspace of an existing session folder (after a page reload), showing the image
        that was current."""
        ws = cls(directory, sam)
        state = ws._state_file.read()
        ids = [r.id for r in ws.project.images]
        ws.current = state.get("current") if state.get("current") in ids else (ids or [None])[0]
        try:
            ws.margin = check_margin(state.get("margin", ws.margin))
        except ValueError:
            logger.warning("ignoring a bad margin in %s", directory)
        return ws

    @property
    def project(self) -> Project:
        with self._lock:
            if self._project is None:
                folder = self._state_file.read().get("project", "project")
                self._project = Project(self.directory / Path(folder).name)
            return self._project

    def _use_project_folder(self, folder: Path) -> None:
        self._state_file.update(project=Path(folder).name)

    def close(self) -> None:
        """Delete the session folder (the user closed the page)."""
        shutil.rmtree(self.directory, ignore_errors=True)

    # -- images --------------------------------------------------------------------------------
    def add_images(
        self, sources: list[str | Path], names: list[str] | None = None
    ) -> tuple[list[str], list[str]]:
        """Read image files into the project; the first one read becomes current.

        A file that cannot be read is skipped, not fatal: the others are added.

        Returns:
            ``(ids, problems)``: the new images' ids, and one message per skipped file.

        Raises:
            ValueError: no file given, or no file could be read (naming each one's problem).
        """
        if not sources:
            raise ValueError("no file given: choose a PNG, JPEG or TIFF image")
        names = names or [Path(s).name for s in sources]
        ids, problems = [], []
        for source, name in zip(sources, names):
            try:
                image = read_image(source, name=name)
            except (ValueError, OSError) as exc:
                logger.info("upload %s skipped: %s", name, exc)
                problems.append(str(exc) if name in str(exc) else f"{name}: {exc}")
                continue
            ids.append(self.project.add_image(image, name))
        if not ids:
            raise ValueError("; ".join(problems))
        self.select_image(ids[0])
        return ids, problems

    def add_example(self, image_path: Path, truth_path: Path | None = None) -> str:
        """Add the bundled example (with its ground truth for AP display)."""
        from cellsparse_app.data.images import read_labels

        truth = read_labels(truth_path) if truth_path is not None else None
        image_id = self.project.add_image(read_image(image_path), image_path.name, truth=truth)
        self.select_image(image_id)
        return image_id

    def select_image(self, image_id: str) -> CanvasView:
        """Make ``image_id`` current (clears prompts and candidates)."""
        self.project.record(image_id)
        with self._lock:
            self.current = image_id
            self._reset_prompts()
            self.candidates = None
            self._state_file.update(current=image_id)
        return self.view(f"Showing {self.project.record(image_id).name}")

    def remove_current(self) -> str | None:
        """Drop the current image from the project; returns the new current id (or None)."""
        image_id = self._require_image()
        self.project.remove_image(image_id)
        remaining = [r.id for r in self.project.images]
        self.current = remaining[0] if remaining else None
        self._reset_prompts()
        self._state_file.update(current=self.current)
        return self.current

    def set_display(self, config: ImageConfig) -> CanvasView:
        """Channels and contrast for display and training (checked against all images)."""
        self.project.set_image_config(config)
        return self.view("Display updated")

    def display(self) -> np.ndarray:
        """Contrast-stretched RGB of the current image (cached; also what SAM sees)."""
        image_id = self._require_image()
        key = (image_id, self.project.image_config)
        with self._lock:
            if self._display_key != key:
                self._display = overlays.to_display(self.project.image(image_id), key[1])
                self._display_key = key
            return self._display  # type: ignore[return-value]

    def prepare_sam(self) -> str:
        """Compute the SAM embedding of the current image now, so that clicks answer at once."""
        return sam_bridge.prepare(self._annotator(), self.display())

    # -- annotating ----------------------------------------------------------------------------
    def click(self, row: int, col: int, mode: str) -> CanvasView:
        """Handle a click in one of :data:`CLICK_MODES` at image ``(row, col)`` (a click on a
        zoomed canvas is mapped with :meth:`to_image` first)."""
        image_id = self._require_image()
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
                return self.set_zoom(self.viewport.zoom, (row, col))
            if mode == ERASE:
                return self._erase_at(row, col)
            if mode == OUTLINE:
                return self._outline_vertex(row, col)
            if self.prompts.outline:  # SAM prompts replace a hand outline
                self.prompts = Prompts()
            p = self.prompts
            if mode == BOX:
                if p.box_start is None or p.box is not None:
                    p.box_start, p.box = (row, col), None
                    return self.view("Box: now click the opposite corner")
                p.box = (*p.box_start, row, col)
                p.box_start = None
            else:
                p.points.append((row, col))
                p.labels.append(1 if mode == POSITIVE else 0)
            self.selected = None
            mask, score, model = sam_bridge.segment(self._annotator(), self.display(), p.points,
                                                   p.labels, p.box)
            p.preview, p.score = mask, score
            area = int(mask.sum())
            note = f"SAM ({model}) mask: {area} px" + (f", score {score:.2f}" if score else "")
            if area == 0:
                note = "SAM found no object there: try another point or a box"
            areas = self._cell_areas()
            reason = implausible_mask_reason(area, areas, mask.size) if area else None
            if reason:
                note += f" · ⚠ Check it: {reason}; Accept asks twice"
            return self.view(note + " · Accept as Foreground or Background, or refine")

    def outline(self, points_rc: Sequence[tuple[float, float]]) -> CanvasView:
        """Make the polygon through ``points_rc`` (image ``(row, col)``: clicked border points or
        a freehand stroke; at least 3) the mask to accept, instead of a SAM mask."""
        image_id = self._require_image()
        vertices = [(float(r), float(c)) for r, c in points_rc]
        mask = drawing.polygon_mask(vertices, self.project.record(image_id).shape)
        with self._lock:
            self._reset_prompts()
            self.prompts = Prompts(outline=vertices, preview=mask)
            return self.view(f"Outline: {int(mask.sum())} px · Accept as Foreground or "
                             "Background, or click more border points")

    def accept_foreground(self) -> CanvasView:
        """Add the SAM preview (or the selected predicted/candidate object) as a cell."""
        image_id = self._require_image()
        with self._lock:
            mask = self._pending_mask("Foreground")
            self._guard.check(image_id, mask, self._cell_areas())
            new_id = self.project.editor(image_id).add_foreground(
                mask, margin=self.margin, others=self._other_objects())
            self.project.edited(image_id)
            self._reset_prompts()
            ring = f" with a {self.margin} px Background margin" if self.margin else ""
            return self.view(f"Added cell {new_id}{ring}")

    def accept_background(self) -> CanvasView:
        """Mark the SAM preview (or selected object's area) as Background."""
        image_id = self._require_image()
        with self._lock:
            n = self.project.editor(image_id).add_background(self._pending_mask("Background"))
            self.project.edited(image_id)
            self._reset_prompts()
            return self.view(f"Marked {n} px as Background")

    def paint(self, layers: list[np.ndarray] | np.ndarray, kind: str) -> CanvasView:
        """Apply brush strokes (a boolean mask of the image, or RGBA layers of the current view
        whose painted pixels count): ``kind`` "background", "erase" (back to unlabelled) or
        "foreground" (one new cell, holes filled: a freehand outline becomes the cell)."""
        image_id = self._require_image()
        mask = self._painted(layers)
        if not mask.any():
            raise ValueError("nothing painted: paint over the image with the brush first")
        with self._lock:
            editor = self.project.editor(image_id)
            if kind == "background":
                n, what = editor.add_background(mask), "Background"
            elif kind == "erase":
                n, what = editor.unlabel(mask), "unlabelled"
            elif kind == "foreground":  # accepted as a preview would be (margin, size check)
                self._reset_prompts()
                self.prompts.preview = drawing.filled_cell(mask)
                return self.accept_foreground()
            else:
                raise ValueError(f"unknown paint kind {kind!r} (background, erase or foreground)")
            self.project.edited(image_id)
            return self.view(f"{n} px marked {what}")

    def delete_selected(self) -> CanvasView:
        """Delete the selected annotated cell."""
        image_id = self._require_image()
        with self._lock:
            if not self.selected or self.selected[0] != "cell":
                raise ValueError("select an annotated cell first (Select mode, click the cell)")
            self.project.editor(image_id).delete_objects([self.selected[1]])
            self.project.edited(image_id)
            deleted, self.selected = self.selected[1], None
            return self.view(f"Deleted cell {deleted}")

    def accept_all(self, source: str) -> CanvasView:
        """Accept every predicted object (``source="prediction"``) or automatic-mask candidate."""
        image_id = self._require_image()
        with self._lock:
            objects = self._objects(source)
            if objects is None:
                raise ValueError(f"no {source} objects on this image yet")
            added = self.project.editor(image_id).accept_objects(
                objects, margin=self.margin, others=self._other_objects())
            self.project.edited(image_id)
            if source == "candidates":
                self.candidates = None
            return self.view(f"Accepted {len(added)} object(s) as Foreground")

    def auto_masks(self) -> CanvasView:
        """SAM automatic mask generation: candidates to pick from (Select mode) or accept."""
        with self._lock:
            self.candidates = sam_bridge.auto_masks(self._annotator(), self.display())
            n = int(len(np.unique(self.candidates)) - 1)
            return self.view(f"{n} candidate masks (magenta): select one and Accept, or accept all")

    def undo(self) -> CanvasView:
        """Undo the last annotation change of the current image."""
        image_id = self._require_image()
        with self._lock:
            done = self.project.editor(image_id).undo()
            self.project.edited(image_id)
            self.selected = None
            return self.view("Undone" if done else "Nothing to undo")

    def select_cell(self, cell: int) -> CanvasView:
        """Select an annotated cell by id (e.g. from the list of cells)."""
        image_id = self._require_image()
        with self._lock:
            if cell not in {o["id"] for o in self.project.editor(image_id).objects()}:
                raise ValueError(f"no annotated cell {cell} on this image")
            self._reset_prompts()
            self.selected = ("cell", int(cell))
            return self.view(f"Selected cell {cell}: Delete it, or keep it")

    def set_show_prediction(self, show: bool) -> CanvasView:
        with self._lock:
            self.show_prediction = bool(show)
            return self.view("Prediction outlines shown" if show else "Prediction outlines hidden")

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
            self._reset_prompts()
            return self.view("Prompts cleared")

    # -- zoom and pan --------------------------------------------------------------------------
    @property
    def viewport(self) -> Viewport:
        """The visible crop of the current image (a new image keeps the zoom, centred)."""
        shape = tuple(self.project.record(self._require_image()).shape[:2])
        with self._lock:
            if self._viewport is None or self._viewport.shape != shape:
                zoom = 1 if self._viewport is None else self._viewport.zoom
                self._viewport = Viewport.full(shape).zoomed(zoom)
            return self._viewport

    def set_zoom(self, factor: int, centre_rc: tuple[int, int] | None = None) -> CanvasView:
        """Show the image at ``factor`` (:data:`ZOOM_FACTORS`) around image ``centre_rc``
        (None: the current centre), at full resolution."""
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

    def view(self, message: str = "") -> CanvasView:
        """Render the canvas of the current image (the visible crop when zoomed)."""
        image_id = self._require_image()
        with self._lock:
            editor = self.project.editor(image_id)
            labels = editor.labels
            p = self.prompts
            prediction = self.project.prediction(image_id) if self.show_prediction else None
            selected = None
            if self.selected:
                objects = labels if self.selected[0] == "cell" else self._objects(self.selected[0])
                selected = None if objects is None else objects == self.selected[1]
            image = overlays.annotation_overlay(
                self.display(), labels, preview=p.preview, points=p.points, point_labels=p.labels,
                box=p.box, box_start=p.box_start, outline=p.outline, prediction=prediction,
                candidates=self.candidates, selected=selected, window=self.viewport.window,
            )
            return CanvasView(image, editor.summary(), message, p.preview is not None,
                              self.selected, editor.can_undo, editor.objects(),
                              self.project.totals())

    # -- internals -----------------------------------------------------------------------------
    def _annotator(self) -> Any:
        if self._sam is None:
            raise RuntimeError("no SAM engine configured for this workspace")
        return self._sam()

    def _cached_model(self, key: tuple, load: Callable[[], Any]) -> Any:
        # One loaded model per session: predicting again with the same round costs nothing.
        if self._model_cache is None or self._model_cache[0] != key:
            self._model_cache = (key, load())
        return self._model_cache[1]

    def _require_image(self) -> str:
        if self.current is None:
            raise RuntimeError("no image yet: upload an image or load the example first")
        return self.current

    def _reset_prompts(self) -> None:
        self.prompts = Prompts()
        self.selected = None

    def _objects(self, kind: str) -> np.ndarray | None:
        if kind == "candidate" or kind == "candidates":
            return self.candidates
        if kind == "prediction":
            return self.project.prediction(self._require_image())
        raise ValueError(f"unknown object source {kind!r}")

    def _other_objects(self) -> list[np.ndarray]:
        # Objects that SAM's candidates or the model see: the margin ring keeps off other cells.
        found = (self.candidates, self.project.prediction(self._require_image()))
        return [objects for objects in found if objects is not None]

    def _cell_areas(self) -> list[int]:
        # Areas (px) of the cells annotated so far, over all images.
        editors = [self.project.editor(rec.id) for rec in self.project.images]
        return [row["area"] for editor in editors for row in editor.objects()]

    def _pending_mask(self, what: str) -> np.ndarray:
        p = self.prompts
        if p.preview is not None and p.preview.any():
            return p.preview
        if self.selected and self.selected[0] in ("prediction", "candidate"):
            objects = self._objects(self.selected[0])
            if objects is not None:
                return objects == self.selected[1]
        raise ValueError(
            f"nothing to mark as {what}: click a cell to get a SAM mask, or select a predicted "
            "object first"
        )

    def _painted(self, layers: list[np.ndarray] | np.ndarray) -> np.ndarray:
        # Brush layers come from the editor, which shows the current view (a crop when zoomed).
        vp = self.viewport
        if isinstance(layers, np.ndarray) and layers.dtype == bool and layers.shape == vp.shape:
            return layers
        return vp.paste(overlays.painted_mask(layers, vp.crop_shape))

    def _outline_vertex(self, row: int, col: int) -> CanvasView:
        vertices = [*self.prompts.outline, (float(row), float(col))]
        if len(vertices) >= 3:
            return self.outline(vertices)
        self._reset_prompts()
        self.prompts.outline = vertices
        return self.view(f"Outline: {len(vertices)} point(s); click at least 3 along the border")

    def _erase_at(self, row: int, col: int) -> CanvasView:
        image_id = self._require_image()
        editor = self.project.editor(image_id)
        mask, what = drawing.erase_region(editor.labels, row, col)
        self._reset_prompts()
        n = editor.unlabel(mask)
        if not n:
            return self.view("Nothing to erase here (unlabelled pixel)")
        self.project.edited(image_id)
        return self.view(f"Erased {what} ({n} px)")

    def _select_at(self, row: int, col: int) -> CanvasView:
        image_id = self._require_image()
        cell = self.project.editor(image_id).object_at(row, col)
        self._reset_prompts()
        if cell > 0:
            self.selected = ("cell", cell)
            return self.view(f"Selected cell {cell}: Delete it, or keep it")
        for kind in ("candidate", "prediction"):
            objects = self._objects(kind)
            if objects is not None and objects[row, col] > 0:
                self.selected = (kind, int(objects[row, col]))
                return self.view(f"Selected {kind} object: Accept as Foreground?")
        what = {0: "Background", -1: "unlabelled"}[cell]
        return self.view(f"Nothing to select here ({what} pixel)")

    def _background_corner(self, row: int, col: int) -> CanvasView:
        p = self.prompts
        if p.box_start is None:
            self._reset_prompts()
            self.prompts.box_start = (row, col)
            return self.view("Background box: now click the opposite corner")
        box = (*p.box_start, row, col)
        image_id = self._require_image()
        mask = overlays.box_mask(self.project.record(image_id).shape, box)
        n = self.project.editor(image_id).add_background(mask)
        self.project.edited(image_id)
        self._reset_prompts()
        return self.view(f"Marked {n} px as Background (cells inside are kept)")
