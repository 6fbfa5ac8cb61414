"""Validation of training inputs, with messages that name the offending image and value."""

from __future__ import annotations

import logging
import warnings
from typing import Sequence

import numpy as np

from cellsparse_app.data.images import ImageConfig, validate_image
from cellsparse_app.data.labels import validate_labels

logger = logging.getLogger(__name__)


def check_inputs(
    images: Sequence[np.ndarray] | np.ndarray,
    labels: Sequence[np.ndarray] | np.ndarray,
    image_config: ImageConfig,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Validate and prepare training data.

    A single 2-D image and label image may be passed without a list.

    Returns:
        ``(prepared, labels)``: network inputs ``float32 (C, H, W)`` and ``int32`` labels.

    Raises:
        TypeError: images or labels of the wrong type/dtype.
        ValueError: counts, shapes or channels that do not match; no labelled pixel at all; no
            annotated cell.

    Warns:
        UserWarning: no annotated background (Sugawara 2023: background annotation is essential;
            without it the model learns that everything is a cell).
    """
    images = _as_list(images, "images")
    labels = _as_list(labels, "labels")
    if not images:
        raise ValueError("no training images given")
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} image(s) but {len(labels)} label image(s)")
    prepared, checked = [], []
    for i, (image, lab) in enumerate(zip(images, labels)):
        image = validate_image(image, name=f"image {i}")
        try:
            lab = validate_labels(lab, shape=image.shape)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"labels {i}: {exc}") from None
        x = image_config.prepare(image)
        if prepared and x.shape[0] != prepared[0].shape[0]:
            raise ValueError(
                f"image {i} gives {x.shape[0]} channel(s) but image 0 gives "
                f"{prepared[0].shape[0]}; choose the same channels with ImageConfig(channels=...)"
            )
        prepared.append(x)
        checked.append(lab)
    n_labelled = sum(int((lab >= 0).sum()) for lab in checked)
    if n_labelled == 0:
        raise ValueError(
            "no annotations: every label pixel is -1 (unlabelled); annotate some cells (1..N) "
            "and some background (0)"
        )
    if not any((lab > 0).any() for lab in checked):
        raise ValueError(
            "no annotated cells: the labels contain background (0) but no instance (1..N); "
            "annotate at least one cell"
        )
    if not any((lab == 0).any() for lab in checked):
        warnings.warn(
            "no background is annotated (no label 0): the model cannot learn what is not a "
            "cell and will over-segment; annotate some background",
            UserWarning,
            stacklevel=3,
        )
    return prepared, checked


def _as_list(value, name: str) -> list:
    if isinstance(value, np.ndarray):
        if value.ndim == 2:
            return [value]
        raise TypeError(
            f"{name} must be a list of 2-D arrays (or one 2-D array), got an array of shape "
            f"{value.shape}"
        )
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise TypeError(f"{name} must be a list of arrays, got {type(value).__name__}")
    return list(value)
