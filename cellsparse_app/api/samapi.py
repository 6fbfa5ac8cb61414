"""The SAM engine seen through samapi's eyes: model ``type`` + ``checkpoint_url`` -> annotator,
weights listing/registration with download progress and cancel.

Everything heavy is the SAM engine's (:mod:`cellsparse_app.sam`); this adapter only translates
samapi's vocabulary: ``(x, y)`` prompts, URLs instead of weights names, ``{message, percent}``
progress. URLs always go through the engine's download policy (https, allowlisted hosts, no
private addresses, checked redirects) *before* anything else happens.

A client asking for SAM gets SAM or a 503 saying why (missing weights or package) and what to
do: the classical fallback answers only when asked for by name (``type: "fallback"``) or when the
server allows it (``ServerSettings.allow_sam_fallback``). samapi's SAM2/SAM3 types
(:data:`SAMAPI_ONLY_TYPES`) are listed with their official weights, named so that the QuPath
extension's weights menu says they cannot run here, and answer 503 with the reason.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from typing import Any, Iterator, Sequence

import numpy as np

from cellsparse_app.api.settings import ServerSettings
from cellsparse_app.errors import Unavailable
from cellsparse_app.json_config import config_from_values

logger = logging.getLogger(__name__)

_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")
_REFUSALS = ("refused", "allowlist", "only https", "not allowed", "non-public")


#: samapi model types this server cannot run: type -> (official weights URL, what they need).
SAMAPI_ONLY_TYPES: dict[str, tuple[str, str]] = {
    **{t: (f"https://dl.fbaipublicfiles.com/segment_anything_2/072824/sam2_hiera_{f}.pt",
           "SAM2 (the 'sam2' package), which this server does not include")
       for t, f in (("sam2_l", "large"), ("sam2_bp", "base_plus"), ("sam2_s", "small"),
                    ("sam2_t", "tiny"))},
    "sam3": ("https://huggingface.co/facebook/sam3/resolve/main/sam3.pt",
             "SAM3 (the 'sam3' package and gated weights), which this server does not include"),
}


def unavailable_type_message(model_type: str) -> str:
    """Why samapi's ``model_type`` cannot run here and what to use instead."""
    _, needs = SAMAPI_ONLY_TYPES[model_type]
    return (f"SAM model type {model_type!r} is not available on this cellsparse server: it needs "
            f"{needs}. Choose vit_t (MobileSAM), vit_b, vit_l or vit_h, or use a samapi server "
            "for SAM2/SAM3.")


def _refused(exc: Exception) -> bool:
    """Whether a download error is the policy refusing a URL (vs. the network failing)."""
    return any(word in str(exc) for word in _REFUSALS)


