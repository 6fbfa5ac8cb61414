"""A small synthetic image for the session tests: three bright disks on a dark background."""

from __future__ import annotations

import numpy as np

SHAPE = (96, 96)
CENTRES = ((24, 24), (24, 70), (70, 46))
RADIUS = 9


def disk(centre: tuple[int, int], radius: int = RADIUS) -> np.ndarray:
    rows, cols = np.ogrid[: SHAPE[0], : SHAPE[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


def synthetic_image() -> np.ndarray:
    """Three bright disks on a dark, slightly noisy background (uint8)."""
    rng = np.random.default_rng(0)
    image = rng.normal(30, 5, SHAPE)
    for centre in CENTRES:
        image[disk(centre)] = 200
    return np.clip(image, 0, 255).astype(np.uint8)
