"""Editing one image's sparse annotation, with undo.

A :class:`LabelEditor` owns one label image in the -1/0/1..N convention of
:mod:`cellsparse_app.data.labels` and offers the operations an annotator needs: add a Foreground
cell, mark Background, unlabel an area, delete an object, accept predicted objects. Every change can
be undone. The undo stack stores only the bounding box of what changed, so hundreds of clicks on a
large image cost little memory.

Rules that keep annotations sane:

* a new cell never steals pixels from a cell that is already annotated (accept the most certain
  cells first, then the touching ones);
* Background never overwrites cells;
* instance ids stay consecutive (1..N) after deletions, so a list shown to the user matches the
  image.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Iterable, Sequence

import numpy as np

from cellsparse_app.data.labels import (
    BACKGROUND,
    LABEL_DTYPE,
    UNLABELLED,
    empty_labels,
    instance_ids,
    relabel_sequential,
    validate_labels,
)
from cellsparse_app.data.margins import background_ring, object_rings

logger = logging.getLogger(__name__)

#: Undo steps kept per image (oldest dropped first).
MAX_UNDO_STEPS: int = 100
#: Bytes of undo patches kept per image (oldest dropped first).
MAX_UNDO_BYTES: int = 64 * 1024 * 1024
#: A new cell must keep at least this many pixels after overlaps are removed.
MIN_OBJECT_PIXELS: int = 4


@dataclasses.dataclass(frozen=True)
class AnnotationSummary:
    """Counts shown to the user.

    Attributes:
        n_objects: annotated Foreground cells.
        background_px: pixels annotated as Background.
        unlabelled_px: pixels nobody annotated (ignored in training).
        total_px: pixels in the image.
    """

    n_objects: int
    background_px: int
    unlabelled_px: int
    total_px: int

    @property
    def background_fraction(self) -> float:
        return self.background_px / self.total_px if self.total_px else 0.0

    @property
    def labelled_fraction(self) -> float:
        return 1.0 - self.unlabelled_px / self.total_px if self.total_px else 0.0


@dataclasses.dataclass(frozen=True)
class _Patch:
    """Old values of the rectangle that an edit changed."""

    r0: int
    c0: int
    old: np.ndarray


class LabelEditor:
    """One image's label array plus an undo stack; see the module docstring.

    Args:
        shape_or_labels: ``(H, W)`` for an empty (all unlabelled) annotation, or an existing
            label image to edit (copied).
    """

    def __init__(self, shape_or_labels: tuple[int, ...] | np.ndarray) -> None:
        if isinstance(shape_or_labels, np.ndarray):
            self._labels = relabel_sequential(validate_labels(shape_or_labels)).copy()
        else:
            self._labels = empty_labels(tuple(shape_or_labels))
        self._undo: list[_Patch] = []
        self._cache: dict[str, tuple[int, object]] = {}
        self.version = 0  # bumped on every change; lets callers cache renderings

    # -- reading -------------------------------------------------------------------------------
    @property
    def labels(self) -> np.ndarray:
        """The current label image (read-only view; copy before changing it)."""
        view = self._labels.view()
        view.flags.writeable = False
        return view

    @property
    def shape(self) -> tuple[int, int]:
        return self._labels.shape  # type: ignore[return-value]

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    def summary(self) -> AnnotationSummary:
        """Counts of cells, background and unlabelled pixels (cached until the next edit)."""
        cached = self._cache.get("summary")
        if cached is not None and cached[0] == self.version:
            return cached[1]
        lab = self._labels
        summary = AnnotationSummary(
            n_objects=int(lab.max(initial=0)),  # ids are kept consecutive (1..N)
            background_px=int(np.count_nonzero(lab == BACKGROUND)),
            unlabelled_px=int(np.count_nonzero(lab == UNLABELLED)),
            total_px=int(lab.size),
        )
        self._cache["summary"] = (self.version, summary)
        return summary

    def objects(self) -> list[dict[str, int]]:
        """One row per cell: ``id``, ``area`` (px) and centroid ``row``/``col`` (rounded)."""
        cached = self._cache.get("objects")
        if cached is not None and cached[0] == self.version:
            return list(cached[1])
        rows = self._measure()
        self._cache["objects"] = (self.version, rows)
        return list(rows)

    def _measure(self) -> list[dict[str, int]]:
        lab = self._labels
        n = int(lab.max(initial=0))
        if n < 1:
            return []
        flat = np.where(lab > 0, lab, 0).ravel()
        rows, cols = np.indices(lab.shape)
        area = np.bincount(flat, minlength=n + 1)
        r = np.bincount(flat, weights=rows.ravel(), minlength=n + 1)
        c = np.bincount(flat, weights=cols.ravel(), minlength=n + 1)
        return [
            {"id": i, "area": int(area[i]), "row": int(round(r[i] / area[i])),
             "col": int(round(c[i] / area[i]))}
            for i in range(1, n + 1) if area[i]
        ]

    def object_at(self, row: int, col: int) -> int:
        """Label at ``(row, col)``: -1, 0 or an instance id.

        Raises:
            ValueError: for a point outside the image.
        """
        self._check_point(row, col)
        return int(self._labels[row, col])

    # -- editing -------------------------------------------------------------------------------
    def add_foreground(
        self, mask: np.ndarray, *, margin: int = 0, others: Sequence[np.ndarray] = ()
    ) -> int:
        """Add ``mask`` as a new cell (pixels of existing cells are kept); returns its id.

        Args:
            mask: boolean ``(H, W)`` mask of the cell.
            margin: also mark a ring this many px wide just outside the cell as Background,
                over unlabelled pixels only (:func:`~cellsparse_app.data.margins.background_ring`);
                cell and ring are one undo step. 0: no ring.
            others: instance images (SAM candidates, the model's prediction) whose other cells
                the ring leaves unlabelled.

        Raises:
            ValueError: if the mask has the wrong shape or lies (almost) entirely on cells that
                are already annotated.
        """
        mask = self._check_mask(mask, "foreground mask")
        free = mask & (self._labels <= BACKGROUND)
        n_free = int(np.count_nonzero(free))
        if n_free < MIN_OBJECT_PIXELS:
            raise ValueError(
                f"this mask has {n_free} pixel(s) not already in an annotated cell (need at least "
                f"{MIN_OBJECT_PIXELS}); delete the overlapping cell first or pick another object"
            )
        new = self._labels.copy()
        new_id = int(new.max(initial=0)) + 1
        new[free] = new_id
        new[background_ring(mask, margin, new, others)] = BACKGROUND
        self._commit(new)
        return new_id

    def add_background(self, mask: np.ndarray) -> int:
        """Mark ``mask`` as Background, except where cells are; returns the pixels changed."""
        mask = self._check_mask(mask, "background mask")
        change = mask & (self._labels == UNLABELLED)
        if not change.any():
            return 0
        new = self._labels.copy()
        new[change] = BACKGROUND
        self._commit(new)
        return int(np.count_nonzero(change))

    def unlabel(self, mask: np.ndarray) -> int:
        """Return ``mask`` to unlabelled (cells partly erased keep their id); pixels changed."""
        mask = self._check_mask(mask, "erase mask")
        change = mask & (self._labels != UNLABELLED)
        if not change.any():
            return 0
        new = self._labels.copy()
        new[change] = UNLABELLED
        self._commit(relabel_sequential(new))
        return int(np.count_nonzero(change))

    def delete_objects(self, ids: Iterable[int]) -> int:
        """Turn the cells ``ids`` back into unlabelled pixels; returns how many were deleted.

        Raises:
            ValueError: naming ids that are not annotated cells.
        """
        ids = sorted({int(i) for i in ids})
        present = set(instance_ids(self._labels).tolist())
        missing = [i for i in ids if i not in present]
        if missing:
            raise ValueError(f"no annotated cell with id {missing} (cells are 1..{len(present)})")
        if not ids:
            return 0
        new = self._labels.copy()
        new[np.isin(new, ids)] = UNLABELLED
        self._commit(relabel_sequential(new))
        return len(ids)

    def accept_objects(
        self,
        instances: np.ndarray,
        ids: Sequence[int] | None = None,
        *,
        margin: int = 0,
        others: Sequence[np.ndarray] = (),
    ) -> list[int]:
        """Add objects of an instance image (e.g. a prediction, 0 = none) as new cells.

        Args:
            instances: ``(H, W)`` integer image, 0 background, ``1..M`` objects.
            ids: which objects to accept (None: all). Objects that would keep fewer than
                ``MIN_OBJECT_PIXELS`` free pixels (already annotated) are skipped.
            margin, others: as in :meth:`add_foreground`. The rings are drawn after all the
                objects are added, and never cover the other objects of ``instances``; all of
                it is one undo step.

        Returns:
            The new cell ids, one per accepted object.
        """
        instances = np.asarray(instances)
        if instances.shape != self.shape or not np.issubdtype(instances.dtype, np.integer):
            raise ValueError(
                f"objects must be an integer image of shape {self.shape}, got dtype "
                f"{instances.dtype} shape {instances.shape}"
            )
        wanted = np.unique(instances[instances > 0]) if ids is None else np.unique(list(ids))
        new = self._labels.copy()
        next_id = int(new.max(initial=0)) + 1
        added: list[int] = []
        accepted = []
        for obj in wanted:
            free = (instances == obj) & (new <= BACKGROUND)
            if obj <= 0 or np.count_nonzero(free) < MIN_OBJECT_PIXELS:
                continue
            new[free] = next_id
            added.append(next_id)
            accepted.append(obj)
            next_id += 1
        new[object_rings(instances, accepted, margin, new, others)] = BACKGROUND
        if added:
            self._commit(new)
        return added

    def replace(self, labels: np.ndarray) -> None:
        """Replace the whole annotation (undoable), e.g. to restore a round's snapshot."""
        labels = relabel_sequential(validate_labels(labels, self.shape))
        self._commit(labels.astype(LABEL_DTYPE, copy=True))

    def clear(self) -> None:
        """Everything back to unlabelled (undoable)."""
        self._commit(empty_labels(self.shape))

    def undo(self) -> bool:
        """Revert the last change; False when there is nothing to undo."""
        if not self._undo:
            return False
        patch = self._undo.pop()
        h, w = patch.old.shape
        self._labels[patch.r0 : patch.r0 + h, patch.c0 : patch.c0 + w] = patch.old
        self.version += 1
        return True

    # -- internals -----------------------------------------------------------------------------
    def _commit(self, new: np.ndarray) -> None:
        changed = new != self._labels
        if not changed.any():
            return
        rows = np.flatnonzero(changed.any(axis=1))
        cols = np.flatnonzero(changed.any(axis=0))
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        self._undo.append(_Patch(r0, c0, self._labels[r0:r1, c0:c1].copy()))
        self._trim_undo()
        self._labels = new
        self.version += 1

    def _trim_undo(self) -> None:
        total = sum(p.old.nbytes for p in self._undo)
        while self._undo and (len(self._undo) > MAX_UNDO_STEPS or total > MAX_UNDO_BYTES):
            total -= self._undo.pop(0).old.nbytes

    def _check_mask(self, mask: np.ndarray, what: str) -> np.ndarray:
        mask = np.asarray(mask)
        if mask.shape != self.shape:
            raise ValueError(f"{what} has shape {mask.shape}, expected {self.shape}")
        return mask.astype(bool, copy=False)

    def _check_point(self, row: int, col: int) -> None:
        h, w = self.shape
        if not (0 <= row < h and 0 <= col < w):
            raise ValueError(f"point (row={row}, col={col}) is outside the {h}x{w} image")
