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
import math
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


def prompt_batches(cfg: AutoMaskConfig) -> int:
    """How many batches of point prompts SAM's generator decodes (for progress bars)."""
    total = 0
    for layer in range(cfg.crop_n_layers + 1):
        side = cfg.points_per_side // (cfg.crop_n_points_downscale_factor ** layer)
        total += 4 ** layer * math.ceil(side * side / cfg.points_per_batch)
    return total


def sam_masks(engine: Any, rgb: np.ndarray, cfg: AutoMaskConfig,
              embed: Callable[[np.ndarray], Any],
              progress: Callable[[int, int], None] | None = None,
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SAM's automatic masks: ``bool (N, H, W)`` masks, quality and stability scores.

    Args:
        engine: a :class:`~cellsparse_app.sam.engine.SamEngine`.
        rgb: ``(H, W, 3) uint8`` image.
        cfg: generator parameters.
        embed: ``embed(rgb_crop) -> SamEmbedding`` (cached).
        progress: called as ``progress(batches_done, batches_total)``.
    """
    from cellsparse_app._compat import ensure_torchvision

    ensure_torchvision()  # SAM's generator uses torchvision's batched_nms
    module = importlib.import_module(f"{engine.spec.module}.automatic_mask_generator")
    generator = module.SamAutomaticMaskGenerator(engine.model, output_mode="binary_mask",
                                                 **cfg.sam_kwargs())
    total, done = prompt_batches(cfg), [0]

    def on_batch() -> None:
        done[0] += 1
        if progress is not None:
            progress(min(done[0], total), total)

    generator.predictor = engine.predictor_for_automask(embed, on_batch)
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
