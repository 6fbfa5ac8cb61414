"""StarDist-style family (``"stardist"``): object probability + radial distances, in PyTorch.

Schmidt et al. 2018 (*Cell Detection with Star-convex Polygons*): for every pixel the network
predicts the probability of being inside an object (normalised distance to the object's boundary)
and the distances to that boundary along ``n_rays`` equally spaced rays. Prediction keeps
candidates on a ``grid`` above a probability threshold, turns them into star-convex polygons,
removes overlapping ones by non-maximum suppression and rasterises the survivors.

Sparse labels (Sugawara 2023): the probability loss is a binary cross-entropy over labelled pixels
only (annotated background is 0, unlabelled ``-1`` is ignored, as ``stardist``'s
``prob[mask_neg_labels] = -1``); the distance loss is an L1 weighted by the object probability, so
it only acts inside annotated objects. Rays are marched until they leave their object, whatever is
next to it (another cell, background or unlabelled); a ray that leaves a training patch while still
inside its object has an unknown length and is ignored.

Learning fast from few objects (held-out DSB nuclei, 5% of the objects + background, 150 steps,
3 seeds: see the README's benchmark table; before the first two changes below, 300 steps left the
predicted probability below 0.5 in nearly every nucleus, AP@0.5 0.01-0.03).

* **Class-balanced BCE** (``balance_classes``): annotated object pixels and annotated background
  pixels each make half of the probability loss. With a few annotated objects and all the
  background, object pixels are ~1% of the labelled pixels; the plain BCE then kept the predicted
  probability of every nucleus below StarDist's 0.5 threshold (peaks 0.1-0.45, by seed). Within
  a sure object the optimum is still the target itself, so the threshold keeps its meaning.
* As StarDist's ``net_conv_after_unet``, the U-Net's features go through a hidden layer
  (``head_channels``) before the outputs: 32 ray lengths are not a linear function of the 16
  features of the first U-Net level.
* As StarDist, the U-Net runs **on the grid** (``grid_network``): a full-resolution stem, then
  everything at half resolution, with outputs and losses on the grid. A step takes a third of
  the time of the full-resolution network (whose rays were learnt at every pixel), for the same
  AP after the same number of steps, so a time budget trains 2-3 times as many steps.
* The probability and NMS thresholds and a **ray-length factor** are **calibrated** after
  training on the annotated objects (:meth:`StarDistFamily.calibrate`), as StarDist's
  ``optimize_thresholds`` does on validation data for the thresholds: briefly trained rays fall
  short of the boundary.
* A higher default learning rate (``StarDistFamily.learning_rate``, 4e-3; the other families
  2e-3): ray lengths are learnt slowly.

Output channels: ``0`` object logit, ``1..n_rays`` ray lengths in units of ``dist_scale`` pixels.
The geometry lives in :mod:`cellsparse_app.models.star_geometry` (no ``stardist`` or TensorFlow
dependency).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from cellsparse_app.models.base import ModelConfig, ModelFamily, register_family
from cellsparse_app.models.common import (
    check_architecture,
    normalised_edt,
    predict_setting,
    probability_logit,
    remove_small_objects,
)
from cellsparse_app.models.star_geometry import (
    distances_to_polygons,
    polygon_nms,
    polygons_to_labels,
    star_distances,
    star_polygon_areas,
)

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

#: Beyond this many candidates only the most probable are kept for NMS (an untrained network
#: can mark the whole image as object; NMS cost grows with the candidate count).
MAX_CANDIDATES = 50_000
#: Candidate polygons with a smaller area (pixels) are dropped before NMS.
MIN_POLYGON_AREA = 4.0
#: Object-probability thresholds tried after training (:meth:`StarDistFamily.calibrate`): never
#: above StarDist's 0.5, since training objects are fitted better than new ones (0.6 and 0.7 were
#: picked on training images and were too strict on held-out nuclei).
PROB_THRESHOLDS: tuple[float, ...] = (0.2, 0.3, 0.4, 0.5)
#: NMS overlap thresholds tried after training, with each probability threshold: StarDist's 0.4
#: and below (more suppression), for the off-centre candidates of briefly trained networks.
NMS_THRESHOLDS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4)
#: Bounds of the ray-length factor fitted after training (:meth:`StarDistFamily.calibrate`).
RAY_SCALE_RANGE: tuple[float, float] = (0.8, 1.25)
#: Fewer known ray lengths than this in the annotated objects' centres: the factor is kept.
MIN_RAYS_FOR_SCALE = 320
#: Thresholds giving more candidates than this (over all calibration crops) are not tried.
MAX_CALIBRATION_CANDIDATES = 20_000


@dataclasses.dataclass(frozen=True)
class StarDistConfig(ModelConfig):
    """Architecture and loss settings of the StarDist-style family.

    Attributes:
        base_channels: width of the first U-Net level (as the Cellpose-style family).
        depth: number of down-samplings.
        n_rays: number of radial distances per pixel (equally spaced angles).
        grid: stride of the candidate grid at prediction (StarDist's ``grid``); probability and
            ray lengths are learnt at every pixel.
        dist_loss_weight: weight of the distance loss (mean absolute ray error in pixels,
            weighted by the object probability) relative to the probability loss.
        dist_scale: pixels per unit of the network's distance channels, so that the raw outputs
            stay near 1 for cell-sized rays (easier to learn from a fresh initialisation).
        prob_threshold: default object-probability threshold for candidates (``PredictConfig``
            ``prob_threshold`` overrides it).
        nms_threshold: default NMS overlap threshold (``PredictConfig.nms_threshold``
            overrides it).
        blocks: residual conv pairs per U-Net level.
        style: use the U-Net's style vector.
        head_channels: width of the hidden 1x1 layer between the U-Net and the outputs (0: the
            U-Net's head gives the outputs directly).
        balance_classes: weigh annotated object and background pixels equally in the BCE (see
            the module docstring); ``False``: every labelled pixel counts the same.
        grid_network: run the U-Net at ``1/grid`` resolution after a full-resolution stem, as
            StarDist does (about 3x faster per step on a CPU); its outputs, and the losses, are on
            the grid. ``False``: a full-resolution U-Net whose rays are learnt at every pixel.
        ray_scale: factor applied to the predicted ray lengths (calibrated after training).
    """

    base_channels: int = 16
    depth: int = 3
    n_rays: int = 32
    grid: int = 2
    dist_loss_weight: float = 0.2
    dist_scale: float = 10.0
    prob_threshold: float = 0.5
    nms_threshold: float = 0.4
    blocks: int = 1
    style: bool = True
    head_channels: int = 64
    balance_classes: bool = True
    grid_network: bool = True
    ray_scale: float = 1.0

    #: Values of fields added after the first release, for configs saved before them: those
    #: models had no hidden head layer, an unbalanced BCE and a full-resolution U-Net (they keep
    #: loading and training exactly as they were trained).
    LEGACY_DEFAULTS: ClassVar[dict[str, Any]] = {
        "head_channels": 0, "balance_classes": False, "grid_network": False,
    }

    @property
    def network_stride(self) -> int:
        """Pixels per network output along each side: ``grid`` on the grid, else 1."""
        return self.grid if self.grid_network else 1

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StarDistConfig":
        if isinstance(data, dict):
            data = {**{k: v for k, v in cls.LEGACY_DEFAULTS.items() if k not in data}, **data}
        return super().from_dict(data)

    def __post_init__(self) -> None:
        check_architecture(self)
        if not isinstance(self.n_rays, int) or self.n_rays < 3:
            raise ValueError(f"n_rays must be an integer >= 3, got {self.n_rays!r}")
        if not isinstance(self.grid, int) or self.grid < 1:
            raise ValueError(f"grid must be an integer >= 1, got {self.grid!r}")
        if self.dist_loss_weight < 0 or self.dist_scale <= 0:
            raise ValueError(
                f"dist_loss_weight must be >= 0 and dist_scale > 0, got "
                f"{self.dist_loss_weight} and {self.dist_scale}"
            )
        if not self.ray_scale > 0:
            raise ValueError(f"ray_scale must be > 0, got {self.ray_scale!r}")
        if not isinstance(self.head_channels, int) or self.head_channels < 0:
            raise ValueError(f"head_channels must be an integer >= 0, got {self.head_channels!r}")
        for name in ("prob_threshold", "nms_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


class StarDistFamily(ModelFamily):
    """StarDist-style rays and object probability; see the module docstring."""

    name = "stardist"
    title = "StarDist-style (star-convex polygons)"
    advice = (
        "round or oval nuclei, dense or sparse, once it trains about 1000 steps (the "
        "default time budget on a fast CPU or a GPU)"
    )
    config_cls = StarDistConfig
    calibrated_fields = ("prob_threshold", "nms_threshold", "ray_scale")
    # Ray lengths are learnt slowly: held-out DSB nuclei, 150 steps, dense seed 0, AP@0.5 0.69
    # at 2e-3, 0.75 at 4e-3, 0.73 at 8e-3 (5% + background, 3 seeds: 0.70 -> 0.73).
    learning_rate = 4e-3

    def build(self, cfg: StarDistConfig) -> "torch.nn.Module":
        from torch import nn

        from cellsparse_app.models.unet import Conv1x1, GridNetwork, build_unet

        on_grid = cfg.network_stride > 1
        unet_in = cfg.base_channels if on_grid else cfg.in_channels
        if not cfg.head_channels:
            net = build_unet(
                unet_in, 1 + cfg.n_rays, cfg.base_channels, cfg.depth, cfg.blocks, cfg.style
            )
        else:
            # StarDist's conv after the U-Net: a hidden layer, then linear outputs.
            body = build_unet(
                unet_in, cfg.head_channels, cfg.base_channels, cfg.depth, cfg.blocks, cfg.style
            )
            out = Conv1x1(cfg.head_channels, 1 + cfg.n_rays, bias=True)
            nn.init.zeros_(out.bias)
            net = nn.Sequential(body, nn.ReLU(), out)
        return GridNetwork(cfg.in_channels, cfg.base_channels, net, cfg.grid) if on_grid else net

    def size_multiple(self, cfg: StarDistConfig) -> int:
        return super().size_multiple(cfg) * cfg.network_stride

    def calibrate(self, outputs, labels, cfg: StarDistConfig) -> StarDistConfig:
        """Fit the prediction settings to the annotated training objects (sparse evaluation).

        1. ``ray_scale``: the factor that makes the predicted rays as long as the annotated ones
           (:meth:`_ray_scale`). Briefly trained rays are too short (a 150-step DSB model: median
           0.87 of the true length, on training and held-out nuclei alike), which costs a whole
           band of IoU. Held-out DSB, 150 steps, seeds 0 and 1: AP@0.75 0.14 -> 0.20 dense and
           0.09 -> 0.12 with 5% + background; AP@0.5 0.77 -> 0.79 and 0.73 -> 0.74.
        2. ``prob_threshold`` and ``nms_threshold`` for those polygons: the pair of
           :data:`PROB_THRESHOLDS` x :data:`NMS_THRESHOLDS` with the best AP@0.5, as StarDist's
           ``optimize_thresholds`` does on validation data. After minutes of training the object
           probability may peak only just above 0.5 inside many nuclei (one held-out DSB run:
           AP@0.5 0.51 at 0.4, 0.07 at 0.5), and its plateaus leave off-centre candidates whose
           rough polygons overlap the best one by less than StarDist's 0.4.

        Ties keep the values nearest the defaults (0.5, 0.4).
        """
        if not outputs:
            return cfg
        truths = [np.asarray(lab) for lab in labels]
        # The ray factor first, so the thresholds are searched for the polygons it gives.
        cfg = dataclasses.replace(cfg, ray_scale=self._ray_scale(outputs, truths, cfg))
        best, best_key = cfg, None
        for threshold in sorted(PROB_THRESHOLDS, reverse=True):
            logit = probability_logit(threshold)
            candidates = sum(
                int(np.count_nonzero(out[0, :: cfg.grid, :: cfg.grid] > logit)) for out in outputs
            )
            if candidates > MAX_CALIBRATION_CANDIDATES:
                # Lower thresholds only add candidates: an untrained network would make the
                # NMS take minutes here.
                logger.info(
                    "calibration stops at threshold %.2f (%d candidates)", threshold, candidates
                )
                break
            for nms in NMS_THRESHOLDS:
                trial = dataclasses.replace(cfg, prob_threshold=threshold, nms_threshold=nms)
                key = (self._ap(outputs, truths, trial), -abs(threshold - 0.5), -abs(nms - 0.4))
                if best_key is None or key > best_key:
                    best, best_key = trial, key
        if best_key is None:
            return cfg
        logger.info(
            "ray scale %.2f, probability threshold %.2f, NMS threshold %.2f (AP@0.5 %.3f on the "
            "annotated objects)", best.ray_scale, best.prob_threshold, best.nms_threshold,
            best_key[0],
        )
        return best

    def _ray_scale(self, outputs, truths, cfg: StarDistConfig) -> float:
        """The factor that makes the median predicted ray as long as the true one, within
        :data:`RAY_SCALE_RANGE`: measured at the candidates (above the model's current
        ``prob_threshold``) in the central half of the annotated objects, where the polygons that
        survive the NMS sit. Thousands of rays make it steady with a few objects, where the AP of
        a few polygons is not."""
        ratios, g, logit = [], cfg.grid, probability_logit(cfg.prob_threshold)
        for out, lab in zip(outputs, truths):
            target = self.targets(lab, cfg)[:, ::g, ::g]
            central = (target[0] > 0.5) & (out[0, ::g, ::g] > logit)
            true = target[1:, central]
            pred = out[1:, ::g, ::g][:, central] * cfg.dist_scale
            known = true > 0  # -1: the ray leaves the crop inside its object
            ratios.append(pred[known] / true[known])
        ratios = np.concatenate(ratios) if ratios else np.zeros(0)
        if ratios.size < MIN_RAYS_FOR_SCALE:
            return cfg.ray_scale
        low, high = RAY_SCALE_RANGE
        return round(float(np.clip(1.0 / max(np.median(ratios), 1e-6), low, high)), 2)

    def _ap(self, outputs, truths, cfg: StarDistConfig) -> float:
        """AP@0.5 of ``cfg``'s own settings on the calibration crops."""
        from cellsparse_app.data.metrics import evaluate_many
        from cellsparse_app.predict import PredictConfig

        preds = [self.postprocess(out, cfg, PredictConfig(min_size=0)) for out in outputs]
        return round(float(evaluate_many(truths, preds, (0.5,))["ap50"]), 6)

    def targets(self, labels: np.ndarray, cfg: StarDistConfig) -> np.ndarray:
        """``(1 + n_rays, H, W)``: object probability (-1 unlabelled) then ray lengths.

        Ray lengths are ``-1`` (ignored) where the ray leaves the patch inside its object; 0
        outside instances and, for a network on the grid, off the grid (the loss skips them).
        """
        labels = np.asarray(labels)
        prob = normalised_edt(labels)
        prob[labels < 0] = -1.0
        # A network on the grid is trained there only: rays elsewhere would be unused work.
        dist = star_distances(labels, cfg.n_rays, grid=cfg.network_stride, unknown_outside=True)
        return np.concatenate([prob[None], dist], axis=0)

    def loss(self, output: "torch.Tensor", target: "torch.Tensor", cfg: StarDistConfig):
        """BCE over labelled pixels + ``dist_loss_weight`` x probability-weighted ray L1.

        With ``balance_classes`` the BCE is the mean of its average over annotated object pixels
        and its average over annotated background pixels (of those present in the batch).
        """
        import torch
        from torch.nn import functional as F

        output, target = output.float(), target.float()
        g = cfg.network_stride
        if g > 1:
            # The network's outputs live on the grid (nearest up-sampled): train those only.
            output, target = output[:, :, ::g, ::g], target[:, :, ::g, ::g]
        prob_t = target[:, 0]
        labelled = prob_t >= 0
        bce = F.binary_cross_entropy_with_logits(
            output[:, 0], prob_t.clamp(min=0), reduction="none"
        )
        zero = output.new_zeros(())
        if cfg.balance_classes:
            parts = [prob_t > 0, prob_t == 0]  # annotated objects, annotated background
            counts = [m.sum() for m in parts]
            prob_loss = sum(
                torch.where(m, bce, zero).sum() / n.clamp(min=1) for m, n in zip(parts, counts)
            ) / sum((n > 0).float() for n in counts).clamp(min=1)
        else:
            prob_loss = torch.where(labelled, bce, zero).sum() / labelled.sum().clamp(min=1)

        dist_t = target[:, 1:]
        weight = torch.where(dist_t >= 0, prob_t.clamp(min=0)[:, None], zero)
        dist = output[:, 1:] * cfg.dist_scale
        err = torch.where(weight > 0, weight * (dist - dist_t).abs(), zero)
        dist_loss = err.sum() / weight.sum().clamp(min=1e-6)
        return prob_loss + cfg.dist_loss_weight * dist_loss

    def postprocess(self, output: np.ndarray, cfg: StarDistConfig, predict_cfg: Any) -> np.ndarray:
        """Candidates on the grid above the probability threshold -> polygon NMS -> labels."""
        output = np.asarray(output, np.float32)
        if output.ndim != 3 or output.shape[0] != 1 + cfg.n_rays:
            raise ValueError(
                f"stardist output must be ({1 + cfg.n_rays}, H, W), got {output.shape}"
            )
        threshold = predict_setting(predict_cfg, "prob_threshold", cfg.prob_threshold)
        nms = predict_setting(predict_cfg, "nms_threshold", cfg.nms_threshold)
        min_size = int(predict_setting(predict_cfg, "min_size", 0))
        shape = output.shape[1:]
        grid_logit = output[0, :: cfg.grid, :: cfg.grid]
        rows, cols = np.nonzero(grid_logit > probability_logit(threshold))
        scores = 1.0 / (1.0 + np.exp(-grid_logit[rows, cols].astype(np.float64)))
        rows, cols = rows * cfg.grid, cols * cfg.grid
        dists = np.maximum(output[1:, rows, cols].T * (cfg.dist_scale * cfg.ray_scale), 1e-3)
        # Polygons smaller than the smallest allowed object are not candidates (an untrained
        # network gives thousands of near-empty ones).
        big = star_polygon_areas(dists) >= max(min_size, MIN_POLYGON_AREA)
        rows, cols, scores, dists = rows[big], cols[big], scores[big], dists[big]
        if scores.size > MAX_CANDIDATES:
            logger.warning(
                "%d candidates; keeping the %d most probable", scores.size, MAX_CANDIDATES
            )
            top = np.argsort(-scores, kind="stable")[:MAX_CANDIDATES]
            rows, cols, scores, dists = rows[top], cols[top], scores[top], dists[top]
        points = np.stack([rows, cols], axis=1)
        kept = polygon_nms(points, dists, scores, nms)
        coords = distances_to_polygons(points[kept], dists[kept])
        labels = polygons_to_labels(coords, shape, scores[kept])
        return remove_small_objects(labels, min_size)


register_family(StarDistFamily())
