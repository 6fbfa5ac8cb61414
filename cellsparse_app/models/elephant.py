"""ELEPHANT-style family (``"elephant"``): background / cell border / cell centre classes.

Sugawara, Çevrim & Averof 2022 (*Tracking cell lineages in 3D by incremental deep learning*,
eLife): a U-Net classifies every pixel as background, cell border or cell centre, is trained from
sparse annotations with a class-weighted NLL plus a Dice term on the centre class, and instances
are recovered from the centres.

Differences from ELEPHANT, on purpose:

* **Targets come from the real annotated shapes**, not from moment-fitted ellipses as in ELEPHANT:
  the centre of an instance is its inner part -- pixels whose distance to the instance's boundary
  is above ``centre_ratio`` times the instance's largest such distance -- and the border is the
  rest of the instance. Irregular cells (phase contrast) therefore keep their shapes.
* Instances are the centres **grown into their cells**: seeded watershed of the centre probability
  inside the foreground (border + centre probability >= ``foreground_threshold``), rather than
  ellipses fitted to the centres.

Labels: annotated background is class 0, unlabelled ``-1`` pixels are ignored by every loss term.
Output channels: class logits ``(background, border, centre)``.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from cellsparse_app.models.base import ModelConfig, ModelFamily, register_family
from cellsparse_app.models.common import (
    check_architecture,
    instance_edt,
    normalised_edt,
    predict_setting,
    remove_small_objects,
)

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

BACKGROUND_CLASS, BORDER_CLASS, CENTRE_CLASS = 0, 1, 2
IGNORE_CLASS = -1


@dataclasses.dataclass(frozen=True)
class ElephantConfig(ModelConfig):
    """Architecture, target and loss settings of the ELEPHANT-style family.

    Attributes:
        base_channels: width of the first U-Net level (as the Cellpose-style family).
        depth: number of down-samplings.
        centre_ratio: a pixel of an instance is *centre* when its distance to the instance's
            boundary exceeds this fraction of the instance's maximum distance, else *border*.
        class_weights: NLL weights of (background, border, centre).
        dice_weight: weight of the soft Dice loss on the centre class.
        prob_threshold: default centre-probability threshold for seeds (``PredictConfig``
            ``prob_threshold`` overrides it).
        foreground_threshold: border + centre probability above which a pixel belongs to a cell.
        blocks: residual conv pairs per U-Net level.
        style: use the U-Net's style vector.
    """

    base_channels: int = 16
    depth: int = 3
    centre_ratio: float = 0.3
    class_weights: tuple[float, float, float] = (1.0, 3.0, 3.0)
    dice_weight: float = 1.0
    prob_threshold: float = 0.5
    foreground_threshold: float = 0.5
    blocks: int = 1
    style: bool = True

    def __post_init__(self) -> None:
        check_architecture(self)
        if not 0.0 <= self.centre_ratio < 1.0:
            raise ValueError(f"centre_ratio must be in [0, 1), got {self.centre_ratio}")
        if len(self.class_weights) != 3 or min(self.class_weights) <= 0:
            raise ValueError(
                f"class_weights must be 3 positive numbers (background, border, centre), "
                f"got {self.class_weights!r}"
            )
        if self.dice_weight < 0:
            raise ValueError(f"dice_weight must be >= 0, got {self.dice_weight}")
        for name in ("prob_threshold", "foreground_threshold"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {getattr(self, name)}")


def centre_border_classes(labels: np.ndarray, centre_ratio: float = 0.3) -> np.ndarray:
    """Per-pixel classes ``int8``: -1 unlabelled, 0 background, 1 border, 2 centre.

    The centre of an instance is where its normalised distance to the boundary exceeds
    ``centre_ratio`` -- never its outermost pixel ring, always its deepest pixel, and only the
    connected part holding the deepest pixel -- the border is the rest of the instance.
    """
    labels = np.asarray(labels)
    classes = np.full(labels.shape, IGNORE_CLASS, np.int8)
    classes[labels == 0] = BACKGROUND_CLASS
    inside = labels > 0
    classes[inside] = BORDER_CLASS
    edt = instance_edt(labels)
    depth = normalised_edt(labels, edt)
    # The outermost ring (edt 1) is always border, so touching cells' centres never touch;
    # the deepest pixel is always centre, so every cell has a seed.
    deep = inside & (((depth > centre_ratio) & (edt > 1)) | (depth >= 1.0))
    classes[_deepest_parts(labels, deep, depth)] = CENTRE_CLASS
    return classes


def _deepest_parts(labels: np.ndarray, deep: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Of each instance's ``deep`` pixels, the connected part holding its deepest pixel.

    Irregular cells can have several deep lobes; keeping one part per instance gives exactly one
    seed per cell (the other lobes stay *border* and are reached by growing the seed).
    """
    parts, n = ndi.label(deep)
    if n == 0:
        return deep
    # Parts split where two instances touch: key each pixel by (part, instance).
    keys, key_of = np.unique(
        parts[deep].astype(np.int64) * (int(labels.max()) + 1) + labels[deep], return_inverse=True
    )
    owner = keys % (int(labels.max()) + 1)
    peak = ndi.maximum(depth[deep], key_of + 1, index=np.arange(1, keys.size + 1))
    # Per instance, the key with the highest peak (ties: the first).
    order = np.lexsort((-np.asarray(peak), owner))
    best = order[np.r_[True, owner[order][1:] != owner[order][:-1]]]
    chosen = np.zeros(keys.size, bool)
    chosen[best] = True
    out = np.zeros(labels.shape, bool)
    out[deep] = chosen[key_of]
    return out


