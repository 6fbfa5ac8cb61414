"""Object-scale normalisation: measure how large cells are, resize images to a canonical size.

Cellpose's answer to microscopes that show cells at any size (Stringer et al. 2021): rescale every
image so that its objects have one canonical diameter, train and predict there, and bring the
labels back to the image's own grid. The diameter of an object is Cellpose's: the diameter of the
disk of the same area, ``2 * sqrt(area / pi)``; an image set's diameter is the median over its
annotated objects (pooled over the images, so that sets of mixed magnification keep their relative
sizes and the network still learns the range).

The *scale* is the resize factor from the image's pixels to the network's: ``canonical /
diameter``. A model records its training ``diameter`` and ``scale`` in its config
(:class:`~cellsparse_app.models.base.ModelConfig`); models saved before have ``scale = 1`` (no
rescaling) and no diameter.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Sequence

import numpy as np

logger = logging.getLogger(__name__)

#: Diameter (pixels) that annotated cells are rescaled to for the network, chosen by measurement
#: (``python -m bench sparse --variants d30,d45,native``; see the README's benchmark section).
#: Larger cells are shrunk to it (smaller ones are kept as they are). Cellpose uses 30 px, made for
#: dense training; from a few annotated cells shrinking that far discards most of the labelled
#: pixels (a 6 px background ring becomes ~3 px): Usiigaci whole cells, k = 4 cells + ring,
#: seeds 0-2, AP@0.5 0.509 +- 0.081 at 30 px vs 0.636 +- 0.110 at 45 px (400 steps; better on
#: every seed, +0.09 to +0.15), 0.404 vs 0.541 in 150 s. Nuclei (14-24 px) are not affected.
CANONICAL_DIAMETER = 45.0
#: Scales are rounded to this many decimals (so that a model's config reads well).
SCALE_DECIMALS = 4
#: Smallest and largest resize factors accepted (a mistyped diameter would otherwise ask for
#: a 100x larger image).
MIN_SCALE, MAX_SCALE = 1 / 16, 8.0


def object_diameters(labels: np.ndarray) -> np.ndarray:
    """Diameters ``2 sqrt(area / pi)`` of the instances (ids >= 1) of one label image."""
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be an integer array, got dtype {labels.dtype}")
    ids = labels[labels > 0]
    if ids.size == 0:
        return np.zeros(0, np.float64)
    areas = np.bincount(ids.ravel())
    areas = areas[areas > 0]
    return 2.0 * np.sqrt(areas / math.pi)


def median_diameter(labels: Sequence[np.ndarray] | np.ndarray) -> float | None:
    """Median object diameter over all instances of ``labels`` (one image or a list of them).

    Returns ``None`` where no instance is annotated.
    """
    if isinstance(labels, np.ndarray):
        labels = [labels]
    diameters = np.concatenate([object_diameters(lab) for lab in labels] or [np.zeros(0)])
    if diameters.size == 0:
        return None
    return float(np.median(diameters))


def scale_for(diameter: float, canonical: float = CANONICAL_DIAMETER) -> float:
    """Resize factor that brings objects of ``diameter`` pixels to ``canonical`` pixels.

    Raises:
        ValueError: a non-positive diameter, or a factor outside ``[MIN_SCALE, MAX_SCALE]``.
    """
    if not (isinstance(diameter, (int, float)) and diameter > 0 and math.isfinite(diameter)):
        raise ValueError(f"diameter must be a positive number of pixels, got {diameter!r}")
    if not canonical > 0:
        raise ValueError(f"canonical diameter must be > 0, got {canonical!r}")
    scale = round(float(canonical) / float(diameter), SCALE_DECIMALS)
    if not MIN_SCALE <= scale <= MAX_SCALE:
        raise ValueError(
            f"diameter {diameter:g} px would resize images by {scale:g} (objects of {canonical:g} "
            f"px), outside [{MIN_SCALE:g}, {MAX_SCALE:g}]; check the diameter"
        )
    return scale


def prediction_scale(model_scale: float, model_diameter: float | None,
                     diameter: float | None) -> float:
    """Resize factor for an image whose objects are ``diameter`` pixels across.

    ``None`` keeps the model's own scale (images of the training magnification). A model without a
    recorded diameter (saved before rescaling existed) cannot be told another diameter: a warning
    is issued and its scale is kept.
    """
    if diameter is None:
        return float(model_scale)
    if model_diameter is None:
        warnings.warn(
            f"the model records no training diameter (saved before object rescaling); "
            f"diameter={diameter!r} is ignored", UserWarning, stacklevel=3,
        )
        return float(model_scale)
    return scale_for(diameter, float(model_scale) * float(model_diameter))


def scaled_shape(shape: Sequence[int], scale: float) -> tuple[int, int]:
    """``(h, w)`` of a ``shape[-2:]`` image resized by ``scale`` (at least 1 pixel per side)."""
    return tuple(max(1, int(round(n * scale))) for n in shape[-2:])  # type: ignore[return-value]


def rescale_image(x: np.ndarray, scale: float) -> np.ndarray:
    """Resize a prepared ``float32 (C, H, W)`` image by ``scale``.

    Down-sampling averages the pixels each output pixel covers (area interpolation, no aliasing);
    up-sampling is bilinear. ``scale == 1`` returns ``x`` unchanged.
    """
    if scale == 1:
        return x
    import torch
    from torch.nn import functional as F

    size = scaled_shape(x.shape, scale)
    t = torch.from_numpy(np.ascontiguousarray(x, np.float32))[None]
    if scale < 1:
        out = F.interpolate(t, size=size, mode="area")
    else:
        out = F.interpolate(t, size=size, mode="bilinear", align_corners=False)
    return np.ascontiguousarray(out[0].numpy())


def resize_output(x: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Bilinear resize of a ``float32 (K, h, w)`` network output to ``shape`` ``(H, W)``."""
    if tuple(x.shape[-2:]) == tuple(shape):
        return x
    import torch
    from torch.nn import functional as F

    t = torch.from_numpy(np.ascontiguousarray(x, np.float32))[None]
    out = F.interpolate(t, size=tuple(int(n) for n in shape), mode="bilinear", align_corners=False)
    return np.ascontiguousarray(out[0].numpy())


def resize_labels(labels: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resize of a label image to ``shape``; values (-1, 0, ids) are kept.

    Each output pixel takes the label at its centre's position in the input, as the image resize
    maps pixel centres.
    """
    labels = np.asarray(labels)
    h, w = labels.shape
    out_h, out_w = (int(n) for n in shape)
    if (out_h, out_w) == (h, w):
        return labels
    rows = np.minimum(((np.arange(out_h) + 0.5) * h / out_h).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(out_w) + 0.5) * w / out_w).astype(np.int64), w - 1)
    return labels[rows[:, None], cols[None, :]]


def rescale_labels(labels: np.ndarray, scale: float) -> np.ndarray:
    """:func:`resize_labels` to the shape :func:`rescale_image` gives for ``scale``."""
    if scale == 1:
        return np.asarray(labels)
    return resize_labels(labels, scaled_shape(np.shape(labels), scale))
