"""The one way an image becomes an RGB ``uint8`` picture: what people see and what SAM sees.

The UI's canvas (:func:`cellsparse_app.session.overlays.to_display`) and SAM's input on every path
(UI, REST API, CLI: :func:`cellsparse_app.sam.render.render_rgb`) call :func:`to_rgb`, so the
same image with the same :class:`~cellsparse_app.data.images.ImageConfig` gives the same picture
whoever asks. Rules:

* each shown channel is stretched between the ``lower`` and ``upper`` percentiles, clipped and
  scaled to 0..255 (rounded);
* one channel is grey, two are green (first) and magenta (second), three are red, green, blue;
  with ``channels=None`` a 1- or 3-channel image shows all, other counts their first three;
* with a ``stain`` the network's input is shown (haematoxylin channel, or inverted: objects
  bright), so people, SAM and the network see the same thing;
* ``keep_rgb8``: an 8-bit RGB picture with no channel or stain choice is returned unchanged.

Green/magenta rather than red/green: the pair stays distinct for colour-blind people.
"""

from __future__ import annotations

import logging

import numpy as np

from cellsparse_app.data.images import ImageConfig, normalize, select_channels, validate_image

logger = logging.getLogger(__name__)


def to_rgb(
    image: np.ndarray, config: ImageConfig | None = None, *, keep_rgb8: bool = False
) -> np.ndarray:
    """``(H, W, 3) uint8`` RGB picture of ``image`` (see the module's rules).

    Args:
        image: ``(H, W)`` or ``(H, W, C)`` image of any integer or float dtype.
        config: channels, contrast percentiles and stain (default :class:`ImageConfig`).
        keep_rgb8: return an 8-bit RGB image as it is when ``config`` chooses no channels and no
            stain (pictures already made for viewing: H&E photographs, a QuPath view sent to
            the API). Off for the UI, whose contrast settings must apply to every image.

    Raises:
        ValueError: invalid images (see :func:`~cellsparse_app.data.images.validate_image`) or
            channel indices the image does not have.
    """
    cfg = config or ImageConfig()
    image = validate_image(image)
    n_channels = 1 if image.ndim == 2 else image.shape[-1]
    if cfg.stain is not None:
        x = np.moveaxis(cfg.prepare(image), 0, -1)[..., :3]
    else:
        channels = cfg.channels
        if channels is None:
            if keep_rgb8 and image.dtype == np.uint8 and n_channels == 3:
                return np.ascontiguousarray(image)
            if n_channels > 3:
                channels = (0, 1, 2)
                logger.info("image has %d channels; showing channels 0, 1, 2", n_channels)
        x = normalize(select_channels(image, channels), cfg.lower, cfg.upper)
    return _colour(np.clip(x, 0.0, 1.0))


def _colour(x: np.ndarray) -> np.ndarray:
    """``(H, W, n)`` in 0..1 -> ``uint8 (H, W, 3)``: grey, green/magenta or RGB by ``n``."""
    n = x.shape[-1]
    if n == 1:
        rgb = np.repeat(x, 3, axis=-1)
    elif n == 2:
        rgb = np.stack([x[..., 1], x[..., 0], x[..., 1]], axis=-1)  # ch0 green, ch1 magenta
    else:
        rgb = x[..., :3]
    return np.ascontiguousarray((rgb * 255.0 + 0.5).astype(np.uint8))
