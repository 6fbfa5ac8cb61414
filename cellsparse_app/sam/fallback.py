"""The offline ``fallback`` backend: classical segmentation behind the SAM interface. NOT SAM.

Used by default only when no SAM weights are available, so that clicking still gives masks.

Prompt segmentation (:func:`segment_prompt`), in a window around the clicks (grown until the
object fits) or inside the box:

1. Otsu threshold of the smoothed window, on the object's side (bright nuclei in fluorescence,
   dark nuclei in H&E); a click on an object dimmer than the threshold lowers it to half way
   between background and that object;
2. the connected region holding the clicks (with a box only: the largest region in the box),
   holes filled;
3. touching objects are split by a watershed of the distance transform seeded at its maxima and
   at the negative points; the basins holding the positive clicks form the split candidate.

Candidates: the split basin(s) and the whole region, scored by solidity (cells are convex).
Polarity (bright or dark objects) is decided once per image: the background is the majority,
so bright objects pull the mean above the median (:func:`bright_objects`).

Automatic masks (:func:`automatic_masks`): global Otsu threshold, the same distance-transform
watershed, small objects removed.
"""

from __future__ import annotations

import dataclasses
import logging
import threading

import numpy as np
from scipy import ndimage as ndi

from cellsparse_app.sam.config import AutoMaskConfig
from cellsparse_app.sam.prompts import Prompt
from cellsparse_app.sam.results import select_masks

logger = logging.getLogger(__name__)

NAME = "fallback"
#: Half-size of the first window around the clicks, and the largest one tried.
START_HALF, MAX_HALF = 24, 384
#: Depth of the distance-transform maxima that seed the watershed (fraction of the largest).
DEPTH = 0.15
#: A region this convex is one object: not split further.
CONVEX_ENOUGH = 0.93


@dataclasses.dataclass(frozen=True)
class FallbackEmbedding:
    """The "embedding" of the classical backend: a smoothed grey image in 0..1."""

    gray: np.ndarray
    bright: bool = True

    @property
    def original_size(self) -> tuple[int, int]:
        return (int(self.gray.shape[0]), int(self.gray.shape[1]))


class FallbackEngine:
    """Classical segmenter with the interface of :class:`~cellsparse_app.sam.engine.SamEngine`."""

    name = NAME

    def __init__(self) -> None:
        self.encoder_calls = 0
        self._count_lock = threading.Lock()

    def describe(self) -> str:
        return "fallback (classical threshold + watershed, not SAM)"

    def encode(self, rgb: np.ndarray) -> FallbackEmbedding:
        """Grey, lightly smoothed version of an ``(H, W, 3) uint8`` image."""
        with self._count_lock:
            self.encoder_calls += 1
        gray = ndi.gaussian_filter(rgb.astype(np.float32).mean(axis=-1) / 255.0, 1.0)
        return FallbackEmbedding(gray, bright_objects(gray))

    def decode(self, embedding: FallbackEmbedding, prompt: Prompt,
               mode: str = "all") -> tuple[np.ndarray, np.ndarray, None]:
        """Candidates for ``prompt`` selected by output ``mode`` (``single``: the first)."""
        masks, scores = segment_prompt(embedding.gray, prompt, bright=embedding.bright)
        masks, scores, _ = select_masks(masks, scores, mode)
        return masks, scores, None


