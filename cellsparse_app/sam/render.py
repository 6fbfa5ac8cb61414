"""Turn a microscopy image into the RGB ``uint8`` picture SAM was trained on.

* 8-bit RGB pictures (H&E, brightfield photographs) pass through unchanged (``keep_rgb8``);
* everything else (8/16-bit or float grey, multichannel fluorescence) is normalised per channel
  between two percentiles (1 and 99.8 by default), clipped and scaled to 0..255;
* one channel becomes grey; two or three chosen channels become red, green (and blue); with
  more channels and no choice, the first three are used.
"""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np

from cellsparse_app.data.images import normalize, select_channels, validate_image
from cellsparse_app.sam.config import RenderConfig

logger = logging.getLogger(__name__)


def render_rgb(image: np.ndarray, config: RenderConfig | None = None) -> np.ndarray:
    """``(H, W, 3) uint8`` RGB picture of ``image`` for SAM.

    Args:
        image: ``(H, W)`` or ``(H, W, C)`` image of any integer or float dtype.
        config: channels and percentiles (default :class:`RenderConfig`).

    Raises:
        ValueError: invalid images (see :func:`cellsparse_app.data.images.validate_image`) or channel
            indices the image does not have.
    """
    cfg = config or RenderConfig()
    image = validate_image(image)
    n_channels = 1 if image.ndim == 2 else image.shape[-1]
    if (cfg.keep_rgb8 and cfg.channels is None and image.dtype == np.uint8
            and n_channels == 3):
        return np.ascontiguousarray(image)
    channels = cfg.channels
    if channels is None and n_channels > 3:
        channels = (0, 1, 2)
        logger.info("image has %d channels; showing channels 0, 1, 2 to SAM", n_channels)
    picked = select_channels(image, channels)
    scaled = normalize(picked, cfg.lower, cfg.upper)
    rgb8 = (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if rgb8.shape[-1] == 1:
        return np.ascontiguousarray(np.repeat(rgb8, 3, axis=-1))
    if rgb8.shape[-1] == 2:
        rgb8 = np.concatenate([rgb8, np.zeros_like(rgb8[..., :1])], axis=-1)
    return np.ascontiguousarray(rgb8)


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
