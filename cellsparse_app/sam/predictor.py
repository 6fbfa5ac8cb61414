"""The prompt service: :class:`SamAnnotator` turns clicks and boxes into cell masks.

One annotator per model is shared by every user of a server: the network is loaded lazily on
first use and only read afterwards; image embeddings live in a bounded LRU keyed by the image's
content hash, the render settings and the model, computed once even when several users send the
same image at the same moment. Per-user state (their clicks, their masks) stays with the caller.

Coordinates are ``(row, col)`` (see :mod:`cellsparse_app.sam.prompts`); front ends holding
``(x, y)`` build a :class:`~cellsparse_app.sam.prompts.Prompt` with ``Prompt.from_xy``.

Example::

    annotator = SamAnnotator(SamConfig(model_type="vit_t"))
    result = annotator.segment_from_points(image, [(120, 88)], [1], mode="best")
    labels = result.to_labels()          # -1 unlabelled, 1 = the clicked cell
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Sequence

import numpy as np

from cellsparse_app.data.images import validate_image
from cellsparse_app.sam.automask import AutoMaskResult, sam_masks, to_result
from cellsparse_app.sam.cache import LruCache
from cellsparse_app.sam.config import OUTPUT_MODES, AutoMaskConfig, RenderConfig, SamConfig
from cellsparse_app.sam.fallback import FallbackEngine, automatic_masks
from cellsparse_app.sam.prompts import Prompt
from cellsparse_app.sam.registry import BackendUnavailableError, get_backend
from cellsparse_app.sam.render import image_key, render_rgb
from cellsparse_app.sam.results import MaskResult
from cellsparse_app.sam.weights import WeightsManager, WeightsUnavailableError

logger = logging.getLogger(__name__)

Points = Sequence[Sequence[float]] | np.ndarray | None


class SamAnnotator:
    """Masks from prompts and automatic masks, for many users at once.

    Args:
        config: which backend and how it runs (default: MobileSAM, official weights).
        weights: where weights are cached and downloaded from (default: a manager on
            ``$CELLSPARSE_CACHE_DIR``).
        render: default image rendering for SAM (per-call ``render`` overrides it).

    Attributes:
        notice: why the classical fallback answers instead of SAM (what to download and where),
            or None. Front ends should show it.
    """

    def __init__(self, config: SamConfig | None = None, *, weights: WeightsManager | None = None,
                 render: RenderConfig | None = None) -> None:
        self.config = config or SamConfig()
        self.weights = weights or WeightsManager()
        self.render = render or RenderConfig()
        self.notice: str | None = None
        self._engine: Any = None
        self._lock = threading.Lock()
        self._cache: LruCache[Any] = LruCache(self.config.cache_size)

    @classmethod
    def from_engine(cls, engine: Any, config: SamConfig | None = None,
                    render: RenderConfig | None = None) -> "SamAnnotator":
        """An annotator around an already built engine (benchmarks, tests, custom networks)."""
        annotator = cls(config, render=render)
        annotator._engine = engine
        return annotator

    # -- backend ---------------------------------------------------------------------------------
    def load(self) -> "SamAnnotator":
        """Load the backend now (otherwise on first use); returns self.

        While the fallback stands in for missing weights, each call checks (one ``stat``)
        whether the weights have arrived meanwhile (downloaded or registered through the
        weights manager, or put in the cache by hand) and then switches to SAM.
        """
        with self._lock:
            if self._engine is not None and self.notice is not None and self._weights_arrived():
                logger.info("SAM weights are now available: leaving the fallback")
                self._engine, self.notice = None, None
                self._cache.clear()
            if self._engine is None:
                self._engine = self._create_engine()
        return self

    def reload(self) -> "SamAnnotator":
        """Forget the loaded backend and every cached embedding, then load again."""
        with self._lock:
            self._engine, self.notice = None, None
            self._cache.clear()
        return self.load()

    def _weights_arrived(self) -> bool:
        spec = get_backend(self.config.model_type)
        name = self.config.weights or spec.weights
        try:
            return name is not None and self.weights.is_available(name)
        except ValueError:  # unknown registered name
            return False

    @property
    def engine(self) -> Any:
        """The loaded backend (:class:`SamEngine` or :class:`FallbackEngine`)."""
        return self.load()._engine

    @property
    def model_name(self) -> str:
        """Name reported with results: ``vit_t``, ..., or ``fallback``."""
        return self.engine.name

    @property
    def is_fallback(self) -> bool:
        """Whether the classical fallback (not SAM) answers prompts."""
        return isinstance(self.engine, FallbackEngine)

    def describe(self) -> str:
        """The backend in words, with the fallback notice if any."""
        text = self.engine.describe()
        return f"{text}. {self.notice}" if self.notice else text

    def _create_engine(self) -> Any:
        from cellsparse_app.sam.engine import create_sam_engine

        cfg = self.config
        if not get_backend(cfg.model_type).needs_weights:
            return FallbackEngine()
        try:
            return create_sam_engine(cfg, self.weights)
        except (WeightsUnavailableError, BackendUnavailableError) as exc:
            if not cfg.fallback_if_unavailable:
                raise
            self.notice = (f"{exc} Until then, masks come from the classical fallback segmenter "
                           "(threshold + watershed), not from SAM.")
            logger.warning(self.notice)
            return FallbackEngine()

    # -- embeddings ------------------------------------------------------------------------------
    def set_image(self, image: np.ndarray, render: RenderConfig | None = None) -> str:
        """Compute (or find) the embedding of ``image`` ahead of the first click.

        Returns:
            The cache key of the image (content hash).
        """
        return self._embed(image, render)[0]

    def embedding(self, image: np.ndarray, render: RenderConfig | None = None) -> Any:
        """The (cached) embedding of ``image``: a ``SamEmbedding`` or the fallback's."""
        return self._embed(image, render)[1]

    def _embed(self, image: np.ndarray, render: RenderConfig | None) -> tuple[str, Any]:
        render = render or self.render
        image = validate_image(image)
        engine = self.engine
        key = image_key(image, render, engine.name)
        embedding = self._cache.get_or_compute(
            key, lambda: engine.encode(render_rgb(image, render)))
        return key, embedding

    def cache_info(self) -> dict[str, int]:
        """Cache statistics plus ``encoder_calls`` (images encoded since loading)."""
        info = self._cache.info()
        info["encoder_calls"] = self._engine.encoder_calls if self._engine is not None else 0
        return info

    def clear_cache(self) -> None:
        """Forget every cached embedding."""
        self._cache.clear()

    # -- prompts ---------------------------------------------------------------------------------
    def segment(self, image: np.ndarray, prompt: Prompt, mode: str = "best", *,
                render: RenderConfig | None = None) -> MaskResult:
        """Masks for a validated prompt.

        Args:
            image: ``(H, W)`` or ``(H, W, C)`` image, any dtype.
            prompt: points/box/mask for this image (:class:`Prompt`).
            mode: ``best`` (highest predicted quality), ``all`` (every candidate),
                ``largest``, ``smallest`` (by area) or ``single`` (SAM's single-mask output).
            render: rendering for SAM (default: the annotator's).

        Raises:
            ValueError: unknown mode, or a prompt made for another image size.
        """
        if mode not in OUTPUT_MODES:
            raise ValueError(f"unknown output mode {mode!r}; use one of {', '.join(OUTPUT_MODES)}")
        shape = tuple(np.shape(image)[:2])
        if prompt.shape != shape:
            raise ValueError(f"the prompt is for a {prompt.shape} image, not {shape}")
        _, embedding = self._embed(image, render)
        engine = self.engine
        masks, scores, logits = engine.decode(embedding, prompt, mode)
        return MaskResult(masks, scores.astype(np.float32), engine.name, logits)

    def segment_from_points(self, image: np.ndarray, points_rc: Points,
                            labels: Sequence[int] | np.ndarray | None = None, mode: str = "best",
                            *, box_rc: Sequence[float] | None = None,
                            mask_input: np.ndarray | None = None,
                            render: RenderConfig | None = None) -> MaskResult:
        """Masks from ``(row, col)`` points (labels 1 positive / 0 negative; default all 1)."""
        prompt = Prompt.create(np.shape(image), points_rc, labels, box_rc, mask_input)
        return self.segment(image, prompt, mode, render=render)

    def segment_from_box(self, image: np.ndarray, box_rc: Sequence[float], points_rc: Points = None,
                         labels: Sequence[int] | np.ndarray | None = None, mode: str = "best",
                         *, mask_input: np.ndarray | None = None,
                         render: RenderConfig | None = None) -> MaskResult:
        """Masks from a ``(row0, col0, row1, col1)`` box, optionally with points."""
        prompt = Prompt.create(np.shape(image), points_rc, labels, box_rc, mask_input)
        return self.segment(image, prompt, mode, render=render)

    # -- automatic masks -------------------------------------------------------------------------
    def generate(self, image: np.ndarray, config: AutoMaskConfig | None = None, *,
                 render: RenderConfig | None = None,
                 progress: Callable[[int, int], None] | None = None) -> AutoMaskResult:
        """All objects of ``image`` with their scores (see :mod:`cellsparse_app.sam.automask`).

        ``progress(done, total)`` is called after each batch of SAM's point prompts (SAM's
        defaults decode 1024 prompts: tens of seconds on a CPU; ``points_per_side=16`` is 4x
        faster).
        """
        cfg = config or AutoMaskConfig()
        render = render or self.render
        full_key, full = self._embed(image, render)
        engine = self.engine
        if isinstance(engine, FallbackEngine):
            masks, scores = automatic_masks(full, cfg)
            return to_result(masks, scores, scores.copy(), engine.name, cfg)
        rgb = render_rgb(validate_image(image), render)

        def embed(crop: np.ndarray) -> Any:
            if crop.shape == rgb.shape:  # the whole image: the cached embedding
                return full
            key = image_key(crop, None, engine.name, "crop", full_key)
            return self._cache.get_or_compute(key, lambda: engine.encode(crop))

        masks, scores, stability = sam_masks(engine, rgb, cfg, embed, progress)
        return to_result(masks, scores, stability, engine.name, cfg)

    def generate_masks(self, image: np.ndarray, config: AutoMaskConfig | None = None, *,
                       render: RenderConfig | None = None,
                       progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """``int32`` instance image of all objects (0 = none); see :meth:`generate`."""
        return self.generate(image, config, render=render, progress=progress).labels


class AnnotatorPool:
    """One lazily created :class:`SamAnnotator` per (model type, weights), shared; thread-safe.

    For servers whose requests name the model (samapi's ``type``). Not a global: the server
    owns one.

    Args:
        base: settings every annotator starts from (device, engine, cache size, download ...).
        weights: the shared weights manager.
    """

    def __init__(self, base: SamConfig | None = None, *,
                 weights: WeightsManager | None = None) -> None:
        self.base = base or SamConfig()
        self.weights = weights or WeightsManager()
        self._annotators: dict[tuple[str, str | None], SamAnnotator] = {}
        self._lock = threading.Lock()

    def get(self, model_type: str | None = None, weights: str | None = None) -> SamAnnotator:
        """The annotator for ``model_type`` (default: the base config's) and optional weights."""
        model_type = model_type or self.base.model_type
        get_backend(model_type)  # unknown names fail here, clearly
        if weights is not None:
            spec = self.weights.get(weights)
            if spec.model_type != model_type:
                raise ValueError(f"weights {weights!r} are for {spec.model_type}, not {model_type}")
        key = (model_type, weights)
        with self._lock:
            annotator = self._annotators.get(key)
            if annotator is None:
                checkpoint = self.base.checkpoint if model_type == self.base.model_type else None
                cfg = self.base.replace(model_type=model_type, weights=weights,
                                        checkpoint=None if weights else checkpoint)
                annotator = self._annotators[key] = SamAnnotator(cfg, weights=self.weights)
            return annotator

    def loaded(self) -> list[SamAnnotator]:
        """Annotators created so far."""
        with self._lock:
            return list(self._annotators.values())
