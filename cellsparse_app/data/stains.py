"""Stained and brightfield images: colour deconvolution, inversion and a detector suggesting them.

The networks learn fastest when objects are bright on a dark background, as in fluorescence. In
brightfield the background is bright and the objects dark; in H&E the nuclei are the
haematoxylin-stained (blue/purple) parts. :class:`cellsparse_app.data.images.ImageConfig` ``stain``
turns such images into that form:

* ``"invert"``: after normalisation, ``1 - x`` (bright background -> 0);
* ``"hematoxylin"``: the haematoxylin optical density from colour deconvolution
  (Ruifrok & Johnston 2001, ``skimage.color.rgb2hed``), one channel; it works on grey RGB
  brightfield as well (optical density of the grey).

:func:`suggest_stain` looks at images and says which one fits, with a reason to show the user.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from typing import Sequence

import numpy as np

logger = logging.getLogger(__name__)

#: Input options of :class:`cellsparse_app.data.images.ImageConfig` ``stain`` (``None``: as the
#: image is).
STAINS: tuple[str, ...] = ("invert", "hematoxylin")
#: Normalised median brightness above which the background is taken as bright (brightfield).
BRIGHT_BACKGROUND = 0.55
#: Colourfulness (90th percentile of max - min channel, as a fraction of the intensity range)
#: above which an RGB image counts as stained in colour.
COLOUR = 0.08


@dataclasses.dataclass(frozen=True)
class StainSuggestion:
    """What :func:`suggest_stain` proposes.

    Attributes:
        stain: ``None`` (use the image as it is), ``"invert"`` or ``"hematoxylin"``.
        reason: one sentence for the user, naming what was measured.
    """

    stain: str | None
    reason: str


def check_stain(stain: str | None) -> None:
    """``ValueError`` naming an unknown stain option."""
    if stain is not None and stain not in STAINS:
        raise ValueError(f"stain must be None or one of {', '.join(STAINS)}, got {stain!r}")


def hematoxylin(image: np.ndarray) -> np.ndarray:
    """Haematoxylin optical density ``float32 (H, W)`` of an RGB image ``(H, W, 3)``.

    Raises:
        ValueError: the image does not have 3 channels.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(
            f"hematoxylin deconvolution needs an RGB image (H, W, 3), got shape {image.shape}"
        )
    from skimage.color import rgb2hed

    if np.issubdtype(image.dtype, np.floating) and image.max(initial=0) > 1:
        image = image / max(float(image.max()), 1e-8)
    return rgb2hed(image)[..., 0].astype(np.float32)


def _brightness(image: np.ndarray) -> tuple[float, float]:
    """(normalised median brightness, colourfulness) of an image (see the module constants)."""
    x = np.asarray(image, np.float32)
    step = max(1, int(np.sqrt(x.shape[0] * x.shape[1] / 250_000)))
    x = x[::step, ::step]
    grey = x.mean(axis=-1) if x.ndim == 3 else x
    lo, mid, hi = np.percentile(grey, [1, 50, 99.8])
    span = float(hi - lo) if hi > lo else 1.0
    colour = 0.0
    if x.ndim == 3 and x.shape[-1] == 3:
        colour = float(np.percentile(x.max(axis=-1) - x.min(axis=-1), 90)) / span
    return float(mid - lo) / span, colour


def suggest_stain(images: np.ndarray | Sequence[np.ndarray]) -> StainSuggestion:
    """Suggest the ``ImageConfig.stain`` for one image or a set of images.

    * dark background (fluorescence) or mid-grey (phase contrast): ``None``;
    * bright background and colour-stained RGB (H&E): ``"hematoxylin"``;
    * bright background, grey (brightfield): ``"invert"``.

    For a set, the majority of the images decides; a set with both H&E and grey RGB brightfield
    images gets ``"hematoxylin"``, which serves both.
    """
    if isinstance(images, np.ndarray):
        images = [images]
    if not images:
        raise ValueError("suggest_stain needs at least one image")
    votes: list[str | None] = []
    measures = []
    for image in images:
        image = np.asarray(image)
        bright, colour = _brightness(image)
        measures.append((bright, colour))
        if bright < BRIGHT_BACKGROUND:
            votes.append(None)
        elif image.ndim == 3 and image.shape[-1] == 3 and colour >= COLOUR:
            votes.append("hematoxylin")
        else:
            votes.append("invert")
    bright_votes = [v for v in votes if v is not None]
    mean_bright = float(np.mean([m[0] for m in measures]))
    if len(bright_votes) * 2 <= len(votes):
        return StainSuggestion(None, f"dark or mid-grey background (median brightness "
                                     f"{mean_bright:.2f} of the range): used as it is")
    all_rgb = all(np.ndim(i) == 3 and np.shape(i)[-1] == 3 for i in images)
    counts = Counter(bright_votes)
    if counts["hematoxylin"] and all_rgb:
        colour = max(m[1] for m in measures)
        return StainSuggestion("hematoxylin", f"bright background (median brightness "
                               f"{mean_bright:.2f}) with stained colour ({colour:.2f}): H&E-like, "
                               "using the haematoxylin channel")
    return StainSuggestion("invert", f"bright background (median brightness {mean_bright:.2f}), "
                                     "dark objects: brightfield, inverted")

