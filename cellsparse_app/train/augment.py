"""Random geometric and intensity augmentation of training patches.

Each patch is resampled from its source image through a random rotation (any angle), log-uniform
zoom and mirror flip, around a given centre (plus a random shift, so annotated pixels do not
always sit in the middle). Pixels that come from *outside the image* are **unlabelled (-1)** in
the labels and 0 in every target channel (a family's "labelled" mask channel): they are never
taught as background. The image there is 0 (the normalised background level, as at prediction).

Target channels follow their family's :meth:`~cellsparse_app.models.base.ModelFamily.target_kinds`:
``"linear"`` and ``"vy"``/``"vx"`` channels are interpolated bilinearly (vector pairs are also
rotated and flipped with the image), ``"nearest"`` channels take the nearest pixel, as labels do.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import NamedTuple, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from cellsparse_app.data.labels import UNLABELLED

logger = logging.getLogger(__name__)

TARGET_KINDS = ("linear", "nearest", "vy", "vx")


@dataclasses.dataclass(frozen=True)
class Transform:
    """One patch's augmentation.

    Attributes:
        angle: rotation in radians.
        scale: zoom (patch pixels per image pixel).
        flip: mirror the columns.
        shift: ``(rows, cols)`` offset of the requested centre from the patch centre, in patch
            pixels.
        contrast, offset: intensity change ``x * contrast + offset``.
    """

    angle: float = 0.0
    scale: float = 1.0
    flip: bool = False
    shift: tuple[float, float] = (0.0, 0.0)
    contrast: float = 1.0
    offset: float = 0.0

    def matrix(self) -> np.ndarray:
        """``Q``: orthogonal part (rotation x flip) in ``(row, col)`` coordinates."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        q = np.array([[c, -s], [s, c]])
        return q @ np.diag([1.0, -1.0]) if self.flip else q


def random_transform(
    rng: np.random.Generator,
    patch_size: int,
    *,
    rotate: bool = True,
    flip: bool = True,
    scale_range: tuple[float, float] = (1.0, 1.0),
    intensity: float = 0.0,
) -> Transform:
    """A random :class:`Transform` for a ``patch_size`` patch."""
    low, high = scale_range
    quarter = patch_size / 4
    return Transform(
        angle=float(rng.uniform(0, 2 * math.pi)) if rotate else 0.0,
        scale=float(math.exp(rng.uniform(math.log(low), math.log(high)))),
        flip=bool(rng.random() < 0.5) if flip else False,
        shift=(float(rng.uniform(-quarter, quarter)), float(rng.uniform(-quarter, quarter))),
        contrast=float(math.exp(rng.uniform(-intensity, intensity))),
        offset=float(rng.uniform(-intensity / 2, intensity / 2)),
    )


class Source(NamedTuple):
    """One training image: ``image`` float32 (C, H, W), ``labels`` int32 (H, W), optional
    whole-image ``targets`` float32 (T, H, W)."""

    image: np.ndarray
    labels: np.ndarray
    targets: np.ndarray | None = None


class Batch(NamedTuple):
    """Augmented patches: ``images`` (B, C, P, P), ``labels`` int32 (B, P, P), ``targets``
    (B, T, P, P) or None."""

    images: torch.Tensor
    labels: torch.Tensor
    targets: torch.Tensor | None


