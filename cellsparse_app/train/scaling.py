"""The training side of object-scale normalisation (:mod:`cellsparse_app.data.object_scale`).

Before training, the prepared images and their labels are resized so that the annotated cells
have ``TrainConfig.object_diameter`` pixels; the model's config records the training diameter
and the scale, and prediction resizes every image by the same scale.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

import numpy as np

from cellsparse_app.data.object_scale import (
    median_diameter,
    rescale_image,
    rescale_labels,
    scale_for,
)
from cellsparse_app.models.base import ModelConfig

logger = logging.getLogger(__name__)


def choose_scale(
    labels: Sequence[np.ndarray], cfg, model_config: ModelConfig, initial=None
) -> ModelConfig:
    """``model_config`` with the training ``diameter`` and ``scale`` set.

    * continued training (``initial``): the initial model's diameter and scale, unchanged;
    * otherwise the diameter is ``cfg.diameter`` or the median over the annotated cells, and the
      scale ``cfg.object_diameter / diameter`` (1 when ``cfg.object_diameter`` is ``None``),
      at most 1 unless ``cfg.upscale``.
    """
    if initial is not None:
        return dataclasses.replace(
            model_config, diameter=initial.config.diameter, scale=initial.config.scale
        )
    diameter = cfg.diameter if cfg.diameter is not None else median_diameter(labels)
    if diameter is None:  # no annotated cell: check_inputs has refused this already
        return model_config
    scale = 1.0 if cfg.object_diameter is None else scale_for(diameter, cfg.object_diameter)
    if not cfg.upscale:
        scale = min(scale, 1.0)
    logger.info("cell diameter %.1f px; training at scale %g", diameter, scale)
    return dataclasses.replace(model_config, diameter=round(float(diameter), 2), scale=scale)


def rescale_training(
    images: Sequence[np.ndarray], labels: Sequence[np.ndarray], scale: float
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Prepared ``(C, H, W)`` images (area/bilinear) and labels (nearest, -1/0/ids kept) resized
    by ``scale``."""
    if scale == 1:
        return list(images), list(labels)
    return ([rescale_image(x, scale) for x in images],
            [rescale_labels(lab, scale).astype(np.int32, copy=False) for lab in labels])
