"""Helpers shared by the model families (numpy/scipy only)."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from cellsparse_app.models.base import ModelConfig

logger = logging.getLogger(__name__)


def instance_edt(labels: np.ndarray) -> np.ndarray:
    """Per-instance Euclidean distance to the object's boundary, ``float32``, 0 off instances.

    The boundary is any pixel with another value (other cell, background, unlabelled). The image
    edge is *not* a boundary: objects cut by it are treated as going on (as ``stardist``'s
    ``edt_prob``).
    """
    labels = np.asarray(labels)
    padded = np.pad(labels, 1, mode="edge")
    out = np.zeros(padded.shape, np.float32)
    for index, box in enumerate(ndi.find_objects(np.maximum(padded, 0)), start=1):
        if box is None:
            continue
        grown = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
        mask = padded[grown] == index
        out[grown][mask] = ndi.distance_transform_edt(mask)[mask]
    return out[1:-1, 1:-1]


def normalised_edt(labels: np.ndarray, edt: np.ndarray | None = None) -> np.ndarray:
    """:func:`instance_edt` divided by each instance's maximum, in ``(0, 1]`` on instances.

    ``edt``: the :func:`instance_edt` of ``labels`` if already computed.
    """
    labels = np.asarray(labels)
    edt = instance_edt(labels) if edt is None else edt
    ids = np.where(labels > 0, labels, 0)
    if not ids.any():
        return edt
    peak = ndi.maximum(edt, ids, index=np.arange(int(ids.max()) + 1))
    peak = np.asarray(peak, np.float32)
    peak[peak <= 0] = 1.0
    return np.where(ids > 0, edt / peak[ids], 0.0).astype(np.float32)


def check_architecture(cfg: ModelConfig) -> None:
    """``ValueError`` naming the first architecture field that is not a positive integer."""
    for name in ("in_channels", "base_channels", "depth", "blocks"):
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{type(cfg).__name__}.{name} must be an integer >= 1, got {value!r}")


def probability_logit(p: float) -> float:
    """The logit of probability ``p`` (clipped to ``[1e-6, 1 - 1e-6]``), to threshold raw logits."""
    p = min(max(float(p), 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def predict_setting(predict_cfg: Any, name: str, default: float) -> float:
    """``predict_cfg.<name>`` as a float, or ``default`` where it is missing or ``None``."""
    value = getattr(predict_cfg, name, None) if predict_cfg is not None else None
    return float(default if value is None else value)


def remove_small_objects(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Drop objects under ``min_size`` pixels and renumber 1..N (``uint32``)."""
    labels = np.asarray(labels)
    if labels.max(initial=0) == 0:
        return labels.astype(np.uint32)
    sizes = np.bincount(labels.ravel())
    keep = sizes >= max(min_size, 1)
    keep[0] = False
    lut = np.zeros(sizes.size, np.uint32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.uint32)
    return lut[labels]
