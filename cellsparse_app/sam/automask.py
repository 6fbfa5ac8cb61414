"""Automatic mask generation: every object in the image, as one instance label image.

With a SAM backend this runs SAM's own ``SamAutomaticMaskGenerator`` (grid of point prompts,
quality and stability filtering, NMS, optional crops; parameters in
:class:`~cellsparse_app.sam.config.AutoMaskConfig`) with its ``set_image`` routed through the
engine's encoder and the annotator's embedding cache. With the ``fallback`` backend it runs the
classical threshold + watershed (:func:`cellsparse_app.sam.fallback.automatic_masks`).

Overlaps are resolved by :func:`~cellsparse_app.sam.results.paint_masks`: smaller masks lie on
top of larger ones, masks left mostly hidden are dropped.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from typing import Any, Callable

import numpy as np

from cellsparse_app.sam.config import AutoMaskConfig
from cellsparse_app.sam.results import paint_masks

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class AutoMaskResult:
    """All objects found in an image.

    Attributes:
        labels: ``int32 (H, W)``: 0 where no object was found, ``1..N`` objects. This is a
            dense instance image, not an annotation: pick objects with
            :func:`cellsparse_app.labels.select_sparse`.
        scores: ``float32 (N,)``: predicted quality of object ``i + 1``.
        stability: ``float32 (N,)`` stability scores (SAM; the fallback gives solidity).
        model: backend that produced them.
    """

    labels: np.ndarray
    scores: np.ndarray
    stability: np.ndarray
    model: str

    def __len__(self) -> int:
        return len(self.scores)

    def masks(self) -> np.ndarray:
        """``bool (N, H, W)``, one mask per object."""
        ids = np.arange(1, len(self.scores) + 1)
        return self.labels[None] == ids[:, None, None]


def sam_masks(engine: Any, rgb: np.ndarray, cfg: AutoMaskConfig,
              embed: Callable[[np.ndarray], Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SAM's automatic masks: ``bool (N, H, W)`` masks, quality and stability scores.

    Args:
        engine: a :class:`~cellsparse_app.sam.engine.SamEngine`.
        rgb: ``(H, W, 3) uint8`` image.
        cfg: generator parameters.
        embed: ``embed(rgb_crop) -> SamEmbedding`` (cached).
    """
    from cellsparse_app._compat import ensure_torchvision

    ensure_torchvision()  # SAM's generator uses torchvision's batched_nms
    module = importlib.import_module(f"{engine.spec.module}.automatic_mask_generator")
    generator = module.SamAutomaticMaskGenerator(engine.model, output_mode="binary_mask",
                                                 **cfg.sam_kwargs())
    generator.predictor = engine.predictor_for_automask(embed)
    records = generator.generate(rgb)
    h, w = rgb.shape[:2]
    if not records:
        empty = np.zeros(0, dtype=np.float32)
        return np.zeros((0, h, w), dtype=bool), empty, empty
    masks = np.stack([np.asarray(r["segmentation"], dtype=bool) for r in records])
    quality = np.array([r["predicted_iou"] for r in records], dtype=np.float32)
    stability = np.array([r["stability_score"] for r in records], dtype=np.float32)
    return masks, quality, stability


def to_result(masks: np.ndarray, scores: np.ndarray, stability: np.ndarray, model: str,
              cfg: AutoMaskConfig) -> AutoMaskResult:
    """Drop oversized masks, resolve overlaps and build the :class:`AutoMaskResult`."""
    h, w = masks.shape[1:]
    if len(masks):
        areas = masks.reshape(len(masks), -1).sum(axis=1)
        small_enough = areas <= cfg.max_mask_region_fraction * h * w
        masks, scores = masks[small_enough], scores[small_enough]
        stability = stability[small_enough]
    labels, index = paint_masks(masks, scores, min_area=cfg.min_mask_region_area,
                                min_visible_fraction=cfg.min_visible_fraction, return_index=True)
    return AutoMaskResult(labels, scores[index].astype(np.float32),
                          stability[index].astype(np.float32), model)
