"""Patch-centre sampling that guarantees labelled pixels in every training patch.

Sparse annotations may cover a tiny part of an image; random crops would mostly see nothing to
learn from. Every patch is therefore centred on a *labelled* pixel: with probability
``foreground_fraction`` a pixel of a uniformly chosen annotated cell (so each annotated object is
seen equally often, whatever its size), otherwise a uniformly chosen labelled pixel (mostly
annotated background).
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

logger = logging.getLogger(__name__)


class PatchSampler:
    """Draws ``(image index, (row, col))`` patch centres; see the module docstring.

    Args:
        labels: label images (-1/0/1..N); at least one must have a labelled pixel.
        rng: random generator (the caller seeds it).
        foreground_fraction: share of centres taken on annotated cells.

    Raises:
        ValueError: when no image has a labelled pixel.
    """

    def __init__(
        self,
        labels: Sequence[np.ndarray],
        rng: np.random.Generator,
        foreground_fraction: float = 0.5,
    ) -> None:
        self.rng = rng
        self.foreground_fraction = foreground_fraction
        self.shapes = [lab.shape for lab in labels]
        # Flat indices of labelled pixels (int32 where it fits: big images, half the memory).
        self._labelled = [_flat_indices(lab >= 0) for lab in labels]
        counts = np.array([len(ix) for ix in self._labelled], dtype=np.float64)
        if counts.sum() == 0:
            raise ValueError("no labelled pixels: every label pixel is -1 (unlabelled)")
        self._image_weights = counts / counts.sum()
        # Instance pixels sorted by label: pixels of object k of image i are
        # _cell_pixels[i][_cell_starts[i][k]:_cell_starts[i][k + 1]].
        self._cell_pixels, self._cell_starts, cells = [], [], []
        for i, lab in enumerate(labels):
            flat = lab.ravel()
            pixels = _flat_indices(flat > 0)
            order = np.argsort(flat[pixels], kind="stable")
            pixels = pixels[order]
            ids, starts = np.unique(flat[pixels], return_index=True)
            self._cell_pixels.append(pixels)
            self._cell_starts.append(np.append(starts, len(pixels)))
            cells.extend((i, k) for k in range(len(ids)))
        self._cells = np.array(cells, dtype=np.int64).reshape(-1, 2)

    @property
    def n_cells(self) -> int:
        """Number of annotated objects over all images."""
        return len(self._cells)

    def sample(self) -> tuple[int, tuple[int, int]]:
        """One patch centre: ``(image index, (row, col))`` of a labelled pixel."""
        rng = self.rng
        if self.n_cells and rng.random() < self.foreground_fraction:
            image, k = self._cells[rng.integers(len(self._cells))]
            start, stop = self._cell_starts[image][k : k + 2]
            flat = self._cell_pixels[image][rng.integers(start, stop)]
        else:
            image = int(rng.choice(len(self._labelled), p=self._image_weights))
            pixels = self._labelled[image]
            flat = pixels[rng.integers(len(pixels))]
        row, col = divmod(int(flat), self.shapes[image][1])
        return int(image), (row, col)


def _flat_indices(mask: np.ndarray) -> np.ndarray:
    flat = np.flatnonzero(mask)
    return flat.astype(np.int32) if mask.size < 2**31 else flat
