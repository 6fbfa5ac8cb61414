"""Automatic mask generation: every object in the image, as one instance label image.

With a SAM backend this runs SAM's own ``SamAutomaticMaskGenerator`` (grid of point prompts,
quality and stability filtering, NMS, optional crops; parameters in
:class:`~cellsparse_app.sam.config.AutoMaskConfig`) with its ``set_image`` routed through the
engine's encoder and the annotator's embedding cache. With the ``fallback`` backend it runs the
classical threshold + watershed (:func:`cellsparse_app.sam.fallback.automatic_masks`).

Duplicates (box IoU above ``box_nms_thresh``) are removed in the order of
:attr:`AutoMaskConfig.priority` (:func:`suppress_duplicates`; ``quality`` is SAM's own NMS), and
:attr:`AutoMaskConfig.multimask_output` picks three candidate masks per prompt or SAM's single
one: together samapi's five ``output_type`` values (:data:`SAMAPI_OUTPUT_TYPES`). Remaining
overlaps are resolved by :func:`~cellsparse_app.sam.results.paint_masks`: smaller masks lie on
top of larger ones, masks left mostly hidden are dropped; with ``priority="none"`` overlapping
masks are kept whole (:attr:`AutoMaskResult.overlapping`).
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

#: samapi's ``output_type`` -> (``multimask_output``, ``priority``), as its MobileSAM fork's
#: ``SamAutomaticMaskGenerator``: "Single mask" decodes one mask per prompt and keeps the
#: smaller of duplicates; the "Multi-mask" types decode three per prompt and keep the largest,
#: the smallest, the best predicted quality, or all of them.
SAMAPI_OUTPUT_TYPES: dict[str, tuple[bool, str]] = {
    "Single mask": (False, "smallest"),
    "Multi-mask (all)": (True, "none"),
    "Multi-mask (largest)": (True, "largest"),
    "Multi-mask (smallest)": (True, "smallest"),
    "Multi-mask (best quality)": (True, "quality"),
}
#: With ``priority="none"``, masks whose boxes overlap this much and whose areas differ by less
#: than this fraction are copies from neighbouring prompts: only the best is kept.
SAME_MASK = 0.95


def output_type_config(output_type: str, cfg: AutoMaskConfig | None = None) -> AutoMaskConfig:
    """``cfg`` (default :class:`AutoMaskConfig`) set up for samapi's ``output_type``
    (case and surrounding spaces ignored).

    Raises:
        ValueError: an unknown output type (naming the known ones).
    """
    cfg = cfg or AutoMaskConfig()
    for name, (multimask, priority) in SAMAPI_OUTPUT_TYPES.items():
        if output_type.strip().lower() == name.lower():
            return cfg.replace(multimask_output=multimask, priority=priority)
    raise ValueError(f"unknown output_type {output_type!r}; use one of: "
                     f"{', '.join(SAMAPI_OUTPUT_TYPES)}")


@dataclasses.dataclass(frozen=True)
class AutoMaskResult:
    """All objects found in an image.

    Attributes:
        labels: ``int32 (H, W)``: 0 where no object was found, ``1..N`` objects. This is a
            dense instance image, not an annotation: pick objects with
            :func:`cellsparse_app.data.labels.select_sparse`.
        scores: ``float32 (N,)``: predicted quality of object ``i + 1``.
        stability: ``float32 (N,)`` stability scores (SAM; the fallback gives solidity).
        model: backend that produced them.
        overlapping: ``bool (N, H, W)`` every object whole, when overlaps are kept
            (``priority="none"``; larger ones first): ``labels`` then shows object ``i + 1``
            where no smaller object lies on it. None: objects do not overlap.
    """

    labels: np.ndarray
    scores: np.ndarray
    stability: np.ndarray
    model: str
    overlapping: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.scores)

    def masks(self) -> np.ndarray:
        """``bool (N, H, W)``, one mask per object (whole, overlapping ones included)."""
        if self.overlapping is not None:
            return self.overlapping
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
    from cellsparse_app.runtime.compat import ensure_torchvision

    ensure_torchvision()  # SAM's generator uses torchvision's batched_nms
    module = importlib.import_module(f"{engine.spec.module}.automatic_mask_generator")
    generator = module.SamAutomaticMaskGenerator(engine.model, output_mode="binary_mask",
                                                 **cfg.sam_kwargs())
    total, done = prompt_batches(cfg), [0]

    def on_batch() -> None:
        done[0] += 1
        if progress is not None:
            progress(min(done[0], total), total)

    generator.predictor = engine.predictor_for_automask(embed, on_batch,
                                                        multimask=cfg.multimask_output)
    records = generator.generate(rgb)
    h, w = rgb.shape[:2]
    if not records:
        empty = np.zeros(0, dtype=np.float32)
        return np.zeros((0, h, w), dtype=bool), empty, empty
    masks = np.stack([np.asarray(r["segmentation"], dtype=bool) for r in records])
    quality = np.array([r["predicted_iou"] for r in records], dtype=np.float32)
    stability = np.array([r["stability_score"] for r in records], dtype=np.float32)
    return masks, quality, stability


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """``(N, 4)`` boxes ``row0, col0, row1, col1`` (exclusive ends) of ``bool (N, H, W)`` masks;
    an empty mask gets ``0, 0, 0, 0``."""
    rows, cols = masks.any(axis=2), masks.any(axis=1)
    boxes = np.zeros((len(masks), 4), dtype=np.int64)
    for i, (r, c) in enumerate(zip(rows, cols)):
        if r.any():
            rr, cc = np.flatnonzero(r), np.flatnonzero(c)
            boxes[i] = rr[0], cc[0], rr[-1] + 1, cc[-1] + 1
    return boxes


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one ``(4,)`` box with ``(N, 4)`` boxes (``row0, col0, row1, col1``)."""
    r0, c0 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    r1, c1 = np.minimum(box[2], boxes[:, 2]), np.minimum(box[3], boxes[:, 3])
    inter = np.clip(r1 - r0, 0, None) * np.clip(c1 - c0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1)


