"""Configuration of the SAM prompt engine: which model, where its weights are, how it runs.

Three frozen dataclasses (JSON round trip through :class:`~cellsparse_app.json_config.JsonConfig`):

* :class:`SamConfig`: backend (``vit_t`` MobileSAM by default, ``vit_b/l/h`` SAM, ``fallback``),
  checkpoint, device, encoder engine and precision, embedding cache size, download policy.
* :class:`AutoMaskConfig`: SAM's automatic mask generator parameters (same names and defaults
  as ``segment_anything.SamAutomaticMaskGenerator``) plus how overlaps become one label image.
* :class:`RenderConfig`: how a microscopy image (16-bit, multichannel ...) becomes the RGB
  ``uint8`` picture SAM expects.

Environment variables (servers): ``CELLSPARSE_SAM_MODEL`` (model type),
``CELLSPARSE_SAM_CHECKPOINT`` (local checkpoint file), ``CELLSPARSE_OFFLINE=1`` (never download),
``CELLSPARSE_SAM_ENCODER`` (encoder engine), ``CELLSPARSE_SAM_ENCODER_SIDE`` (encoder input side);
parsed by :mod:`cellsparse_app.settings`, applied by :meth:`SamConfig.from_env`.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Mapping

from cellsparse_app.json_config import JsonConfig
from cellsparse_app.sam.input_side import STANDARD_SIDE, check_encoder_side
from cellsparse_app.settings import from_environment

logger = logging.getLogger(__name__)

ENCODER_ENGINES = ("auto", "torch", "onnx")
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
DEVICES = ("auto", "cpu", "cuda")
OUTPUT_MODES = ("single", "all", "largest", "smallest", "best")
#: Which automatic mask wins when two overlap (:attr:`AutoMaskConfig.priority`).
PRIORITIES = ("quality", "smallest", "largest", "none")


@dataclasses.dataclass(frozen=True)
class SamConfig(JsonConfig):
    """Which SAM backend answers prompts and how it runs.

    Attributes:
        model_type: backend name from :mod:`cellsparse_app.sam.registry`: ``vit_t`` (MobileSAM,
            default), ``vit_b``, ``vit_l``, ``vit_h`` (SAM) or ``fallback`` (classical, offline).
        checkpoint: local checkpoint file (``.pt``/``.pth`` state dict). None: the official
            weights of ``model_type`` from the cache directory, downloaded on first use.
        weights: name of registered weights (see ``WeightsManager.register``) to use instead of
            the official ones for ``model_type``.
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        encoder_engine: ``torch``, ``onnx`` (ONNX Runtime export of the image encoder, cached on
            disk and checked against PyTorch) or ``auto`` (the backend's measured fastest).
        precision: ``fp32``, ``bf16``/``fp16`` (autocast, torch engine), ``int8`` (dynamically
            quantised ONNX encoder, approximate) or ``auto`` (fp32 on CPU, bf16/fp16 on CUDA).
        encoder_side: side of the square image the encoder sees. 1024 is SAM's own (a smaller
            image is upsampled to it); ``vit_t`` also runs at a smaller multiple of 64, e.g. 512:
            ~4x faster embeddings, coarser masks for small objects, accuracy not validated
            (:mod:`cellsparse_app.sam.input_side`).
        threads: intra-op threads of the ONNX encoder (None: torch's current setting).
        decoder_threads: OpenMP threads decoding a click on CPU, set for the calling thread
            only (:mod:`cellsparse_app.runtime.threads`). None: automatic, 1 while the machine is
            busy (load average above half the cores: waiting at a barrier per operation then
            costs up to 8x), all otherwise; 0: torch's setting.
        cache_size: image embeddings kept in memory (LRU, shared by all users).
        download: download missing official weights on first use.
        fallback_if_unavailable: answer with the classical ``fallback`` backend (and say so)
            when the weights are missing and cannot be downloaded, instead of raising.
        random_weights: randomly initialised network, for tests and benchmarks only (the masks
            are meaningless; timings are real).
        seed: seed of the random initialisation.
    """

    model_type: str = "vit_t"
    checkpoint: str | None = None
    weights: str | None = None
    device: str = "auto"
    encoder_engine: str = "auto"
    precision: str = "auto"
    encoder_side: int = 1024
    threads: int | None = None
    decoder_threads: int | None = None
    cache_size: int = 8
    download: bool = True
    fallback_if_unavailable: bool = True
    random_weights: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        from cellsparse_app.sam.registry import list_backends

        if self.model_type not in list_backends():
            raise ValueError(
                f"unknown SAM model_type {self.model_type!r}; available: "
                f"{', '.join(list_backends())}"
            )
        _check_choice("device", self.device, DEVICES)
        _check_choice("encoder_engine", self.encoder_engine, ENCODER_ENGINES)
        _check_choice("precision", self.precision, PRECISIONS)
        if self.precision == "int8" and self.encoder_engine == "torch":
            raise ValueError("precision='int8' needs encoder_engine='onnx' (or 'auto')")
        if self.precision in ("bf16", "fp16") and self.encoder_engine == "onnx":
            raise ValueError(f"precision={self.precision!r} needs encoder_engine='torch'")
        check_encoder_side(self.encoder_side)
        if self.encoder_side != STANDARD_SIDE and self.model_type != "vit_t":
            raise ValueError(
                f"encoder_side={self.encoder_side} is only available for vit_t (MobileSAM), "
                f"not {self.model_type!r}"
            )
        if not isinstance(self.cache_size, int) or self.cache_size < 1:
            raise ValueError(f"cache_size must be an integer >= 1, got {self.cache_size!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"threads must be None or an integer >= 1, got {self.threads!r}")
        if self.decoder_threads is not None and (not isinstance(self.decoder_threads, int)
                                                 or self.decoder_threads < 0):
            raise ValueError(
                f"decoder_threads must be None or an integer >= 0, got {self.decoder_threads!r}")
        if self.checkpoint is not None and self.random_weights:
            raise ValueError("give either checkpoint or random_weights=True, not both")

    @classmethod
    def from_env(
        cls, base: "SamConfig | None" = None, environ: Mapping[str, str] | None = None
    ) -> "SamConfig":
        """``base`` (default config) overridden by the ``CELLSPARSE_SAM_*`` environment
        (``environ``: a mapping instead of ``os.environ``, see
        :func:`cellsparse_app.settings.from_environment`)."""
        env = from_environment(environ)
        cfg = base or cls()
        changes: dict = {}
        if env.sam_model is not None:
            changes["model_type"] = env.sam_model
        if env.sam_checkpoint is not None:
            changes["checkpoint"] = env.sam_checkpoint
        if env.sam_encoder is not None:
            changes["encoder_engine"] = env.sam_encoder
        if env.sam_encoder_side is not None:
            changes["encoder_side"] = env.sam_encoder_side
        if env.offline:
            changes["download"] = False
        return cfg.replace(**changes) if changes else cfg


@dataclasses.dataclass(frozen=True)
class AutoMaskConfig(JsonConfig):
    """Automatic mask generation: SAM's parameters (names and defaults of
    ``SamAutomaticMaskGenerator``) plus how the masks become one label image.

    Attributes:
        points_per_side: grid of ``points_per_side**2`` single-point prompts.
        points_per_batch: prompts decoded together (memory vs speed).
        pred_iou_thresh: keep masks whose predicted quality is above this.
        stability_score_thresh: keep masks stable under a change of the mask threshold.
        stability_score_offset: threshold change used for the stability score.
        box_nms_thresh: box IoU above which duplicate masks are suppressed.
        crop_n_layers: extra layers of image crops (0: whole image only).
        crop_nms_thresh: box IoU for suppressing duplicates between crops.
        crop_overlap_ratio: overlap of neighbouring crops (fraction of the crop size).
        crop_n_points_downscale_factor: fewer points per side in deeper crop layers.
        min_mask_region_area: remove holes and islands smaller than this (pixels) in each mask,
            and objects smaller than this in the final label image.
        max_mask_region_fraction: drop masks covering more than this fraction of the image
            (typically "the background"); 1.0 keeps everything.
        min_visible_fraction: when masks overlap, smaller masks are painted over larger ones; a
            mask left with less than this fraction of its own area visible is dropped.
        multimask_output: three candidate masks per point prompt (SAM's generator, default);
            False: SAM's single-output mask, one per prompt.
        priority: which of two duplicate masks (box IoU above ``box_nms_thresh``) is kept:
            ``quality`` (the higher predicted IoU: SAM's own NMS), ``smallest``, ``largest``
            (by area), or ``none``: keep overlapping masks (only near-identical copies from
            neighbouring prompts are merged); the result then carries every mask whole
            (:attr:`~cellsparse_app.sam.automask.AutoMaskResult.overlapping`). samapi's
            ``output_type`` values map onto these two fields
            (:data:`cellsparse_app.sam.automask.SAMAPI_OUTPUT_TYPES`). The fallback engine has
            one mask per object, so only ``none`` vs. the others can differ there.
    """

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0
    max_mask_region_fraction: float = 1.0
    min_visible_fraction: float = 0.5
    multimask_output: bool = True
    priority: str = "quality"

    def __post_init__(self) -> None:
        _check_choice("priority", self.priority, PRIORITIES)
        if not isinstance(self.multimask_output, bool):
            raise TypeError("multimask_output must be true or false, got "
                            f"{self.multimask_output!r}")
        _check_range("points_per_side", self.points_per_side, 1, 256, integer=True)
        _check_range("points_per_batch", self.points_per_batch, 1, 4096, integer=True)
        for name in ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh",
                     "crop_nms_thresh", "max_mask_region_fraction", "min_visible_fraction"):
            _check_range(name, getattr(self, name), 0.0, 1.0)
        _check_range("stability_score_offset", self.stability_score_offset, 0.0, 1e6)
        _check_range("crop_n_layers", self.crop_n_layers, 0, 4, integer=True)
        _check_range("crop_overlap_ratio", self.crop_overlap_ratio, 0.0, 0.99)
        _check_range("crop_n_points_downscale_factor", self.crop_n_points_downscale_factor,
                     1, 64, integer=True)
        _check_range("min_mask_region_area", self.min_mask_region_area, 0, 10**9, integer=True)

    def sam_kwargs(self) -> dict:
        """Keyword arguments for ``SamAutomaticMaskGenerator`` (SAM's own parameters only).

        With a ``priority`` other than ``quality`` SAM's own NMS is switched off
        (``box_nms_thresh=1``): :func:`cellsparse_app.sam.automask.suppress_duplicates` then
        removes duplicates in the priority's order."""
        names = ("points_per_side", "points_per_batch", "pred_iou_thresh",
                 "stability_score_thresh", "stability_score_offset", "box_nms_thresh",
                 "crop_n_layers", "crop_nms_thresh", "crop_overlap_ratio",
                 "crop_n_points_downscale_factor", "min_mask_region_area")
        kwargs = {n: getattr(self, n) for n in names}
        if self.priority != "quality":
            kwargs["box_nms_thresh"] = 1.0
        return kwargs


@dataclasses.dataclass(frozen=True)
class RenderConfig(JsonConfig):
    """How an image becomes SAM's RGB ``uint8`` input (see :mod:`cellsparse_app.sam.render`).

    Attributes:
        channels: up to 3 channel indices (one: grey, two: green/magenta, three: red, green,
            blue; see :mod:`cellsparse_app.data.display`). None: all
            channels of a 1-3 channel image, the first three otherwise.
        lower, upper: percentiles mapped to black and white (per channel).
        keep_rgb8: pass 8-bit RGB pictures (H&E, brightfield photos) through unchanged.
    """

    channels: tuple[int, ...] | None = None
    lower: float = 1.0
    upper: float = 99.8
    keep_rgb8: bool = True

    def __post_init__(self) -> None:
        if self.channels is not None:
            object.__setattr__(self, "channels", tuple(self.channels))  # JSON gives a list
            if not 1 <= len(self.channels) <= 3:
                raise ValueError(f"channels must list 1 to 3 channel indices, got {self.channels}")
            if any(not isinstance(c, int) or c < 0 for c in self.channels):
                raise ValueError(f"channels must be indices >= 0, got {self.channels}")
        if not 0 <= self.lower < self.upper <= 100:
            raise ValueError(
                "percentiles must satisfy 0 <= lower < upper <= 100, got "
                f"{self.lower}, {self.upper}"
            )


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _check_range(name: str, value, lo, hi, *, integer: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if integer and int(value) != value:
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value!r}")
