"""A user's annotation project on disk: images, sparse annotations, training rounds.

One :class:`Project` lives in one directory (the web UI gives every browser session its own)::

    project.json                   images, display/channel settings, rounds, active round
    images/<id>.tif                the image as uploaded (native dtype, channels last)
    truth/<id>.tif                 optional full ground truth (e.g. the bundled example)
    annotations/<id>.tif           current annotation, int32, -1/0/1..N (see labels.py)
    rounds/<nnn>/model/            a trained model (config.json + weights.pt)
    rounds/<nnn>/annotations/      the annotations it was trained on (snapshot)
    rounds/<nnn>/predictions/      its predictions (uint32 instance images)

Every change is written through to disk at once, so a failed or cancelled training run, or a
crashed browser tab, loses nothing. The whole directory round-trips through a zip file
(:meth:`Project.save_zip` / :meth:`Project.load_zip`, extraction checked by ``archive.py``).
"""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import tifffile

from cellsparse_app.data.annotations import LabelEditor
from cellsparse_app.data.images import ImageConfig, validate_image
from cellsparse_app.data.labels import from_dense, validate_labels
from cellsparse_app.storage.archive import ExtractLimits, safe_extract, zip_directory
from cellsparse_app.storage.manifest import (
    ImageRecord,
    Manifest,
    RoundRecord,
    read_manifest,
    write_manifest,
)

logger = logging.getLogger(__name__)

PROJECT_FILE = "project.json"
__all__ = ["ImageRecord", "Project", "RoundRecord"]
_ALLOWED = re.compile(
    r"^(project\.json|(images|truth|annotations)/img\d{3,6}\.tif|"
    r"rounds/\d{3}/(round\.json|annotations/img\d{3,6}\.tif|predictions/img\d{3,6}\.tif|"
    r"model/[A-Za-z0-9_.\-]+))$"
)