class SamService:
    """samapi operations on top of an :class:`~cellsparse_app.sam.AnnotatorPool`.

    Args:
        settings: server settings (data dir for the weights cache, random-init switch, limits).
        policy: which URLs may be downloaded (default: the engine's allowlist policy).
    """

    def __init__(self, settings: ServerSettings, policy: Any = None) -> None:
        from cellsparse_app.sam import AnnotatorPool, DownloadPolicy, SamConfig, WeightsManager

        self.settings = settings
        self.policy = policy or DownloadPolicy()
        # Weights (and ONNX exports) live in the data dir unless $CELLSPARSE_CACHE_DIR says
        # otherwise (then the UI and the CLI share that cache).
        self.weights = WeightsManager(settings.weights_dir, policy=self.policy)
        base = SamConfig.from_env()
        if settings.sam_encoder:
            base = base.replace(encoder_engine=settings.sam_encoder)
        # Missing weights raise (-> 503) unless the server allows the classical fallback.
        base = base.replace(fallback_if_unavailable=settings.allow_sam_fallback)
        if settings.sam_random_init:
            base = base.replace(checkpoint=None, download=False, random_weights=True)
        self.pool = AnnotatorPool(base, weights=self.weights)
        self._compute = threading.BoundedSemaphore(settings.sam_concurrency)
        self._last_download: str | None = None

    # -- models ------------------------------------------------------------------------------
    def check_type(self, model_type: str) -> str:
        """``model_type`` if it is a backend of the engine.

        Raises:
            Unavailable: (503) samapi's SAM2/SAM3 types (this server cannot run them).
            InvalidInput: any other unknown type (the message lists the available ones).
        """
        from cellsparse_app.sam import get_backend

        if model_type in SAMAPI_ONLY_TYPES:
            raise Unavailable(unavailable_type_message(model_type))
        get_backend(model_type)
        return model_type

    @contextlib.contextmanager
    def sam_or_error(self, model_type: str) -> Iterator[None]:
        """Turn missing weights or packages of ``model_type`` into a 503 saying what to do."""
        from cellsparse_app.sam import BackendUnavailableError, WeightsUnavailableError

        try:
            yield
        except (WeightsUnavailableError, BackendUnavailableError) as exc:
            message = (
                f"SAM model {model_type!r} cannot run on this server: {exc} Register weights "
                "(POST /sam/weights/), ask for type 'fallback' (classical segmenter, not SAM), "
                "or start the server with CELLSPARSE_ALLOW_SAM_FALLBACK=1."
            )
            logger.warning(message)
            raise Unavailable(message) from None

    def check_url(self, url: str) -> str:
        """``url`` if the download policy accepts it (ValueError naming the rule otherwise)."""
        from cellsparse_app.sam import DownloadError

        try:
            return self.policy.check_url(url, resolve=False)
        except DownloadError as exc:
            raise ValueError(f"checkpoint URL refused: {exc}") from None

    def annotator(self, model_type: str, checkpoint_url: str | None = None) -> Any:
        """The shared annotator for ``model_type`` and, if given, the weights at ``checkpoint_url``.

        An allowlisted URL that no registered weights use is registered under a name derived
        from its file name (samapi downloads such URLs too).
        """
        self.check_type(model_type)
        if checkpoint_url:
            self.check_url(checkpoint_url)
        weights = None
        if checkpoint_url and not self.settings.sam_random_init:
            from cellsparse_app.sam import get_backend

            if get_backend(model_type).needs_weights:
                weights = self._weights_for_url(model_type, checkpoint_url)
        return self.pool.get(model_type, weights)

    def _weights_for_url(self, model_type: str, url: str) -> str | None:
        for spec in self.weights.specs(model_type):
            if spec.url == url:
                return None if spec.official else spec.name
        stem = url.rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
        name = _NAME_CHARS.sub("-", stem).strip("-._")[:48] or "weights"
        return self.weights.register(f"{model_type}-{name}", model_type, url).name

    # -- prompts -----------------------------------------------------------------------------
    def segment(self, image: np.ndarray, model_type: str, *, points_xy: Sequence, point_labels:
                Sequence[int], bbox_xyxy: Sequence[int] | None, mask_input: np.ndarray | None,
                multimask: bool, checkpoint_url: str | None) -> tuple[np.ndarray, np.ndarray, str]:
        """Masks for samapi prompts: ``(masks bool (M, H, W), scores (M,), model name)``.

        ``multimask`` gives SAM's three candidates (the client picks one), else the single mask.
        """
        from cellsparse_app.sam import Prompt

        annotator = self.annotator(model_type, checkpoint_url)
        with self.sam_or_error(model_type):
            annotator.load()
        h, w = image.shape[:2]
        box = None
        if bbox_xyxy is not None:
            x0, y0, x1, y1 = (float(v) for v in bbox_xyxy)
            if x1 <= x0 or y1 <= y0:
                raise ValueError(f"empty bbox {list(bbox_xyxy)}: need x1 < x2 and y1 < y2")
            if x1 < 0 or y1 < 0 or x0 > w - 1 or y0 > h - 1:
                raise ValueError(f"bbox {list(bbox_xyxy)} is outside the {w}x{h} image")
            # QuPath rounds the far corner up to the region edge (x2 == width): clip, don't fail.
            box = [max(0.0, x0), max(0.0, y0), min(x1, w - 1.0), min(y1, h - 1.0)]
        if mask_input is not None:
            mask_input = np.asarray(mask_input, dtype=np.float32)
        prompt = Prompt.from_xy(image.shape, points_xy or None, point_labels or None, box,
                                mask_input)
        with self._compute:
            result = annotator.segment(image, prompt, "all" if multimask else "single")
        return result.masks, result.scores, result.model

    def automask(self, image: np.ndarray, model_type: str, params: dict[str, Any],
                 checkpoint_url: str | None = None) -> tuple[np.ndarray, np.ndarray, str]:
        """All objects: ``(masks bool (N, H, W), scores (N,), model name)``.

        ``params`` are samapi's generator fields; those of
        :class:`~cellsparse_app.sam.AutoMaskConfig` are used, and ``output_type`` (samapi's
        five values, :data:`~cellsparse_app.sam.automask.SAMAPI_OUTPUT_TYPES`) sets one or three
        masks per prompt and which duplicate wins; ``Multi-mask (all)`` returns overlapping
        masks whole, the others one object per pixel.
        """
        from cellsparse_app.sam import AutoMaskConfig
        from cellsparse_app.sam.automask import output_type_config

        # samapi's bodies carry fields of its own (output_type ...): drop what is not ours.
        cfg = config_from_values(AutoMaskConfig, params, ignore_unknown=True)
        if params.get("output_type") is not None:
            cfg = output_type_config(str(params["output_type"]), cfg)
        annotator = self.annotator(model_type, checkpoint_url)
        with self.sam_or_error(model_type):
            annotator.load()
        with self._compute:
            result = annotator.generate(image, cfg)
        return result.masks(), result.scores, result.model

    # -- weights -----------------------------------------------------------------------------
    def list_weights(self, model_type: str | None) -> list[dict[str, Any]]:
        """samapi's ``[{type, name, url}]`` (plus ``downloaded``/``available``), one type or all.

        samapi's SAM2/SAM3 types get their official weights with a name that says they cannot
        run here: the QuPath extension shows names in its weights menu, and an empty list
        would crash it.
        """
        if model_type is not None and model_type not in SAMAPI_ONLY_TYPES:
            self.check_type(model_type)
        out = [
            {"type": s.model_type, "name": s.name, "url": s.url,
             "downloaded": self.weights.is_available(s.name), "available": True}
            for s in self.weights.specs(model_type)
        ] if model_type not in SAMAPI_ONLY_TYPES else []
        for name, (url, _) in SAMAPI_ONLY_TYPES.items():
            if model_type in (None, name):
                out.append({"type": name, "name": "NOT AVAILABLE on this server", "url": url,
                            "downloaded": False, "available": False,
                            "message": unavailable_type_message(name)})
        return out

    def register_weights(self, model_type: str, name: str, url: str) -> str:
        """Register and download weights (blocking); samapi's plain-text messages.

        Raises:
            ValueError: a refused URL, unknown type or type without weights (-> 400).
            Unavailable: (503) SAM2/SAM3 types.
            HTTPException: 502 when the download fails.
        """
        from cellsparse_app.sam import DownloadCancelled, DownloadError, get_backend

        self.check_type(model_type)
        self.check_url(url)
        if not get_backend(model_type).needs_weights:
            raise ValueError(f"model type {model_type!r} takes no weights")
        for spec in self.weights.specs():
            if spec.name == name:
                return f"Model file with the name '{name}' already exists. Skip registration."
            if spec.url == url and spec.model_type == model_type:
                return f"Model file with the url '{url}' already exists. Skip registration."
        self.weights.register(name, model_type, url)
        self._last_download = name
        try:
            self.weights.download(name)
        except DownloadCancelled:
            self.weights.unregister(name)
            return f"Cancelled to register {name} ({url})."
        except DownloadError as exc:
            self.weights.unregister(name)
            if _refused(exc):  # the URL led somewhere the policy forbids: the client's fault
                raise ValueError(f"could not register {url}: {exc}") from None
            from fastapi import HTTPException

            raise HTTPException(502, f"could not download {url}: {exc}") from None
        return f"{name} ({url}) is registered."

    def progress(self) -> dict[str, Any]:
        """samapi's ``{"message", "percent"}`` for the current (or last) weights download."""
        statuses = self.weights.statuses()
        running = [s for s in statuses if s.state == "running"]
        status = running[0] if running else next(
            (s for s in statuses if s.name == self._last_download), None)
        if status is None:
            return {"message": None, "percent": -1}
        fraction = status.fraction
        percent = int(100 * fraction) if fraction is not None else -1
        total = f"/{status.total_bytes / 1e6:.1f}" if status.total_bytes else ""
        message = f"{status.name}: {status.state} {status.done_bytes / 1e6:.1f}{total} MB"
        if status.error:
            message += f" ({status.error})"
        return {"message": message, "percent": percent}

    def cancel_download(self) -> bool:
        """Cancel running downloads; True if one was running."""
        return self.weights.cancel(None)
