"""Results of the prompt engine: masks with their scores, and overlap resolution into labels.

Every mask travels with its own score: the selection by output mode below indexes masks and
scores with the same index (samapi pairs them off by one).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

import numpy as np

from cellsparse_app.data import labels as lbl
from cellsparse_app.sam.config import OUTPUT_MODES

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class MaskResult:
    """Masks answering one prompt.

    Attributes:
        masks: ``bool (M, H, W)``.
        scores: ``float32 (M,)``; ``scores[i]`` is the predicted quality of ``masks[i]``.
        model: backend that produced them (``vit_t``, ``vit_b`` ..., ``fallback``).
        logits: ``float32 (M, 256, 256)`` low-resolution logits (SAM only) to pass back as
            ``mask_input`` for refinement, or None.
    """

    masks: np.ndarray
    scores: np.ndarray
    model: str
    logits: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.masks.ndim != 3 or self.masks.dtype != bool:
            raise ValueError(
                f"masks must be bool (M, H, W), got {self.masks.dtype} {self.masks.shape}")
        if self.scores.shape != (len(self.masks),):
            raise ValueError(f"{len(self.masks)} masks but scores of shape {self.scores.shape}")

    def __len__(self) -> int:
        return len(self.masks)

    @property
    def mask(self) -> np.ndarray:
        """The first (for single-mask modes: the only) mask."""
        if len(self.masks) == 0:
            raise ValueError("the result holds no mask")
        return self.masks[0]

    @property
    def score(self) -> float:
        """Score of :attr:`mask`."""
        return float(self.scores[0])

    @property
    def areas(self) -> np.ndarray:
        """Pixel count of each mask."""
        return self.masks.reshape(len(self.masks), -1).sum(axis=1)

    def to_labels(self, unlabelled: bool = True) -> np.ndarray:
        """The masks as one ``int32`` instance label image (1..M, smaller masks on top).

        Args:
            unlabelled: pixels outside every mask are ``-1`` (unlabelled, the annotation
                convention of :mod:`cellsparse_app.data.labels`); False gives 0 there.
        """
        painted = paint_masks(self.masks, self.scores)
        if unlabelled:
            painted = np.where(painted > 0, painted, lbl.UNLABELLED).astype(lbl.LABEL_DTYPE)
        return painted


def select_masks(
    masks: np.ndarray, scores: np.ndarray, mode: str, logits: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Pick masks by output mode, keeping each score with its own mask.

    Args:
        masks: ``(M, H, W)`` candidates.
        scores: ``(M,)`` their scores.
        mode: ``all`` (every candidate), ``best`` (highest score), ``largest``/``smallest``
            (by area), ``single`` (the backend's single-output mask: the first).
        logits: optional ``(M, ...)`` low-resolution logits, selected alike.

    Raises:
        ValueError: unknown mode or no candidate.
    """
    if mode not in OUTPUT_MODES:
        raise ValueError(f"unknown output mode {mode!r}; use one of {', '.join(OUTPUT_MODES)}")
    if len(masks) == 0:
        raise ValueError("no candidate mask to select from")
    if mode == "all":
        index = np.arange(len(masks))
    elif mode == "single":
        index = np.array([0])
    elif mode == "best":
        index = np.array([int(np.argmax(scores))])
    else:
        areas = masks.reshape(len(masks), -1).sum(axis=1)
        # Ties: the higher score wins (lexsort sorts by the last key first).
        order = np.lexsort((-scores, areas if mode == "smallest" else -areas))
        index = order[:1]
    return masks[index], scores[index], None if logits is None else logits[index]


def paint_masks(
    masks: np.ndarray | Sequence[np.ndarray],
    scores: np.ndarray | None = None,
    *,
    min_area: int = 0,
    min_visible_fraction: float = 0.0,
    return_index: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Resolve overlapping masks into one ``int32`` instance image (0 = no object).

    Larger masks are painted first so a smaller mask lying on a larger one (a cell on a cluster
    or on "the background") stays whole; at equal area the higher score is painted last. A mask
    keeping less than ``min_visible_fraction`` of its area, or fewer than ``min_area`` pixels,
    is dropped (its pixels go to 0). Ids are 1..N in painting order.

    Returns:
        The label image; with ``return_index``, also ``index`` such that label ``i + 1`` comes
        from ``masks[index[i]]``.
    """
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise ValueError(f"masks must be (M, H, W), got shape {masks.shape}")
    out = np.zeros(masks.shape[1:], dtype=lbl.LABEL_DTYPE)
    if len(masks) == 0:
        return (out, np.zeros(0, dtype=np.int64)) if return_index else out
    scores = np.zeros(len(masks)) if scores is None else np.asarray(scores, dtype=np.float64)
    areas = masks.reshape(len(masks), -1).sum(axis=1)
    order = np.lexsort((scores, -areas))  # descending area, then ascending score
    for i, k in enumerate(order, start=1):
        out[masks[k]] = i
    counts = np.bincount(out.ravel(), minlength=len(order) + 1)
    keep = np.zeros(len(order) + 1, dtype=bool)
    for i, k in enumerate(order, start=1):
        visible = counts[i]
        keep[i] = (visible > 0 and visible >= min_area
                   and visible >= min_visible_fraction * max(int(areas[k]), 1))
    out[~keep[out]] = 0
    out = lbl.relabel_sequential(out)
    if return_index:
        return out, order[keep[1:]]
    return out
