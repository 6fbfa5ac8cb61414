"""Cellpose-style family (``"cellpose"``): flows to the cell centre + cell probability.

Stringer et al. 2021: for every cell pixel the network predicts the unit vector of a diffusion
flow towards the cell's centre (times 5) and a cell-probability logit; following the flows groups
pixels into instances. Targets and mask reconstruction use the ``cellpose`` 4 package's dynamics
(``masks_to_flows_gpu``, ``compute_masks``), which run on a CPU as well.

Sparse labels (Sugawara 2023): targets come from the *annotated* instances only; annotated
background gets probability 0 and zero flow; unlabelled pixels (-1) are excluded from both loss
terms, which are averaged over labelled pixels only.

Target channels: ``0, 1`` flow (row, column; unit vectors), ``2`` cell probability (0/1),
``3`` labelled mask (1 labelled, 0 unlabelled). Output channels: ``0, 1`` flow x5, ``2`` logit.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from cellsparse_app.labels import relabel_sequential, validate_labels
from cellsparse_app.models.base import ModelConfig, ModelFamily, register_family

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

#: Cellpose scales unit flows by 5 in the network output.
FLOW_SCALE = 5.0
#: Masks larger than this fraction of the image are dropped (Cellpose's ``max_size_fraction``).
MAX_SIZE_FRACTION = 0.4


@dataclasses.dataclass(frozen=True)
class CellposeConfig(ModelConfig):
    """Architecture and loss settings of the Cellpose-style family.

    Attributes:
        base_channels: width of the first U-Net level.
        depth: number of down-samplings.
        blocks: residual conv pairs per U-Net level.
        style: use the style vector.
        flow_weight: weight of the flow MSE relative to the probability BCE.
        niter: steps of the flow dynamics at prediction (enough for cells up to ~2x this wide).
    """

    base_channels: int = 32
    depth: int = 3
    blocks: int = 1
    style: bool = True
    flow_weight: float = 1.0
    niter: int = 200

    def __post_init__(self) -> None:
        for name in ("in_channels", "base_channels", "depth", "blocks", "niter"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"CellposeConfig.{name} must be an integer >= 1, got {value!r}")
        if not self.flow_weight >= 0:
            raise ValueError(f"CellposeConfig.flow_weight must be >= 0, got {self.flow_weight}")


def _dynamics():
    from cellsparse_app._compat import ensure_torchvision

    ensure_torchvision()  # cellpose imports torchvision
    from cellpose import dynamics

    return dynamics


def instance_flows(instances: np.ndarray) -> np.ndarray:
    """Cellpose's diffusion flows (unit vectors, ``float32 (2, H, W)``) of sequential instances.

    Args:
        instances: ``(H, W)`` integers, 0 nothing, 1..N instances (consecutive).
    """
    import torch

    if not instances.any():
        return np.zeros((2, *instances.shape), np.float32)
    flows, _ = _dynamics().masks_to_flows_gpu(instances, device=torch.device("cpu"))
    return flows.astype(np.float32)


def flow_targets(labels: np.ndarray) -> np.ndarray:
    """``float32 (4, H, W)`` targets of a label image: flow y, flow x, probability, labelled.

    Only annotated instances get flows; background and unlabelled pixels get zero flow, and
    unlabelled pixels get ``labelled = 0``.
    """
    labels = relabel_sequential(validate_labels(labels))
    instances = np.where(labels > 0, labels, 0)
    out = np.zeros((4, *labels.shape), np.float32)
    out[:2] = instance_flows(instances)
    out[2] = labels > 0
    out[3] = labels >= 0
    return out


def masked_loss(
    output: "torch.Tensor", target: "torch.Tensor", flow_weight: float = 1.0
) -> "torch.Tensor":
    """Flow MSE (on 5x flows, halved as in Cellpose) + probability BCE, over labelled pixels.

    ``torch.where`` (not multiplication) excludes unlabelled pixels, so whatever the output or the
    targets hold there -- even NaN -- the loss is exactly the same.
    """
    import torch
    from torch.nn import functional as F

    output = output.float()
    labelled = target[:, 3] > 0.5
    count = labelled.sum().clamp(min=1)
    flow_err = ((output[:, :2] - FLOW_SCALE * target[:, :2]) ** 2).mean(dim=1) / 2
    zero = torch.zeros((), dtype=output.dtype, device=output.device)
    flow_loss = torch.where(labelled, flow_err, zero).sum() / count
    logits = torch.where(labelled, output[:, 2], zero)
    bce = F.binary_cross_entropy_with_logits(
        logits, torch.where(labelled, target[:, 2], zero), reduction="none"
    )
    prob_loss = torch.where(labelled, bce, zero).sum() / count
    return flow_weight * flow_loss + prob_loss


def _logit(p: float) -> float:
    p = min(max(float(p), 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def reconstruct_instances(
    output: np.ndarray,
    *,
    prob_threshold: float = 0.5,
    flow_threshold: float | None = 0.4,
    min_size: int = 15,
    niter: int = 200,
) -> np.ndarray:
    """Instance labels (``uint32``) from ``(3, H, W)`` flows x5 + probability logits.

    Args:
        output: network output (or targets converted to it) of one image.
        prob_threshold: cell probability (0..1) above which pixels are followed.
        flow_threshold: drop masks whose flows disagree with their shape's flows by more than
            this (Cellpose's quality control); ``None`` or 0 keeps all.
        min_size: masks with fewer pixels are removed (holes are filled).
        niter: steps of the flow dynamics.
    """
    import torch

    output = np.asarray(output, dtype=np.float32)
    if output.ndim != 3 or output.shape[0] < 3:
        raise ValueError(f"expected a (3, H, W) Cellpose output, got shape {output.shape}")
    if not 0.0 < prob_threshold < 1.0:
        raise ValueError(f"prob_threshold must be in (0, 1), got {prob_threshold}")
    dynamics = _dynamics()
    masks = dynamics.compute_masks(
        output[:2],
        output[2],
        niter=niter,
        cellprob_threshold=_logit(prob_threshold),
        flow_threshold=flow_threshold or 0.0,
        min_size=min_size if min_size and min_size > 0 else -1,
        max_size_fraction=MAX_SIZE_FRACTION,
        device=torch.device("cpu"),
    )
    return np.asarray(masks).astype(np.uint32)


class CellposeFamily(ModelFamily):
    """Cellpose-style flows and cell probability; see the module docstring."""

    name = "cellpose"
    title = "Cellpose-style (flows)"
    config_cls = CellposeConfig

    def build(self, cfg: CellposeConfig) -> "torch.nn.Module":
        from cellsparse_app.models.unet import build_unet

        return build_unet(cfg.in_channels, 3, cfg.base_channels, cfg.depth, cfg.blocks, cfg.style)

    def targets(self, labels: np.ndarray, cfg: CellposeConfig) -> np.ndarray:
        return flow_targets(labels)

    def target_kinds(self, cfg: CellposeConfig) -> tuple[str, ...]:
        return ("vy", "vx", "nearest", "nearest")

    def loss(
        self, output: "torch.Tensor", target: "torch.Tensor", cfg: CellposeConfig
    ) -> "torch.Tensor":
        return masked_loss(output, target, cfg.flow_weight)

    def postprocess(self, output: np.ndarray, cfg: CellposeConfig, predict_cfg: Any) -> np.ndarray:
        threshold = getattr(predict_cfg, "prob_threshold", None)
        return reconstruct_instances(
            output,
            prob_threshold=0.5 if threshold is None else threshold,
            flow_threshold=getattr(predict_cfg, "flow_threshold", 0.4),
            min_size=getattr(predict_cfg, "min_size", 15),
            niter=cfg.niter,
        )


register_family(CellposeFamily())