def warp_patches(
    sources: Sequence[Source],
    centres: Sequence[tuple[int, int]],
    transforms: Sequence[Transform],
    patch_size: int,
    kinds: Sequence[str] | None = None,
) -> Batch:
    """Resample one patch per ``(source, centre, transform)``; see the module docstring.

    Args:
        sources: the image (and labels, targets) of each patch.
        centres: ``(row, col)`` in the source that maps to the patch centre (before ``shift``).
        transforms: augmentation of each patch.
        patch_size: output side ``P``.
        kinds: target channel kinds (required when sources carry targets).
    """
    if not (len(sources) == len(centres) == len(transforms)) or not sources:
        raise ValueError("warp_patches needs as many sources, centres and transforms (>= 1)")
    has_targets = sources[0].targets is not None
    if has_targets:
        kinds = tuple(kinds or ())
        if len(kinds) != sources[0].targets.shape[0] or set(kinds) - set(TARGET_KINDS):
            raise ValueError(
                f"target kinds {kinds} do not describe {sources[0].targets.shape[0]} channels"
            )
    n_img = sources[0].image.shape[0]
    linear_t = [i for i, k in enumerate(kinds or ()) if k != "nearest"]
    nearest_t = [i for i, k in enumerate(kinds or ()) if k == "nearest"]
    min_scale = min(t.scale for t in transforms)
    half = int(math.ceil(patch_size / 2 * math.sqrt(2) / min_scale)) + 2
    size = 2 * half + 1
    linear, nearest, grids = [], [], []
    for src, (row, col), tf in zip(sources, centres, transforms):
        q = tf.matrix()
        m = q / tf.scale
        # Source point of the patch centre: the requested centre minus the shifted offset.
        centre = np.array([row, col], np.float64) - m @ np.asarray(tf.shift)
        origin = np.floor(centre).astype(int) - half
        win_lin = [_crop(src.image, origin, size, 0.0)]
        win_near = [_crop(src.labels[None], origin, size, UNLABELLED) + 1.0]
        if has_targets:
            window = _crop(src.targets, origin, size, 0.0)
            win_lin.append(window[linear_t])
            win_near.append(window[nearest_t])
        linear.append(np.concatenate(win_lin))
        nearest.append(np.concatenate(win_near))
        d = np.arange(patch_size, dtype=np.float64) - patch_size // 2
        dr, dc = np.meshgrid(d, d, indexing="ij")
        src_r = centre[0] - origin[0] + m[0, 0] * dr + m[0, 1] * dc
        src_c = centre[1] - origin[1] + m[1, 0] * dr + m[1, 1] * dc
        # grid_sample wants (x, y) in [-1, 1] (align_corners=True: -1 and 1 are pixel centres).
        grids.append(np.stack([src_c, src_r], axis=-1) * (2.0 / (size - 1)) - 1.0)
    grid = torch.from_numpy(np.stack(grids).astype(np.float32))
    lin = F.grid_sample(
        torch.from_numpy(np.stack(linear)), grid, mode="bilinear", align_corners=True
    )
    near = F.grid_sample(
        torch.from_numpy(np.stack(nearest)), grid, mode="nearest", align_corners=True
    )
    images = lin[:, :n_img]
    contrast = torch.tensor([t.contrast for t in transforms], dtype=torch.float32)
    offset = torch.tensor([t.offset for t in transforms], dtype=torch.float32)
    images = images * contrast[:, None, None, None] + offset[:, None, None, None]
    labels = (near[:, 0].round() - 1.0).to(torch.int32)  # 0 outside the window -> -1
    targets = None
    if has_targets:
        targets = torch.empty((len(sources), len(kinds), patch_size, patch_size))
        targets[:, linear_t] = lin[:, n_img:]
        targets[:, nearest_t] = near[:, 1:]
        _rotate_vectors(targets, kinds, transforms)
    return Batch(images.contiguous(), labels, targets)


def _rotate_vectors(
    targets: torch.Tensor, kinds: Sequence[str], transforms: Sequence[Transform]
) -> None:
    # Output vector = Q^T @ source vector (Q maps patch offsets to source offsets).
    for i, kind in enumerate(kinds):
        if kind != "vy":
            continue
        if i + 1 >= len(kinds) or kinds[i + 1] != "vx":
            raise ValueError(f"target kind 'vy' at channel {i} must be followed by 'vx'")
        q = torch.tensor(np.stack([t.matrix() for t in transforms]), dtype=torch.float32)
        vy, vx = targets[:, i].clone(), targets[:, i + 1].clone()
        targets[:, i] = q[:, 0, 0, None, None] * vy + q[:, 1, 0, None, None] * vx
        targets[:, i + 1] = q[:, 0, 1, None, None] * vy + q[:, 1, 1, None, None] * vx


def _crop(array: np.ndarray, origin: np.ndarray, size: int, fill: float) -> np.ndarray:
    """``array[:, r0:r0+size, c0:c0+size]`` with ``fill`` outside the array."""
    channels, height, width = array.shape
    out = np.full((channels, size, size), fill, dtype=np.float32)
    r0, c0 = int(origin[0]), int(origin[1])
    rs, cs = max(r0, 0), max(c0, 0)
    re, ce = min(r0 + size, height), min(c0 + size, width)
    if rs < re and cs < ce:
        out[:, rs - r0 : re - r0, cs - c0 : ce - c0] = array[:, rs:re, cs:ce]
    return out