def suppress_duplicates(masks: np.ndarray, scores: np.ndarray, cfg: AutoMaskConfig) -> np.ndarray:
    """Indices of the masks kept, in priority order: greedy box NMS at ``cfg.box_nms_thresh``
    where the first by ``cfg.priority`` wins (``quality``: higher score; ``smallest``/
    ``largest``: area, ties to the higher score). ``none`` merges only near-identical masks
    (:data:`SAME_MASK`), keeping the higher score."""
    if len(masks) == 0:
        return np.zeros(0, dtype=np.int64)
    areas = masks.reshape(len(masks), -1).sum(axis=1).astype(np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    key = {"quality": np.zeros_like(areas), "smallest": areas, "largest": -areas,
           "none": np.zeros_like(areas)}[cfg.priority]
    order = np.lexsort((-scores, key))  # by the priority, ties to the higher score
    boxes = mask_boxes(masks)
    alive = np.ones(len(masks), dtype=bool)
    keep = []
    for k in order:
        if not alive[k]:
            continue
        keep.append(k)
        alive[k] = False
        iou = box_iou(boxes[k], boxes)
        if cfg.priority == "none":
            close = np.minimum(areas, areas[k]) >= SAME_MASK * np.maximum(areas, areas[k])
            alive &= ~((iou > SAME_MASK) & close)
        else:
            alive &= ~(iou > cfg.box_nms_thresh)
    return np.asarray(keep, dtype=np.int64)


def to_result(masks: np.ndarray, scores: np.ndarray, stability: np.ndarray, model: str,
              cfg: AutoMaskConfig) -> AutoMaskResult:
    """Drop oversized masks and duplicates, resolve overlaps and build the
    :class:`AutoMaskResult`."""
    h, w = masks.shape[1:]
    if len(masks):
        areas = masks.reshape(len(masks), -1).sum(axis=1)
        small_enough = areas <= cfg.max_mask_region_fraction * h * w
        masks, scores = masks[small_enough], scores[small_enough]
        stability = stability[small_enough]
        # SAM's generator already did it for "quality" (then a no-op); the fallback did not.
        keep = suppress_duplicates(masks, scores, cfg)
        if len(keep) < len(masks):
            keep = np.sort(keep)
            masks, scores, stability = masks[keep], scores[keep], stability[keep]
    if cfg.priority == "none":
        return _overlapping_result(masks, scores, stability, model, cfg)
    labels, index = paint_masks(masks, scores, min_area=cfg.min_mask_region_area,
                                min_visible_fraction=cfg.min_visible_fraction, return_index=True)
    return AutoMaskResult(labels, scores[index].astype(np.float32),
                          stability[index].astype(np.float32), model)


def _overlapping_result(masks: np.ndarray, scores: np.ndarray, stability: np.ndarray, model: str,
                        cfg: AutoMaskConfig) -> AutoMaskResult:
    """Every mask whole (larger first, ties to the lower score); ``labels`` paints them in
    that order, so smaller ones lie on top."""
    areas = masks.reshape(len(masks), -1).sum(axis=1)
    keep = np.flatnonzero((areas > 0) & (areas >= cfg.min_mask_region_area))
    order = keep[np.lexsort((scores[keep], -areas[keep]))]
    labels = np.zeros(masks.shape[1:], dtype=np.int32)
    for i, k in enumerate(order, start=1):
        labels[masks[k]] = i
    return AutoMaskResult(labels, scores[order].astype(np.float32),
                          stability[order].astype(np.float32), model,
                          overlapping=masks[order].astype(bool))
