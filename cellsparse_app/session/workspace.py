"""One user's working session: a :class:`~cellsparse_app.storage.project.Project`, its image list,
and the parts a front end calls.

The web UI keeps one :class:`Workspace` per browser session (in ``gr.State``). The workspace
holds the project, the session folder and what a page reload needs; its parts, built for the
project and rebuilt when another project is opened, do the rest:

* :attr:`Workspace.canvas` (:class:`~cellsparse_app.session.canvas.Canvas`): the shown image,
  zoom and pan, and the rendered :class:`~cellsparse_app.session.canvas.CanvasView`;
* :attr:`Workspace.tools` (:class:`~cellsparse_app.session.annotating.AnnotationTools`):
  clicks, outlines, the brush, accept, undo, erase;
* :attr:`Workspace.rounds` (:class:`~cellsparse_app.session.rounds.Rounds`): training rounds,
  prediction, comparison and export.

Nothing here imports a front end. Coordinates are ``(row, col)``.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, NamedTuple

from cellsparse_app.data.images import ImageConfig, read_image, read_labels
from cellsparse_app.data.margins import DEFAULT_MARGIN_PX, check_margin
from cellsparse_app.session.annotating import AnnotationTools
from cellsparse_app.session.canvas import Canvas, CanvasView
from cellsparse_app.session.folders import SESSION_PREFIX, SessionFile, session_folder
from cellsparse_app.session.rounds import Rounds
from cellsparse_app.storage.project import Project

logger = logging.getLogger(__name__)


class _Parts(NamedTuple):
    """The parts built for one project (all replaced together when another is opened)."""

    canvas: Canvas
    tools: AnnotationTools
    rounds: Rounds


class Workspace:
    """A user's project and what is on screen; see the module docstring.

    Args:
        directory: folder of this session's project (created lazily on first use).
        sam: returns the shared ``SamAnnotator`` (called lazily: loading SAM costs seconds).
    """

    def __init__(self, directory: str | Path, sam: Callable[[], Any] | None = None) -> None:
        self.directory = Path(directory)
        self._state_file = SessionFile(directory)
        self._sam = sam
        self._lock = threading.RLock()
        # One stop flag for the session: a stop reaches a running round even after the user
        # opened another project.
        self.cancel = threading.Event()
        self._parts: _Parts | None = None

    @classmethod
    def create(
        cls, root: str | Path, sam: Callable[[], Any] | None = None, *, token: str | None = None
    ) -> Workspace:
        """A workspace in a fresh private folder under ``root`` (named after ``token``, see
        :func:`~cellsparse_app.session.folders.session_folder`, or random)."""
        Path(root).mkdir(parents=True, exist_ok=True)
        if token is None:
            return cls(tempfile.mkdtemp(prefix=SESSION_PREFIX, dir=root), sam)
        folder = session_folder(root, token)
        folder.mkdir(mode=0o700)
        return cls(folder, sam)

    @classmethod
    def reopen(cls, directory: str | Path, sam: Callable[[], Any] | None = None) -> Workspace:
        """The workspace of an existing session folder (after a page reload), showing the image
        that was current."""
        ws = cls(directory, sam)
        state = ws._state_file.read()
        ids = [r.id for r in ws.project.images]
        ws.canvas.show(state.get("current") if state.get("current") in ids else (ids or [None])[0])
        try:
            ws.tools.margin = check_margin(state.get("margin", ws.tools.margin))
        except ValueError:
            logger.warning("ignoring a bad margin in %s", directory)
        return ws

    # -- parts ---------------------------------------------------------------------------------
    @property
    def project(self) -> Project:
        return self._bound().canvas.project

    @property
    def canvas(self) -> Canvas:
        return self._bound().canvas

    @property
    def tools(self) -> AnnotationTools:
        return self._bound().tools

    @property
    def rounds(self) -> Rounds:
        return self._bound().rounds

    @property
    def current(self) -> str | None:
        """The id of the shown image (None before the first image)."""
        return self.canvas.image_id

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
        truth = read_labels(truth_path) if truth_path is not None else None
        image_id = self.project.add_image(read_image(image_path), image_path.name, truth=truth)
        self.select_image(image_id)
        return image_id

    def select_image(self, image_id: str) -> CanvasView:
        """Make ``image_id`` current (clears prompts and candidates)."""
        record = self.project.record(image_id)  # unknown ids fail here, naming the known ones
        with self._lock:
            self.canvas.show(image_id)
            self._state_file.update(current=image_id)
        return self.canvas.view(f"Showing {record.name}")

    def remove_current(self) -> str | None:
        """Drop the current image from the project; returns the new current id (or None)."""
        image_id = self.canvas.require_image()
        self.project.remove_image(image_id)
        remaining = [r.id for r in self.project.images]
        self.canvas.show(remaining[0] if remaining else None)
        self._state_file.update(current=self.current)
        return self.current

    def set_display(self, config: ImageConfig) -> CanvasView:
        """Channels and contrast for display and training (checked against all images)."""
        self.project.set_image_config(config)
        return self.canvas.view("Display updated")

    # -- project files -------------------------------------------------------------------------
    def save_project(self, dest: str | Path) -> Path:
        return self.project.save_zip(dest)

    def load_project(self, source: str | Path | bytes) -> str | None:
        """Replace this session's project by a saved one; returns the new current image id."""
        with self._lock:
            target = Path(tempfile.mkdtemp(prefix="project-", dir=self.directory))
            try:
                project = Project.load_zip(source, target)
            except Exception:  # any failure: leave no half-unpacked folder behind, then report
                shutil.rmtree(target, ignore_errors=True)
                raise
            old = self._parts
            # New parts: candidates, the display and the loaded model belong to the old
            # project's images (an auto-mask of another image's size crashed the next view).
            self._parts = self._build(
                project, zoom=old.canvas.zoom if old else 1,
                margin=old.tools.margin if old else DEFAULT_MARGIN_PX,
            )
            if old is not None:
                shutil.rmtree(old.canvas.project.directory, ignore_errors=True)
            self._state_file.update(project=project.directory.name)
            self.canvas.show(project.images[0].id if project.images else None)
            return self.current

    # -- internals -----------------------------------------------------------------------------
    def _bound(self) -> _Parts:
        with self._lock:
            if self._parts is None:
                folder = self._state_file.read().get("project", "project")
                project = Project(self.directory / Path(folder).name)
                self._parts = self._build(project, zoom=1, margin=DEFAULT_MARGIN_PX)
            return self._parts

    def _build(self, project: Project, *, zoom: int, margin: int) -> _Parts:
        canvas = Canvas(project, lock=self._lock, zoom=zoom)
        tools = AnnotationTools(canvas, lock=self._lock, state_file=self._state_file,
                                sam=self._sam, margin=margin)
        return _Parts(canvas, tools, Rounds(canvas, lock=self._lock, cancel=self.cancel))
