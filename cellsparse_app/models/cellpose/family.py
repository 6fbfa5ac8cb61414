"""The Cellpose-style model family: its configuration, masked loss and registry entry."""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from cellsparse_app.models.base import ModelConfig, ModelFamily, register_family
from cellsparse_app.models.cellpose.flows import FLOW_SCALE, flow_targets
from cellsparse_app.models.cellpose.quality import (
    CELLPOSE_FLOW_THRESHOLD,
    calibrated_flow_threshold,
)
from cellsparse_app.models.cellpose.reconstruction import reconstruct_instances
from cellsparse_app.models.common import predict_setting

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


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
        flow_threshold: the model's flow quality threshold (``PredictConfig.flow_threshold``
            overrides it); training calibrates it on the annotated objects
            (:mod:`cellsparse_app.models.flow_quality`). Models saved before it keep Cellpose's 0.4.
    """

    base_channels: int = 16
    depth: int = 3
    blocks: int = 1
    style: bool = True
    flow_weight: float = 1.0
    niter: int = 200
    flow_threshold: float = CELLPOSE_FLOW_THRESHOLD

    def __post_init__(self) -> None:
        for name in ("in_channels", "base_channels", "depth", "blocks", "niter"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"CellposeConfig.{name} must be an integer >= 1, got {value!r}")
        if not self.flow_weight >= 0:
            raise ValueError(f"CellposeConfig.flow_weight must be >= 0, got {self.flow_weight}")
        if not self.flow_threshold >= 0:
            raise ValueError(
                f"CellposeConfig.flow_threshold must be >= 0, got {self.flow_threshold}"
            )


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



class CellposeFamily(ModelFamily):
    """Cellpose-style flows and cell probability; see the module docstring."""

    name = "cellpose"
    title = "Cellpose-style (flows)"
    advice = (
        "the best start; accurate after few steps on nuclei, and on whole cells when many "
        "are annotated"
    )
    config_cls = CellposeConfig
    calibrated_fields = ("flow_threshold",)
    #: From a few annotated cells + a background ring the network over-fits with longer training
    #: and drifts where nothing is labelled (far background, unlike cells, turns "cell"). k = 4
    #: cells per training image + a 6 px ring, seeds 0-2, AP@0.5 on held-out images
    #: (``python -m bench sparse --ks 4 --modes band``): Usiigaci phase contrast 0.509 at 400
    #: steps, 0.439 at 800, 0.404 at ~1200 (150 s); DSB histology 0.488 at 400 steps, ~0.29 at
    #: ~1500 (150 s). Dense and "sparse + all background" labels are not capped.
    sparse_max_steps = 400

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
            flow_threshold=predict_setting(predict_cfg, "flow_threshold", cfg.flow_threshold),
            min_size=getattr(predict_cfg, "min_size", 15),
            niter=cfg.niter,
        )

    def calibrate(
        self, outputs: Sequence[np.ndarray], labels: Sequence[np.ndarray], cfg: CellposeConfig
    ) -> CellposeConfig:
        """Set ``flow_threshold`` from the flows on the annotated objects (see flow_quality)."""
        flows = [np.asarray(out[:2], np.float32) / FLOW_SCALE for out in outputs]
        threshold = calibrated_flow_threshold(flows, labels)
        return dataclasses.replace(cfg, flow_threshold=round(threshold, 4))


register_family(CellposeFamily())
