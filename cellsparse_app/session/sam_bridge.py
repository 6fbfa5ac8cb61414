"""The workspace's bridge to the SAM prompt engine (:mod:`cellsparse_app.sam`).

The workspace speaks ``(row, col)`` points and ``(row0, col0, row1, col1)`` boxes and wants one
boolean mask per prompt; the engine's ``SamAnnotator`` does the rest (embedding cache, backends,
the offline fallback).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

logger = logging.getLogger(__name__)

POSITIVE, NEGATIVE, BOX, BACKGROUND_BOX, SELECT = "positive", "negative", "box", "bg_box", "select"
#: Without SAM: a vertex of a hand outline; delete the cell / Background region under the click;
#: centre the zoomed view on the click.
OUTLINE, ERASE, CENTRE = "outline", "erase", "centre"
CLICK_MODES = (POSITIVE, NEGATIVE, BOX, BACKGROUND_BOX, SELECT, OUTLINE, ERASE, CENTRE)


@dataclasses.dataclass
class Prompts:
    """SAM prompts (or a hand outline) on the current image and the mask they produced."""

    points: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    labels: list[int] = dataclasses.field(default_factory=list)
    box_start: tuple[int, int] | None = None
    box: tuple[int, int, int, int] | None = None
    outline: list[tuple[float, float]] = dataclasses.field(default_factory=list)
    preview: np.ndarray | None = None
    score: float | None = None


def create_annotator(model_type: str, *, weights_dir: str | Path | None = None) -> Any:
    """The shared ``SamAnnotator`` for ``model_type`` (environment overrides applied; falls
    back to the offline method when the weights are unavailable). ``weights_dir``: the weights
    cache (None: the default one, see :func:`cellsparse_app.sam.default_cache_dir`)."""
    from cellsparse_app.sam import SamAnnotator, SamConfig, WeightsManager

    weights = WeightsManager(weights_dir) if weights_dir is not None else None
    return SamAnnotator(SamConfig.from_env(SamConfig(model_type=model_type)), weights=weights)


def describe_annotator(annotator: Any) -> tuple[str, str | None]:
    """``(headline, notice)``: which backend answers clicks, and for the offline fallback why
    SAM is not used and how to get it (None when SAM answers)."""
    headline = str(annotator.engine.describe())
    if annotator.is_fallback and "fallback" not in headline.lower():
        headline = f"offline fallback, not SAM ({headline})"
    return headline, annotator.notice


def prepare(annotator: Any, rgb: np.ndarray) -> str:
    """Compute (and cache) the embedding of ``rgb``; returns the backend name."""
    annotator.set_image(rgb)
    return str(annotator.model_name)


def segment(
    annotator: Any,
    rgb: np.ndarray,
    points: Sequence[tuple[int, int]],
    labels: Sequence[int],
    box: tuple[int, int, int, int] | None,
) -> tuple[np.ndarray, float | None, str]:
    """The best mask for points (1 positive / 0 negative) and/or a box.

    Returns:
        ``(mask, score, backend)``; an empty mask when the engine found nothing.
    """
    points_rc = np.asarray(points, dtype=np.float32).reshape(-1, 2) if points else None
    point_labels = np.asarray(labels, dtype=np.int32) if points else None
    if box is not None:
        r0, c0, r1, c1 = box
        box_rc = (min(r0, r1), min(c0, c1), max(r0, r1), max(c0, c1))
        result = annotator.segment_from_box(rgb, box_rc, points_rc=points_rc,
                                            labels=point_labels, mode="best")
    else:
        result = annotator.segment_from_points(rgb, points_rc, point_labels, mode="best")
    if len(result.masks) == 0:
        return np.zeros(rgb.shape[:2], dtype=bool), None, result.model
    return result.masks[0], float(result.scores[0]), result.model


def auto_masks(annotator: Any, rgb: np.ndarray) -> np.ndarray:
    """Automatic mask generation as an instance image (0 none, 1..K candidates)."""
    from cellsparse_app.sam import AutoMaskConfig

    labels = annotator.generate_masks(rgb, AutoMaskConfig())
    return np.where(np.asarray(labels) > 0, labels, 0).astype(np.int32)
