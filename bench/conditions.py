"""The experimental conditions of the sparse-annotation benchmark (pure numpy, no training).

Sugawara 2023's experiment on dense ground truth (0 background, 1..N cells):

* ``k`` objects per training image are kept as annotated instances: ``1``, ``4``, ``16``, a
  percentage of the image's objects (``5%``: ``max(1, round(0.05 N))``) or all (``100%``). When an
  image has fewer objects than ``k``, all are kept.
* Which objects: a random permutation of the image's objects per (seed, image), and the first
  ``k`` of it. So objects are random per seed, nested across ``k`` for one seed (the 4 objects
  contain the 1), and identical across annotation modes (paired comparisons).
* Annotation modes:

  - ``bg``: sparse + background. The selected objects, plus **all background pixels of the dense
    ground truth** annotated as background; every other object is unlabelled (-1). This is the
    generous end of background annotation: in the app a user paints some background regions.
  - ``band``: sparse + a :data:`BAND_PX`-px background ring around each selected object (true
    background only), the way a person annotates a few cells and the background next to them.
  - ``nobg``: sparse, no background: only the selected objects are labelled, everything else -1.
  - ``naive``: naive partial training, what stock Cellpose does with partial masks: the selected
    objects, and every other pixel *counted as background* (0), unannotated cells included.

``100%`` with ``bg`` is dense training; ``naive`` at ``100%`` is the same labels and is dropped.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from cellsparse_app.data.labels import select_sparse

MODES: dict[str, str] = {
    "bg": "sparse + background",
    "band": "sparse + background band",
    "nobg": "sparse, no background",
    "naive": "naive partial (unlabelled = background)",
}
DEFAULT_KS: tuple[str, ...] = ("1", "4", "16", "5%", "100%")
#: Width of the ``band`` mode's background ring (pixels).
BAND_PX = 6


@dataclasses.dataclass(frozen=True)
class Condition:
    """One training condition: ``k`` objects per image (count or percentage) and a mode."""

    k: str
    mode: str

    def __post_init__(self) -> None:
        parse_k(self.k)
        if self.mode not in MODES:
            raise ValueError(f"unknown annotation mode {self.mode!r}; use one of {list(MODES)}")

    @property
    def name(self) -> str:
        if self.k == "100%" and self.mode == "bg":
            return "dense (100% + background)"
        return f"k={self.k}, {MODES[self.mode]}"


def parse_k(k: str) -> tuple[int | None, float | None]:
    """``"4"`` -> ``(4, None)``; ``"5%"`` -> ``(None, 0.05)``. Raises ``ValueError`` otherwise."""
    text = str(k).strip()
    try:
        if text.endswith("%"):
            frac = float(text[:-1]) / 100
            if not 0 < frac <= 1:
                raise ValueError
            return None, frac
        count = int(text)
        if count < 1:
            raise ValueError
        return count, None
    except ValueError:
        raise ValueError(
            f"k must be a positive count or a percentage in (0, 100]%, got {k!r}"
        ) from None


def objects_to_keep(n_objects: int, k: str) -> int:
    """How many of an image's ``n_objects`` condition ``k`` annotates."""
    count, frac = parse_k(k)
    if frac is not None:
        wanted = max(1, int(round(frac * n_objects)))
    else:
        wanted = count
    return min(int(wanted), n_objects)


def object_order(dense: np.ndarray, seed: int, image_index: int) -> np.ndarray:
    """The image's object ids in the random order used to pick objects (fixed per seed, image)."""
    ids = np.unique(dense)
    ids = ids[ids > 0]
    rng = np.random.default_rng([int(seed), int(image_index)])
    return rng.permutation(ids)


def select_objects(dense: np.ndarray, k: str, seed: int, image_index: int) -> np.ndarray:
    """Ids of the objects condition ``k`` annotates in this image for this seed."""
    order = object_order(dense, seed, image_index)
    return order[: objects_to_keep(len(order), k)]


def build_labels(dense: np.ndarray, ids: Sequence[int], mode: str) -> np.ndarray:
    """Training labels (-1/0/1..n) for ``mode`` from dense ground truth and the kept ``ids``."""
    if mode == "bg":
        return select_sparse(dense, ids, background=True)
    sparse = select_sparse(dense, ids, background=False)
    if mode == "band":
        from scipy import ndimage as ndi

        ring = (ndi.distance_transform_edt(sparse <= 0) <= BAND_PX) & (dense == 0)
        return np.where(ring, 0, sparse).astype(sparse.dtype)
    if mode == "nobg":
        return sparse
    if mode == "naive":
        return np.where(sparse < 0, 0, sparse).astype(sparse.dtype)
    raise ValueError(f"unknown annotation mode {mode!r}; use one of {list(MODES)}")


def training_labels(masks: Sequence[np.ndarray], cond: Condition, seed: int) -> list[np.ndarray]:
    """Labels of every training image for one condition and seed."""
    return [
        build_labels(m, select_objects(m, cond.k, seed, i), cond.mode) for i, m in enumerate(masks)
    ]


def build_grid(
    ks: Sequence[str] = DEFAULT_KS, modes: Sequence[str] = tuple(MODES)
) -> list[Condition]:
    """All (k, mode) conditions, dense first, without the duplicate ``naive`` at 100%."""
    grid = [Condition(k, m) for k in ks for m in modes
            if not (k == "100%" and m in ("naive", "band"))]
    return sorted(grid, key=lambda c: (c.name != "dense (100% + background)",))


def split_samples(samples: Sequence, n_train: int, n_test: int, split_seed: int = 0):
    """A fixed train / held-out test split (independent of the condition seeds).

    With two images or fewer, the first trains and the rest test. Otherwise a permutation by
    ``split_seed`` gives ``n_train`` training images and up to ``n_test`` disjoint test images;
    images without objects are skipped.
    """
    usable = [s for s in samples if int(np.max(s.mask)) > 0]
    if len(usable) < 2:
        raise ValueError(f"need at least 2 annotated images, got {len(usable)}")
    if len(usable) <= 2:
        return usable[:1], usable[1:]
    order = np.random.default_rng(split_seed).permutation(len(usable))
    n_train = max(1, min(n_train, len(usable) - 1))
    train = [usable[i] for i in order[:n_train]]
    test = [usable[i] for i in order[n_train:n_train + max(1, n_test)]]
    return train, test