def grow_centres(
    centre_prob: np.ndarray,
    foreground_prob: np.ndarray,
    centre_threshold: float = 0.5,
    foreground_threshold: float = 0.5,
) -> np.ndarray:
    """Instances from centre seeds grown over the foreground (``uint32``, 0 background).

    Each connected centre region (``centre_prob > centre_threshold``) seeds one instance, which a
    watershed grows into the pixels with ``foreground_prob > foreground_threshold``. The flooding
    follows the distance to the foreground's edge (ties broken by the centre probability), so
    touching cells of different sizes split at the neck between them rather than half-way
    between their centres. Foreground not reached from any seed is background.
    """
    foreground = foreground_prob > foreground_threshold
    seeds, n = ndi.label((centre_prob > centre_threshold) & foreground)
    if n == 0:
        return np.zeros(centre_prob.shape, np.uint32)
    elevation = -ndi.distance_transform_edt(foreground) - centre_prob
    grown = watershed(elevation, markers=seeds, mask=foreground)
    return grown.astype(np.uint32)


class ElephantFamily(ModelFamily):
    """ELEPHANT-style three-class segmentation; see the module docstring."""

    name = "elephant"
    title = "ELEPHANT-style (background / border / centre)"
    advice = "irregular whole cells (e.g. phase contrast) from very few annotated ones"
    config_cls = ElephantConfig

    def build(self, cfg: ElephantConfig) -> "torch.nn.Module":
        from cellsparse_app.models.unet import build_unet

        return build_unet(cfg.in_channels, 3, cfg.base_channels, cfg.depth, cfg.blocks, cfg.style)

    def targets(self, labels: np.ndarray, cfg: ElephantConfig) -> np.ndarray:
        """``(1, H, W)`` class index as float: -1 ignored, 0 background, 1 border, 2 centre."""
        return centre_border_classes(labels, cfg.centre_ratio)[None].astype(np.float32)

    def loss(self, output: "torch.Tensor", target: "torch.Tensor", cfg: ElephantConfig):
        """Class-weighted NLL + ``dice_weight`` x (1 - Dice of the centre class), labelled only."""
        import torch
        from torch.nn import functional as F

        logp = F.log_softmax(output.float(), dim=1)
        classes = target[:, 0].round().long()
        labelled = classes >= 0
        safe = classes.clamp(min=0)
        weights = torch.as_tensor(cfg.class_weights, dtype=logp.dtype, device=logp.device)
        pixel_w = torch.where(labelled, weights[safe], logp.new_zeros(()))
        picked = logp.gather(1, safe[:, None])[:, 0]
        zero = logp.new_zeros(())
        nll = torch.where(labelled, -picked * pixel_w, zero).sum() / pixel_w.sum().clamp(min=1e-6)

        centre_p = torch.where(labelled, logp[:, CENTRE_CLASS].exp(), zero)
        centre_t = (classes == CENTRE_CLASS).to(logp.dtype)
        inter = (centre_p * centre_t).sum()
        dice = 1.0 - (2.0 * inter + 1.0) / (centre_p.sum() + centre_t.sum() + 1.0)
        return nll + cfg.dice_weight * dice

    def postprocess(self, output: np.ndarray, cfg: ElephantConfig, predict_cfg: Any) -> np.ndarray:
        """Softmax -> centre seeds grown over the foreground -> ``min_size`` filter."""
        output = np.asarray(output, np.float32)
        if output.ndim != 3 or output.shape[0] != 3:
            raise ValueError(f"elephant output must be (3, H, W), got {output.shape}")
        shifted = output - output.max(axis=0, keepdims=True)
        prob = np.exp(shifted)
        prob /= prob.sum(axis=0, keepdims=True)
        labels = grow_centres(
            prob[CENTRE_CLASS],
            prob[BORDER_CLASS] + prob[CENTRE_CLASS],
            predict_setting(predict_cfg, "prob_threshold", cfg.prob_threshold),
            cfg.foreground_threshold,
        )
        return remove_small_objects(labels, int(predict_setting(predict_cfg, "min_size", 0)))


register_family(ElephantFamily())