def bright_objects(gray: np.ndarray) -> bool:
    """Whether objects are brighter than the background (fluorescence) or darker (H&E, most
    brightfield): the background is the majority, so bright objects skew the mean above the
    median."""
    sample = gray[:: max(1, gray.shape[0] // 512), :: max(1, gray.shape[1] // 512)]
    return float(sample.mean()) >= float(np.median(sample))


def segment_prompt(gray: np.ndarray, prompt: Prompt,
                   bright: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``bool (M, H, W)`` candidate masks and ``(M,)`` scores, best first (see module doc).

    Args:
        gray: smoothed grey image in 0..1.
        prompt: the prompt.
        bright: objects are brighter than the background (see :func:`bright_objects`).

    Raises:
        ValueError: a prompt with negative points only.
    """
    pos = np.round(prompt.positive_rc).astype(int)
    neg = np.round(prompt.negative_rc).astype(int)
    h, w = gray.shape
    if prompt.box_rc is not None:
        r0, c0 = np.floor(prompt.box_rc[:2]).astype(int)
        r1, c1 = np.ceil(prompt.box_rc[2:]).astype(int)
        window = (max(r0, 0), max(c0, 0), min(r1, h - 1) + 1, min(c1, w - 1) + 1)
        found = _segment_window(gray, window, pos, neg, bright, boxed=True)
    elif len(pos) == 0:
        raise ValueError("the fallback backend needs a positive point or a box")
    else:
        half = START_HALF
        while True:
            lo = pos.min(axis=0) - half
            hi = pos.max(axis=0) + half + 1
            window = (max(lo[0], 0), max(lo[1], 0), min(hi[0], h), min(hi[1], w))
            found = _segment_window(gray, window, pos, neg, bright, boxed=False)
            whole_image = window == (0, 0, h, w)
            if half >= MAX_HALF or whole_image or not _touches_cut(found, window, (h, w)):
                break
            half *= 2
    masks = np.zeros((len(found), h, w), dtype=bool)
    scores = np.zeros(len(found), dtype=np.float32)
    r0, c0, r1, c1 = window
    for i, (sub, score) in enumerate(found):
        masks[i, r0:r1, c0:c1] = sub
        scores[i] = score
    return masks, scores


def _segment_window(gray, window, pos, neg, bright, *,
                    boxed: bool) -> list[tuple[np.ndarray, float]]:
    """Candidates ``[(mask of the window, score), ...]`` best first (at least one)."""
    r0, c0, r1, c1 = window
    sub = gray[r0:r1, c0:c1]
    pos = _inside(pos - (r0, c0), sub.shape)
    neg = _inside(neg - (r0, c0), sub.shape)
    empty = np.zeros(sub.shape, dtype=bool)
    if sub.size < 4 or float(sub.max() - sub.min()) < 1e-6:
        return [(empty, 0.0)]
    if len(pos):
        level = float(np.mean([_local_mean(sub, p) for p in pos]))
    else:  # box only: the object is in the middle of the box
        level = _centre_max(sub) if bright else _centre_min(sub)
    threshold = _object_threshold(sub, level, bright)
    foreground = sub > threshold if bright else sub < threshold
    for p in neg:
        foreground[p[0], p[1]] = False
    regions, _ = ndi.label(foreground)
    if len(pos):
        ids = {_region_at(regions, p) for p in pos} - {0}
    else:
        sizes = np.bincount(regions.ravel())
        sizes[0] = 0
        ids = {int(np.argmax(sizes))} if sizes.max() > 0 else set()
    if not ids:
        return [(empty, 0.0)]
    whole = ndi.binary_fill_holes(np.isin(regions, list(ids)))
    basins = _split(whole, neg)
    if len(pos):
        keep = {int(basins[p[0], p[1]]) for p in pos} - {0}
    else:
        keep = {int(np.argmax(np.bincount(basins.ravel(), minlength=2)[1:]) + 1)}
    split = np.isin(basins, list(keep)) if keep else whole
    if len(neg):  # negative points own their basins: never part of the object
        whole = whole & ~np.isin(basins, list(set(np.unique(basins)) - keep - {0}))
    s_whole, s_split = _solidity(whole), _solidity(split)
    if s_whole >= CONVEX_ENOUGH and not len(neg):
        candidates = [(whole, s_whole), (split, s_split * 0.95)]
    else:
        candidates = [(split, s_split), (whole, s_whole * 0.95)]
    if np.array_equal(candidates[0][0], candidates[1][0]):
        candidates = candidates[:1]
    return candidates


def _split(mask: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Distance-transform watershed of ``mask``: one basin per maximum and per negative point."""
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    dist = ndi.distance_transform_edt(mask)
    if dist.max() <= 0:
        return mask.astype(np.int32)
    smooth = ndi.gaussian_filter(dist, 1.0)
    depth = max(1.0, DEPTH * float(smooth.max()))
    markers, n = ndi.label(h_maxima(smooth, depth) & mask)
    for p in neg:
        if mask[p[0], p[1]]:
            n += 1
            markers[p[0], p[1]] = n
    if n == 0:
        return mask.astype(np.int32)
    return watershed(-smooth, markers, mask=mask).astype(np.int32)


def automatic_masks(embedding: FallbackEmbedding,
                    cfg: AutoMaskConfig) -> tuple[np.ndarray, np.ndarray]:
    """``bool (N, H, W)`` masks and ``(N,)`` scores of all objects found classically."""
    gray = embedding.gray
    h, w = gray.shape
    if float(gray.max() - gray.min()) < 1e-6:
        return np.zeros((0, h, w), dtype=bool), np.zeros(0, dtype=np.float32)
    threshold = _otsu(gray)
    foreground = gray > threshold if embedding.bright else gray < threshold
    min_area = max(int(cfg.min_mask_region_area), 9)
    regions, _ = ndi.label(ndi.binary_fill_holes(foreground))
    sizes = np.bincount(regions.ravel())
    foreground = (sizes >= min_area)[regions] & (regions > 0)
    basins = _split(foreground, np.zeros((0, 2), dtype=int))
    ids = np.unique(basins)
    ids = ids[ids > 0]
    masks = np.zeros((len(ids), h, w), dtype=bool)
    scores = np.zeros(len(ids), dtype=np.float32)
    for i, k in enumerate(ids):
        masks[i] = basins == k
        scores[i] = _solidity(masks[i])
    return masks, scores


def _inside(points: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    ok = ((points[:, 0] >= 0) & (points[:, 0] < shape[0])
          & (points[:, 1] >= 0) & (points[:, 1] < shape[1]))
    return points[ok]


def _object_threshold(sub: np.ndarray, level: float, bright: bool) -> float:
    """Threshold between background and an object whose intensity is ``level``.

    Otsu's threshold of the window; for an object dimmer than that (a faint nucleus next to
    bright ones), half way between the background level and the object.
    """
    t = _otsu(sub)
    if bright and level <= t:
        return 0.5 * (float(np.median(sub[sub <= t])) + level)
    if not bright and level >= t:
        return 0.5 * (float(np.median(sub[sub >= t])) + level)
    return t


def _otsu(values: np.ndarray) -> float:
    from skimage.filters import threshold_otsu

    return float(threshold_otsu(values))


def _local_mean(image: np.ndarray, p: np.ndarray) -> float:
    r, c = p
    return float(image[max(r - 1, 0):r + 2, max(c - 1, 0):c + 2].mean())


def _centre_max(image: np.ndarray) -> float:
    h, w = image.shape
    return float(np.percentile(image[h // 4:h - h // 4, w // 4:w - w // 4], 75))


def _centre_min(image: np.ndarray) -> float:
    h, w = image.shape
    return float(np.percentile(image[h // 4:h - h // 4, w // 4:w - w // 4], 25))


def _region_at(regions: np.ndarray, p: np.ndarray, radius: int = 3) -> int:
    """Region id at ``p`` or, when ``p`` is just outside every region, the nearest one."""
    r, c = p
    if regions[r, c]:
        return int(regions[r, c])
    r0, c0 = max(r - radius, 0), max(c - radius, 0)
    patch = regions[r0:r + radius + 1, c0:c + radius + 1]
    rows, cols = np.nonzero(patch)
    if len(rows) == 0:
        return 0
    nearest = np.argmin((rows + r0 - r) ** 2 + (cols + c0 - c) ** 2)
    return int(patch[rows[nearest], cols[nearest]])


def _solidity(mask: np.ndarray) -> float:
    from skimage.morphology import convex_hull_image

    area = int(mask.sum())
    if area < 3:
        return 0.0
    hull = int(convex_hull_image(mask).sum())
    return float(area / max(hull, 1))


def _touches_cut(found, window, shape) -> bool:
    """Whether the best candidate touches a window side that is not the image border."""
    mask = found[0][0]
    if not mask.any():
        return False
    r0, c0, r1, c1 = window
    h, w = shape
    return bool((r0 > 0 and mask[0].any()) or (c0 > 0 and mask[:, 0].any())
                or (r1 < h and mask[-1].any()) or (c1 < w and mask[:, -1].any()))
