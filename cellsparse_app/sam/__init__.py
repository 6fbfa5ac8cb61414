"""SAM prompt engine: clicks and boxes -> cell masks, automatic masks, safe weights handling.

Public API (core code: no UI, no web framework):

* :class:`SamConfig`, :class:`AutoMaskConfig`, :class:`RenderConfig` (:mod:`.config`);
* :class:`SamAnnotator` (:mod:`.predictor`): ``segment_from_points``, ``segment_from_box``,
  ``segment(image, Prompt)``, ``set_image``, ``generate``/``generate_masks``;
  :class:`AnnotatorPool`;
* :class:`Prompt` (:mod:`.prompts`): the one place where ``(row, col)`` meets SAM's ``(x, y)``;
* :class:`MaskResult`, :func:`paint_masks` (:mod:`.results`), :class:`AutoMaskResult`;
* :class:`WeightsManager` (:mod:`.weights`), :data:`OFFICIAL_WEIGHTS`, :func:`default_cache_dir`
  (:mod:`.checkpoints`), :class:`DownloadPolicy` (:mod:`.download`);
* :func:`list_backends`, :func:`get_backend` (:mod:`.registry`); :func:`render_rgb`.

Heavy dependencies (torch, segment_anything, mobile_sam, onnxruntime) are imported only when a
SAM network is loaded.
"""

from cellsparse_app.sam.automask import AutoMaskResult
from cellsparse_app.sam.checkpoints import OFFICIAL_WEIGHTS, WeightSpec, default_cache_dir
from cellsparse_app.sam.config import OUTPUT_MODES, AutoMaskConfig, RenderConfig, SamConfig
from cellsparse_app.sam.download import DownloadCancelled, DownloadError, DownloadPolicy
from cellsparse_app.sam.predictor import AnnotatorPool, SamAnnotator
from cellsparse_app.sam.prompts import Prompt
from cellsparse_app.sam.registry import (
    BackendUnavailableError,
    get_backend,
    list_backends,
)
from cellsparse_app.sam.render import render_rgb
from cellsparse_app.sam.results import MaskResult, paint_masks
from cellsparse_app.sam.weights import DownloadStatus, WeightsManager, WeightsUnavailableError

__all__ = [
    "AnnotatorPool", "AutoMaskConfig", "AutoMaskResult", "BackendUnavailableError",
    "DownloadCancelled", "DownloadError", "DownloadPolicy", "DownloadStatus", "MaskResult",
    "OFFICIAL_WEIGHTS", "OUTPUT_MODES", "Prompt", "RenderConfig", "SamAnnotator", "SamConfig",
    "WeightSpec", "WeightsManager", "WeightsUnavailableError", "default_cache_dir", "get_backend",
    "list_backends", "paint_masks", "render_rgb",
]