class Project:
    """Images, annotations and rounds in one directory; see the module docstring.

    Thread-safe: the UI may read while a training round is being saved.

    Args:
        directory: project directory; created if missing, loaded if it holds a project.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._lock = threading.RLock()
        self._images: dict[str, ImageRecord] = {}
        self._pixels: dict[str, np.ndarray] = {}
        self._editors: dict[str, LabelEditor] = {}
        self._rounds: list[RoundRecord] = []
        self._predictions: dict[tuple[int, str], np.ndarray] = {}
        self.active_round: int | None = None
        self.image_config = ImageConfig()
        self._next_id = 1
        if (self.directory / PROJECT_FILE).is_file():
            self._read_manifest()
        else:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._write_manifest()

    # -- images --------------------------------------------------------------------------------
    @property
    def images(self) -> list[ImageRecord]:
        with self._lock:
            return list(self._images.values())

    def record(self, image_id: str) -> ImageRecord:
        """The :class:`ImageRecord` of ``image_id`` (``ValueError`` naming unknown ids)."""
        try:
            return self._images[image_id]
        except KeyError:
            known = ", ".join(self._images) or "none"
            raise ValueError(f"no image {image_id!r} in this project (images: {known})") from None

    def add_image(self, image: np.ndarray, name: str, *, truth: np.ndarray | None = None) -> str:
        """Add an image (and optionally its full ground truth, 0/1..N); returns its id."""
        image = validate_image(image, name=name)
        if truth is not None:
            truth = from_dense(np.asarray(truth))
            validate_labels(truth, image.shape)
        with self._lock:
            image_id = f"img{self._next_id:03d}"
            self._next_id += 1
            path = self._path("images", image_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(path, image, photometric="minisblack")
            if truth is not None:
                _write_int(self._path("truth", image_id), truth)
            record = ImageRecord(image_id, _clean_name(name), tuple(image.shape), str(image.dtype),
                                 has_truth=truth is not None)
            self._images[image_id] = record
            self._pixels[image_id] = image
            self._editors[image_id] = LabelEditor(image.shape[:2])
            self._save_labels(image_id)
            self._write_manifest()
        logger.info("added image %s (%s, %s %s)", image_id, name, image.shape, image.dtype)
        return image_id

    def remove_image(self, image_id: str) -> None:
        """Forget an image and its annotation (rounds keep their snapshots)."""
        with self._lock:
            self.record(image_id)
            for folder in ("images", "truth", "annotations"):
                self._path(folder, image_id).unlink(missing_ok=True)
            del self._images[image_id]
            self._pixels.pop(image_id, None)
            self._editors.pop(image_id, None)
            self._write_manifest()

    def image(self, image_id: str) -> np.ndarray:
        """The image as uploaded (native dtype, ``(H, W)`` or ``(H, W, C)``)."""
        with self._lock:
            self.record(image_id)
            if image_id not in self._pixels:
                self._pixels[image_id] = tifffile.imread(self._path("images", image_id))
            return self._pixels[image_id]

    def truth(self, image_id: str) -> np.ndarray | None:
        """Full ground truth (0 background, 1..N) if the image came with one."""
        if not self.record(image_id).has_truth:
            return None
        return validate_labels(tifffile.imread(self._path("truth", image_id)))

    def set_image_config(self, config: ImageConfig) -> None:
        """Channels and contrast used for display and training, checked against every image."""
        if config.channels is not None:
            config = config.replace(channels=tuple(int(c) for c in config.channels))
            if not config.channels:
                raise ValueError("choose at least one channel")
            for rec in self.images:
                bad = [c for c in config.channels if not 0 <= c < rec.n_channels]
                if bad:
                    raise ValueError(
                        f"channel(s) {bad} do not exist in {rec.name} ({rec.n_channels} channel(s))"
                    )
        if not 0 <= config.lower < config.upper <= 100:
            raise ValueError(
                f"contrast percentiles must satisfy 0 <= low < high <= 100, got "
                f"{config.lower}, {config.upper}"
            )
        with self._lock:
            self.image_config = config
            self._write_manifest()

    # -- annotations ---------------------------------------------------------------------------
    def editor(self, image_id: str) -> LabelEditor:
        """The :class:`LabelEditor` of an image; call :meth:`edited` after changing it."""
        with self._lock:
            self.record(image_id)
            return self._editors[image_id]

    def labels(self, image_id: str) -> np.ndarray:
        """A copy of the current annotation of ``image_id``."""
        return self.editor(image_id).labels.copy()

    def edited(self, image_id: str) -> None:
        """Write an image's annotation through to disk after an edit."""
        with self._lock:
            self._save_labels(image_id)

    def training_data(
        self, snapshot: dict[str, np.ndarray] | None = None
    ) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
        """``(ids, images, labels)`` of every image with at least one annotated pixel.

        ``snapshot`` (from :meth:`snapshot`): take the labels from it, so that what a round
        trains on and what it saves as its annotations are the same copies.
        """
        with self._lock:
            snapshot = self.snapshot() if snapshot is None else snapshot
            ids = [i for i, labels in snapshot.items() if (labels >= 0).any()]
            return ids, [self.image(i) for i in ids], [snapshot[i] for i in ids]

    def totals(self) -> dict[str, int]:
        """Annotated cells, background pixels and annotated images over the project."""
        n_objects = background = annotated = 0
        for image_id in list(self._images):
            summary = self.editor(image_id).summary()
            n_objects += summary.n_objects
            background += summary.background_px
            annotated += summary.unlabelled_px < summary.total_px
        return {"n_objects": n_objects, "background_px": background, "annotated_images": annotated}

    # -- rounds --------------------------------------------------------------------------------
    @property
    def rounds(self) -> list[RoundRecord]:
        with self._lock:
            return list(self._rounds)

    def round(self, index: int | None = None) -> RoundRecord:
        """Round ``index`` (default: the active one)."""
        index = self.active_round if index is None else index
        for rec in self._rounds:
            if rec.index == index:
                return rec
        if index is None:
            raise RuntimeError("no model trained yet: annotate some cells and train first")
        raise ValueError(f"no round {index} (rounds: {[r.index for r in self._rounds]})")

    def model_dir(self, index: int | None = None) -> Path:
        """Directory of the model of round ``index`` (default: active round)."""
        return self._round_dir(self.round(index).index) / "model"

    def snapshot(self) -> dict[str, np.ndarray]:
        """Copies of every image's current annotation (what a training run starts from)."""
        with self._lock:
            return {image_id: self.labels(image_id) for image_id in self._images}

    def add_round(
        self, model: Any, record: RoundRecord, snapshot: dict[str, np.ndarray] | None = None
    ) -> RoundRecord:
        """Save a trained model (anything with ``save(directory)``) and the annotations it was
        trained on (``snapshot`` from :meth:`snapshot` taken when training started; default:
        the current ones) as round ``record.index``, and make it the active round."""
        with self._lock:
            if any(r.index == record.index for r in self._rounds):
                raise ValueError(f"round {record.index} exists already")
            folder = self._round_dir(record.index)
            model.save(folder / "model")
            for image_id, labels in (snapshot or self.snapshot()).items():
                _write_int(folder / "annotations" / f"{image_id}.tif", labels)
            self._rounds.append(record)
            self.active_round = record.index
            self._write_manifest()
        return record

    def next_round_index(self) -> int:
        return max((r.index for r in self._rounds), default=0) + 1

    def set_prediction(self, image_id: str, labels: np.ndarray, index: int | None = None) -> Path:
        """Store round ``index``'s prediction (instances, 0 background) for an image."""
        rec = self.round(index)
        self.record(image_id)
        labels = np.asarray(labels)
        if labels.shape != self.record(image_id).shape[:2]:
            raise ValueError(f"prediction shape {labels.shape} does not match image {image_id}")
        path = self._round_dir(rec.index) / "predictions" / f"{image_id}.tif"
        _write_int(path, labels.astype(np.uint32))
        self._cache_prediction((rec.index, image_id), labels.astype(np.uint32))
        return path

    def _cache_prediction(self, key: tuple[int, str], labels: np.ndarray) -> None:
        self._predictions[key] = labels
        while len(self._predictions) > 8:  # a few images' worth; the rest stays on disk
            self._predictions.pop(next(iter(self._predictions)))

    def prediction(self, image_id: str, index: int | None = None) -> np.ndarray | None:
        """Round ``index``'s (default: active) prediction for an image, or None."""
        if self.active_round is None and index is None:
            return None
        key = (self.round(index).index, image_id)
        if key not in self._predictions:  # read once; the canvas asks on every click
            path = self._round_dir(key[0]) / "predictions" / f"{image_id}.tif"
            if not path.is_file():
                return None
            self._cache_prediction(key, tifffile.imread(path).astype(np.uint32))
        return self._predictions[key]

    def previous_prediction(self, image_id: str) -> tuple[int, np.ndarray] | None:
        """The newest prediction of this image from a round before the active one."""
        if self.active_round is None:
            return None
        for rec in sorted(self._rounds, key=lambda r: -r.index):
            if rec.index < self.active_round:
                labels = self.prediction(image_id, rec.index)
                if labels is not None:
                    return rec.index, labels
        return None

    def set_metrics(
        self, image_id: str, kind: str, metrics: dict, index: int | None = None
    ) -> None:
        """Record metrics of round ``index`` on an image (``kind``: annotations or truth)."""
        with self._lock:
            rec = self.round(index)
            rec.metrics.setdefault(image_id, {})[kind] = metrics
            self._write_manifest()

    def rollback(self, index: int) -> None:
        """Make round ``index`` active and restore the annotations it was trained on (undoable;
        later rounds are kept so you can go forward again)."""
        with self._lock:
            rec = self.round(index)
            folder = self._round_dir(rec.index) / "annotations"
            for image_id, editor in self._editors.items():
                snapshot = folder / f"{image_id}.tif"
                if snapshot.is_file():
                    editor.replace(validate_labels(tifffile.imread(snapshot)))
                    self._save_labels(image_id)
            self.active_round = rec.index
            self._write_manifest()

    # -- persistence ---------------------------------------------------------------------------
    def save_zip(self, dest: str | Path) -> Path:
        """Write the whole project (images, annotations, rounds with models) to a zip file."""
        with self._lock:
            self._write_manifest()
            return Path(zip_directory(self.directory, dest))

    @classmethod
    def load_zip(
        cls,
        source: str | Path | bytes,
        directory: str | Path,
        limits: ExtractLimits = ExtractLimits(),
    ) -> "Project":
        """Open a project zip (from :meth:`save_zip`) into an empty ``directory``.

        Raises:
            ValueError: for archives that are not projects, are unsafe or inconsistent.
        """
        directory = Path(directory)
        if directory.exists() and any(directory.iterdir()):
            raise ValueError(f"{directory} is not empty; load a project into a fresh folder")
        safe_extract(source, directory, allowed=_allowed_member, limits=limits)
        if not (directory / PROJECT_FILE).is_file():
            raise ValueError(f"the archive has no {PROJECT_FILE}: it is not a cellsparse project")
        return cls(directory)

    def _read_manifest(self) -> None:
        manifest = read_manifest(self.directory / PROJECT_FILE)
        self.image_config = manifest.image_config
        self._images = {rec.id: rec for rec in manifest.images}
        self._rounds = manifest.rounds
        self.active_round, self._next_id = manifest.active_round, manifest.next_id
        for image_id, rec in self._images.items():
            path = self._path("annotations", image_id)
            if not self._path("images", image_id).is_file() or not path.is_file():
                raise ValueError(f"project is missing the files of image {image_id} ({rec.name})")
            labels = validate_labels(tifffile.imread(path), rec.shape)
            self._editors[image_id] = LabelEditor(labels)
        if self.active_round is not None:
            self.round(self.active_round)

    def _write_manifest(self) -> None:
        write_manifest(self.directory / PROJECT_FILE, Manifest(
            self.image_config, list(self._images.values()), self._rounds, self.active_round,
            self._next_id))

    def _save_labels(self, image_id: str) -> None:
        _write_int(self._path("annotations", image_id), self._editors[image_id].labels)

    def _path(self, folder: str, image_id: str) -> Path:
        return self.directory / folder / f"{image_id}.tif"

    def _round_dir(self, index: int) -> Path:
        return self.directory / "rounds" / f"{index:03d}"


def _write_int(path: Path, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, np.ascontiguousarray(labels), compression="zlib")


def _allowed_member(path: PurePosixPath) -> bool:
    return bool(_ALLOWED.match(path.as_posix()))


def _clean_name(name: str) -> str:
    """A file-name-safe version of an image name (used in exports)."""
    stem = Path(str(name)).name
    stem = re.sub(r"\.(tiff?|png|jpe?g)$", "", stem, flags=re.IGNORECASE)
    stem = re.sub(r"[^A-Za-z0-9_.\-]+", "_", stem).strip("._")
    return stem[:80] or "image"
