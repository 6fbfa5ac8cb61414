"""Prediction with a :class:`~cellsparse_app.models.trained.TrainedModel` on images of any size.

The image is normalised as in training (``model.image``), resized by the model's object scale
(``model.config.scale``, or the one a given ``PredictConfig.diameter`` asks for; see
:mod:`cellsparse_app.data.object_scale`), cut into overlapping tiles (at most
``tile_size`` square; a smaller image is one tile), run through the network in batches under
``torch.inference_mode`` (channels-last; fp16 autocast on CUDA), and the tiles' outputs are blended
with weights that fall off towards the tile edges, so there are no seams. The family then turns
the blended ``(K, H, W)`` output into instance labels, which are resized back to the image's grid
(nearest neighbour).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Callable

import numpy as np
import torch

from cellsparse_app.data.images import validate_image
from cellsparse_app.data.object_scale import (
    prediction_scale,
    rescale_image,
    resize_labels,
    resize_output,
)
from cellsparse_app.json_config import JsonConfig
from cellsparse_app.models.trained import TrainedModel
from cellsparse_app.runtime import device as devices

logger = logging.getLogger(__name__)

#: ``progress(done, total)``: tiles processed so far out of the image's tile count.
Progress = Callable[[int, int], None]
#: Values of ``PredictConfig.resample``.
RESAMPLE = ("labels", "output")


@dataclasses.dataclass(frozen=True)
class PredictConfig(JsonConfig):
    """Prediction settings.

    Attributes:
        prob_threshold: object probability (0..1) a pixel needs to be part of an object;
            ``None``: the family's default (0.5 for Cellpose-style).
        flow_threshold: Cellpose-style quality control: masks whose flows disagree with their
            shape by more than this are dropped (0 keeps all); ``None``: the model's own,
            calibrated in training (``CellposeConfig.flow_threshold``).
        nms_threshold: StarDist-style overlap threshold of the non-maximum suppression;
            ``None``: the model's own (``StarDistConfig.nms_threshold``).
        min_size: objects with fewer pixels are removed.
        tile_size: largest tile side given to the network (memory bound).
        tile_overlap: overlap of neighbouring tiles as a fraction of ``tile_size``.
        batch_size: tiles per network call.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        diameter: diameter (pixels) of the cells in the image to predict; ``None``: the model's
            training diameter (images of the training magnification). The image is resized so
            that its cells get the size the network was trained on.
        resample: how results of a resized image return to its grid: ``"labels"`` (instances
            found at the network's scale, label image resized by nearest neighbour; fast) or
            ``"output"`` (network output resized bilinearly, instances found at full size).
    """

    prob_threshold: float | None = None
    flow_threshold: float | None = None
    nms_threshold: float | None = None
    min_size: int = 15
    tile_size: int = 1024
    tile_overlap: float = 0.125
    batch_size: int = 4
    device: str = "auto"
    diameter: float | None = None
    resample: str = "labels"

    def __post_init__(self) -> None:
        if self.prob_threshold is not None and not 0 < self.prob_threshold < 1:
            raise ValueError(f"prob_threshold must be in (0, 1) or None, got {self.prob_threshold}")
        if self.flow_threshold is not None and not self.flow_threshold >= 0:
            raise ValueError(f"flow_threshold must be >= 0 or None, got {self.flow_threshold}")
        if self.nms_threshold is not None and not 0 <= self.nms_threshold <= 1:
            raise ValueError(f"nms_threshold must be in [0, 1] or None, got {self.nms_threshold}")
        if not isinstance(self.min_size, int) or self.min_size < 0:
            raise ValueError(f"min_size must be an integer >= 0, got {self.min_size!r}")
        if not isinstance(self.tile_size, int) or self.tile_size < 32:
            raise ValueError(f"tile_size must be an integer >= 32, got {self.tile_size!r}")
        if not 0 <= self.tile_overlap < 0.5:
            raise ValueError(f"tile_overlap must be in [0, 0.5), got {self.tile_overlap}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        if self.device not in devices.DEVICES:
            raise ValueError(
                f"device must be one of {', '.join(devices.DEVICES)}, got {self.device!r}"
            )
        if self.diameter is not None and not (
            isinstance(self.diameter, (int, float)) and self.diameter > 0
        ):
            raise ValueError(f"diameter must be > 0 pixels or None, got {self.diameter!r}")
        if self.resample not in RESAMPLE:
            raise ValueError(
                f"resample must be one of {', '.join(RESAMPLE)}, got {self.resample!r}"
            )


def predict_raw(
    model: TrainedModel,
    image: np.ndarray,
    cfg: PredictConfig = PredictConfig(),
    *,
    progress: Progress | None = None,
) -> np.ndarray:
    """The network's blended output for ``image`` on the image's grid: ``float32 (K, H, W)``.

    Args:
        model: a trained model.
        image: ``(H, W)`` or ``(H, W, C)`` image as read (any numeric dtype).
        cfg: tiling, scale and device settings.
        progress: called as ``progress(done, total)`` after each batch of tiles.

    Raises:
        TypeError, ValueError: unusable image, or channels that do not match the model.
    """
    raw, _ = predict_scaled(model, image, cfg, progress=progress)
    return resize_output(raw, np.shape(image)[:2])


def predict_scaled(
    model: TrainedModel,
    image: np.ndarray,
    cfg: PredictConfig = PredictConfig(),
    *,
    progress: Progress | None = None,
) -> tuple[np.ndarray, float]:
    """``(output, scale)``: the blended output at the network's scale (``float32 (K, h, w)``,
    ``(h, w)`` the image's shape times ``scale``) and the resize factor used.

    See :func:`predict_raw` for the arguments and errors.
    """
    image = validate_image(image)
    x = model.image.prepare(image)
    expected = model.config.in_channels
    if x.shape[0] != expected:
        raise ValueError(
            f"the model takes {expected} channel(s) but the image gives {x.shape[0]} "
            f"(image shape {image.shape}, model channels {model.image.channels})"
        )
    scale = prediction_scale(model.config.scale, model.config.diameter, cfg.diameter)
    x = rescale_image(x, scale)
    device = devices.resolve_device(cfg.device)
    network = model.network
    if next(network.parameters()).device != device:
        network = network.to(device)
        model.network = network
    network = devices.prepare_module(network, device).eval()
    multiple = model.family_impl.size_multiple(model.config)
    return predict_array(network, x, cfg, device, multiple, progress), scale


def predict_instances(
    model: TrainedModel,
    image: np.ndarray,
    cfg: PredictConfig = PredictConfig(),
    *,
    progress: Progress | None = None,
) -> np.ndarray:
    """Instance labels of ``image`` on its grid: ``uint32 (H, W)``, 0 background, 1..N objects.

    At a scale other than 1 the objects are found at the network's scale (``min_size`` scaled
    with the area) and the labels resized back, or with ``cfg.resample == "output"`` found in the
    output resized back. See :func:`predict_raw` for the arguments.
    """
    raw, scale = predict_scaled(model, image, cfg, progress=progress)
    shape = np.shape(image)[:2]
    post_cfg = cfg
    if scale != 1 and cfg.resample == "output":
        raw = resize_output(raw, shape)
    elif scale != 1:
        post_cfg = cfg.replace(min_size=int(round(cfg.min_size * scale * scale)))
    labels = model.family_impl.postprocess(raw, model.config, post_cfg)
    labels = np.asarray(labels).astype(np.uint32, copy=False)
    if labels.shape != tuple(shape):
        labels = resize_labels(labels, shape)
    return labels


def tile_layout(length: int, tile: int, overlap: int, multiple: int = 1) -> tuple[int, list[int]]:
    """``(tile length, start offsets)`` of the fewest even tiles covering ``length``.

    Tiles overlap by at least ``overlap`` pixels and their length is a multiple of ``multiple``
    and at most ``tile`` (``length`` itself, rounded up, when it fits in one tile).
    """
    if length <= tile:
        return _round_up(length, multiple), [0]
    count = int(math.ceil((length - overlap) / max(tile - overlap, 1)))
    size = min(_round_up(int(math.ceil((length + (count - 1) * overlap) / count)), multiple), tile)
    count = max(count, int(math.ceil((length - overlap) / max(size - overlap, 1))))
    starts = np.linspace(0, length - size, count).round().astype(int)
    return size, [int(v) for v in starts]


def _ramp(length: int, overlap: int) -> np.ndarray:
    """1-D blending weights: 1 in the middle, falling linearly to ~0 over ``overlap`` pixels."""
    ramp = np.ones(length, np.float32)
    overlap = min(overlap, length // 2)
    if overlap > 0:
        edge = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap
        ramp[:overlap] = edge
        ramp[-overlap:] = edge[::-1]
    return ramp


def predict_array(
    network: torch.nn.Module,
    x: np.ndarray,
    cfg: PredictConfig,
    device: torch.device,
    multiple: int,
    progress: Progress | None = None,
) -> np.ndarray:
    """Blended tiled output ``(K, H, W)`` of ``network`` (on ``device``, eval mode) for a
    prepared ``float32 (C, H, W)`` array; tile sides are multiples of ``multiple``."""
    channels, height, width = x.shape
    tile = max(multiple, cfg.tile_size // multiple * multiple)
    overlap = int(round(tile * cfg.tile_overlap))
    th, row_starts = tile_layout(height, tile, overlap, multiple)
    tw, col_starts = tile_layout(width, tile, overlap, multiple)
    # Pad with 0 (the normalised background level, as outside the image in training).
    ph, pw = max(height, th), max(width, tw)
    padded = np.zeros((channels, ph, pw), np.float32)
    padded[:, :height, :width] = x
    boxes = [(r, c) for r in row_starts for c in col_starts]
    ramp_r = overlap if len(row_starts) > 1 else 0
    ramp_c = overlap if len(col_starts) > 1 else 0
    weight = np.outer(_ramp(th, ramp_r), _ramp(tw, ramp_c))
    out_sum: np.ndarray | None = None
    weight_sum = np.zeros((ph, pw), np.float32)
    precision = "fp16" if device.type == "cuda" else "fp32"
    with torch.inference_mode():
        for first in range(0, len(boxes), cfg.batch_size):
            chunk = boxes[first : first + cfg.batch_size]
            batch = torch.from_numpy(
                np.stack([padded[:, r : r + th, c : c + tw] for r, c in chunk])
            )
            with devices.autocast(device, precision):
                out = network(devices.to_device(batch, device))
            out = out.float().cpu().numpy()
            if out_sum is None:
                out_sum = np.zeros((out.shape[1], ph, pw), np.float32)
            for (r, c), o in zip(chunk, out):
                out_sum[:, r : r + th, c : c + tw] += o * weight
                weight_sum[r : r + th, c : c + tw] += weight
            if progress is not None:
                progress(min(first + cfg.batch_size, len(boxes)), len(boxes))
    out_sum /= np.maximum(weight_sum, 1e-6)
    return np.ascontiguousarray(out_sum[:, :height, :width])


def _round_up(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)
