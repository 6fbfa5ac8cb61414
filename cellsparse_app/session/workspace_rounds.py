"""Training rounds, prediction, comparison, export and project files of a :class:`Workspace`.

A mixin so that ``workspace.py`` stays about annotating; it uses the workspace's ``project``,
``current`` image, ``cancel`` flag, ``display()``/``view()`` and model cache.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generator

from cellsparse_app.session import rounds as hitl
from cellsparse_app.storage.project import Project, RoundRecord

if TYPE_CHECKING:
    from cellsparse_app.session.workspace import CanvasView

logger = logging.getLogger(__name__)


class RoundsMixin:
    """Rounds and files; see the module docstring."""

    def arm_training(self) -> None:
        """Forget earlier stop requests; call when the user asks for a training run (a stop
        pressed while the run still waits in the queue then cancels it before it starts)."""
        self.cancel.clear()

    def request_stop(self) -> None:
        """Ask the running (or queued) training to stop after its current step."""
        self.cancel.set()

    def train(
        self, cfg: Any, *, continue_training: bool = False
    ) -> Generator[Any, None, RoundRecord | None]:
        """Train a round on every annotated image; yields notices and progress, returns the
        round (None if stopped before the first step). See :func:`hitl.train_round`."""
        return (yield from hitl.train_round(self.project, cfg, continue_training=continue_training,
                                            should_stop=self.cancel.is_set))

    def predict(
        self, scope: str = "current", cfg: Any = None, progress=None
    ) -> tuple[list[hitl.Prediction], hitl.Comparison]:
        """Predict the current image (``scope="current"``) or all images with the active model;
        returns the predictions and the comparison of the current image."""
        ids = [r.id for r in self.project.images] if scope == "all" else [self._require_image()]
        predictions = hitl.predict_images(self.project, ids, cfg, cache=self._cached_model,
                                          progress=progress)
        return predictions, self.compare()

    def compare(self) -> hitl.Comparison:
        """Prediction vs input, errors vs annotations/ground truth, changes vs previous round."""
        return hitl.compare(self.project, self._require_image(), self.display())

    def rollback(self, index: int) -> CanvasView:
        """Return to round ``index`` (model + annotations)."""
        with self._lock:
            self.project.rollback(index)
            self._reset_prompts()
            return self.view(f"Rolled back to round {index}")

    def export(
        self, source: str, scope: str, formats: list[str], dest: str | Path
    ) -> hitl.ExportResult:
        """Write annotation or prediction exports; see :func:`hitl.export_files`."""
        ids = [r.id for r in self.project.images] if scope == "all" else [self._require_image()]
        return hitl.export_files(self.project, ids, source, formats, Path(dest))

    def export_model(self, dest: str | Path) -> Path:
        return hitl.export_model(self.project, Path(dest))

    def save_project(self, dest: str | Path) -> Path:
        return self.project.save_zip(dest)

    def load_project(self, source: str | Path | bytes) -> str | None:
        """Replace this session's project by a saved one; returns the new current image id."""
        with self._lock:
            target = Path(tempfile.mkdtemp(prefix="project-", dir=self.directory))
            try:
                project = Project.load_zip(source, target)
            except Exception:
                shutil.rmtree(target, ignore_errors=True)
                raise
            old, self._project = self._project, project
            if old is not None:
                shutil.rmtree(old.directory, ignore_errors=True)
            self._use_project_folder(project.directory)
            self.current = project.images[0].id if project.images else None
            self._reset_prompts()
            # Candidates, the display and the model belong to the old project's images: an
            # auto-mask of another image's size here crashed the next view.
            self.candidates = None
            self._display_key = self._display = None
            self._model_cache = None
            return self.current
