"""Flag masks that are unlikely to be one cell before they become Foreground.

A SAM click sometimes returns a clump of cells, a cell plus its surroundings, or the whole
background. Accepting such a mask teaches the model wrong cell sizes. The rule
(:func:`implausible_mask_reason`) flags a mask that is far larger than the cells annotated so far,
or that covers a large share of the image. :class:`AcceptGuard` refuses a flagged mask the first
time it is accepted and takes it on a second press, so the user stays in charge.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

logger = logging.getLogger(__name__)

#: A mask larger than this many times the median annotated cell is flagged ...
MAX_AREA_RATIO: float = 4.0
#: ... once at least this many cells are annotated (fewer give no reliable median).
MIN_CELLS_FOR_RATIO: int = 3
#: A mask covering more than this share of the image is flagged whatever the other cells are.
MAX_IMAGE_FRACTION: float = 0.10


def implausible_mask_reason(
    area: int,
    other_areas: Sequence[int],
    image_px: int,
    *,
    max_ratio: float = MAX_AREA_RATIO,
    min_cells: int = MIN_CELLS_FOR_RATIO,
    max_image_fraction: float = MAX_IMAGE_FRACTION,
) -> str | None:
    """Why a mask of ``area`` px is probably not one cell, or None when it looks fine.

    The mask is flagged when it covers more than ``max_image_fraction`` of the ``image_px``
    pixels. It is also flagged when at least ``min_cells`` cells are annotated (``other_areas``,
    in px, over the whole project) and it is more than ``max_ratio`` times their median area.
    """
    if image_px <= 0:
        raise ValueError(f"image_px must be positive, got {image_px}")
    if area > max_image_fraction * image_px:
        return (f"this mask covers {100 * area / image_px:.0f}% of the image (more than "
                f"{100 * max_image_fraction:.0f}%): probably background or many cells, not one "
                "cell")
    if len(other_areas) >= min_cells:
        median = float(np.median(np.asarray(other_areas, dtype=np.float64)))
        if median > 0 and area > max_ratio * median:
            return (f"this mask has {area} px, {area / median:.1f}x the median of your "
                    f"{len(other_areas)} annotated cells ({median:.0f} px): probably several "
                    "cells or a cell with its surroundings")
    return None


class AcceptGuard:
    """Refuses an implausible mask once; pressing Accept again with the same mask accepts it.

    One per user session. A mask is recognised by its image and its pixels, so a refined mask
    (another click) is checked again.
    """

    def __init__(self) -> None:
        self._refused: tuple | None = None

    def check(self, key: str, mask: np.ndarray, other_areas: Sequence[int]) -> None:
        """Let ``mask`` (on image ``key``) through, or refuse it once.

        Raises:
            ValueError: the first time an implausible mask is accepted, saying why and that a
                second press adds it anyway.
        """
        mask = np.asarray(mask, dtype=bool)
        reason = implausible_mask_reason(int(np.count_nonzero(mask)), other_areas, mask.size)
        if reason is None:
            return
        fingerprint = (key, mask.shape, hash(np.packbits(mask).tobytes()))
        if self._refused == fingerprint:
            self._refused = None
            logger.info("implausible mask accepted on the second press: %s", reason)
            return
        self._refused = fingerprint
        raise ValueError(f"Not added: {reason}. Refine it (a box, or an exclude point), or press "
                         "Accept as Foreground again to add it anyway.")
