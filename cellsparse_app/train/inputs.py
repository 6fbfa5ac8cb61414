"""Validation of training inputs, with messages that name the offending image and value."""

from __future__ import annotations

import logging
import warnings
from typing import Sequence

import numpy as np

from cellsparse_app.data.images import ImageConfig, validate_image
from cellsparse_app.data.labels import validate_labels

logger = logging.getLogger(__name__)


#: Refusal when no pixel is annotated (the wording serves both label formats).
NOTHING_ANNOTATED = (
    "no annotations: the labels annotate nothing (every pixel is unlabelled: -1, or 0 in the "
    "wire format); annotate some cells and some background"
)
#: Refusal when no cell is annotated.
NO_CELLS = (
    "no annotated cells: the labels contain no foreground object (no instance: 1..N, or >= 2 in "
    "the wire format); annotate at least one cell"
)
#: Warning for training data without any background pixel (Sugawara 2023: background annotation
#: is essential; without it the model learns that everything is a cell).
NO_BACKGROUND_WARNING = (
    "the labels mark no background (label 0; wire format: 1): the model cannot learn what is not "
    "a cell and will likely predict cells everywhere; annotate some background around them"
)


def check_data(
    images: Sequence[np.ndarray] | np.ndarray,
    labels: Sequence[np.ndarray] | np.ndarray,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The rules every training input obeys, wherever it comes from (UI, REST job, CLI).

    A single 2-D image and label image may be passed without a list.

    Returns:
        ``(images, labels)``: validated images and ``int32`` labels (-1/0/1..N).

    Raises:
        TypeError: images or labels of the wrong type/dtype (the error names which one).
        ValueError: no images, counts or shapes that do not match, no labelled pixel at all
            (:data:`NOTHING_ANNOTATED`), no annotated cell (:data:`NO_CELLS`).
    """
    images = _as_list(images, "images")
    labels = _as_list(labels, "labels")
    if not images:
        raise ValueError("no training images given")
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} image(s) but {len(labels)} label image(s)")
    checked_images, checked_labels = [], []
    for i, (image, lab) in enumerate(zip(images, labels)):
        image = validate_image(image, name=f"image {i}")
        try:
            lab = validate_labels(lab, shape=image.shape)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"labels {i}: {exc}") from None
        checked_images.append(image)
        checked_labels.append(lab)
    if not any((lab >= 0).any() for lab in checked_labels):
        raise ValueError(NOTHING_ANNOTATED)
    if not any((lab > 0).any() for lab in checked_labels):
        raise ValueError(NO_CELLS)
    return checked_images, checked_labels


def input_warnings(labels: Sequence[np.ndarray]) -> list[str]:
    """Likely mistakes in labels that still allow training (:data:`NO_BACKGROUND_WARNING`)."""
    if not any(np.count_nonzero(np.asarray(lab) == 0) for lab in labels):
        return [NO_BACKGROUND_WARNING]
    return []


def check_inputs(
    images: Sequence[np.ndarray] | np.ndarray,
    labels: Sequence[np.ndarray] | np.ndarray,
    image_config: ImageConfig,
    *,
    warn: bool = True,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Validate (:func:`check_data`) and prepare training data for the networks.

    ``warn=False`` leaves the warnings to the caller (the web app shows them as notices).

    Returns:
        ``(prepared, labels)``: network inputs ``float32 (C, H, W)`` and ``int32`` labels.

    Raises:
        TypeError, ValueError: see :func:`check_data`; also images whose prepared channel
            counts differ.

    Warns:
        UserWarning: each of :func:`input_warnings` (e.g. no annotated background).
    """
    images, checked = check_data(images, labels)
    prepared: list[np.ndarray] = []
    for i, image in enumerate(images):
        x = image_config.prepare(image)
        if prepared and x.shape[0] != prepared[0].shape[0]:
            raise ValueError(
                f"image {i} gives {x.shape[0]} channel(s) but image 0 gives "
                f"{prepared[0].shape[0]}; choose the same channels with ImageConfig(channels=...)"
            )
        prepared.append(x)
    for text in input_warnings(checked) if warn else ():
        warnings.warn(text, UserWarning, stacklevel=3)
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
