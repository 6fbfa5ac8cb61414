"""After training: run the network on the annotated parts of its training images and let the
family fit its prediction settings to them (:meth:`ModelFamily.calibrate`).

Only crops around annotated objects are predicted, so the cost stays at a fraction of a second
for typical annotations, also on large images: one crop per image holding all its objects while
that is small, otherwise one crop per object (other objects in it are marked unlabelled).
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch

from cellsparse_app.models.base import ModelConfig, ModelFamily

logger = logging.getLogger(__name__)

#: Context kept around annotated objects (pixels), so the network sees their surroundings.
MARGIN = 32
#: Above this many pixels, an image's objects are cropped one by one instead of together.
MAX_UNION_PIXELS = 1024 * 1024
#: At most this many objects are predicted one by one over all images (calibration cost bound).
MAX_SINGLE_OBJECTS = 256


def annotated_crops(
    images: Sequence[np.ndarray], labels: Sequence[np.ndarray], margin: int = MARGIN
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(image (C, h, w), labels (h, w))`` crops holding every annotated object whole.

    Args:
        images: prepared ``(C, H, W)`` training images.
        labels: their label images (-1/0/1..N).
        margin: pixels of context on each side, where the image has them.
    """
    crops: list[tuple[np.ndarray, np.ndarray]] = []
    singles = 0
    for image, lab in zip(images, labels):
        lab = np.asarray(lab)
        if not (lab > 0).any():
            continue
        box = _box(lab > 0, margin, lab.shape)
        if _area(box) <= MAX_UNION_PIXELS:
            crops.append(
                (image[:, box[0] : box[1], box[2] : box[3]], lab[box[0] : box[1], box[2] : box[3]])
            )
            continue
        from scipy import ndimage as ndi

        for index, found in enumerate(ndi.find_objects(np.where(lab > 0, lab, 0))):
            if found is None or singles >= MAX_SINGLE_OBJECTS:
                continue
            r, c = found
            box = _box_of(r.start, r.stop, c.start, c.stop, margin, lab.shape)
            part = lab[box[0] : box[1], box[2] : box[3]]
            # Only this object counts; the others may be cut by the crop's edge.
            part = np.where((part > 0) & (part != index + 1), -1, part)
            crops.append((image[:, box[0] : box[1], box[2] : box[3]], part))
            singles += 1
    return crops


def calibrate_config(
    family: ModelFamily,
    network: torch.nn.Module,
    model_config: ModelConfig,
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    device: torch.device,
) -> ModelConfig:
    """The family's calibrated config for ``network`` (in eval mode) on its training annotations."""
    from cellsparse_app.predict import PredictConfig, predict_array

    crops = annotated_crops(images, labels)
    if not crops:
        return model_config
    multiple = family.size_multiple(model_config)
    cfg = PredictConfig(device=device.type)
    outputs = [predict_array(network, image, cfg, device, multiple) for image, _ in crops]
    return family.calibrate(outputs, [lab for _, lab in crops], model_config)


def _box(mask: np.ndarray, margin: int, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return _box_of(rows[0], rows[-1] + 1, cols[0], cols[-1] + 1, margin, shape)


def _box_of(r0: int, r1: int, c0: int, c1: int, margin: int, shape) -> tuple[int, int, int, int]:
    return (max(r0 - margin, 0), min(r1 + margin, shape[0]),
            max(c0 - margin, 0), min(c1 + margin, shape[1]))


def _area(box: tuple[int, int, int, int]) -> int:
    return (box[1] - box[0]) * (box[3] - box[2])
