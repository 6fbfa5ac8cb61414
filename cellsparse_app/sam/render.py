"""SAM's RGB ``uint8`` input and the embedding cache key.

The picture itself comes from :func:`cellsparse_app.data.display.to_rgb`, the one image-to-RGB
path, so SAM sees on the REST API and the CLI what the UI shows (and sends to SAM) for the same
image and settings: one channel grey, two green/magenta, three RGB, percentiles 1 and 99.8 by
default. 8-bit RGB pictures (H&E, brightfield photographs, QuPath views) pass through unchanged
(``RenderConfig.keep_rgb8``).
"""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np

from cellsparse_app.data.display import to_rgb
from cellsparse_app.data.images import ImageConfig
from cellsparse_app.sam.config import RenderConfig

logger = logging.getLogger(__name__)


def render_rgb(image: np.ndarray, config: RenderConfig | None = None) -> np.ndarray:
    """``(H, W, 3) uint8`` RGB picture of ``image`` for SAM.

    :func:`~cellsparse_app.data.display.to_rgb` with the channels, percentiles and ``keep_rgb8``
    of ``config`` (default :class:`RenderConfig`).

    Raises:
        ValueError: invalid images (see :func:`cellsparse_app.data.images.validate_image`) or
            channel indices the image does not have.
    """
    cfg = config or RenderConfig()
    view = ImageConfig(channels=cfg.channels, lower=cfg.lower, upper=cfg.upper)
    return to_rgb(image, view, keep_rgb8=cfg.keep_rgb8)


def image_key(image: np.ndarray, config: RenderConfig | None = None, *extra: str) -> str:
    """Content hash of ``image`` + render settings (+ ``extra``, e.g. the model name).

    Keys the embedding cache: the same pixels rendered the same way share one embedding,
    whoever sends them.
    """
    image = np.ascontiguousarray(image)
    digest = hashlib.blake2b(digest_size=20)
    digest.update(f"{image.shape}|{image.dtype.str}|".encode())
    digest.update(json.dumps((config or RenderConfig()).to_dict(), sort_keys=True).encode())
    for item in extra:
        digest.update(f"|{item}".encode())
    digest.update(memoryview(image).cast("B"))
    return digest.hexdigest()
