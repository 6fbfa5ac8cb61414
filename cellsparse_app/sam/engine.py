"""A loaded SAM network: image encoder (PyTorch or ONNX Runtime) and prompt decoding.

:class:`SamEngine` is stateless between calls: the embedding of an image is a value
(:class:`SamEmbedding`) that the caller caches, so one engine serves many users at once. Image
encodings run one at a time (a lock: they saturate the CPU or GPU anyway); prompt decoding is
cheap and runs concurrently.

Speed: inference mode always; on CUDA the encoder runs under bf16 (or fp16) autocast; on CPU
the encoder runs in fp32 through ONNX Runtime for MobileSAM (``encoder_engine="auto"``), or
PyTorch, optionally with bf16 autocast (measured slower on CPUs without native bf16 support).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from cellsparse_app.runtime.threads import machine_is_busy, omp_threads
from cellsparse_app.sam import fast_decoder
from cellsparse_app.sam.config import SamConfig
from cellsparse_app.sam.input_side import STANDARD_SIDE, with_encoder_side
from cellsparse_app.sam.prompts import Prompt
from cellsparse_app.sam.registry import BackendSpec, build_network, get_backend, load_weights
from cellsparse_app.sam.results import select_masks
from cellsparse_app.sam.weights import WeightsManager

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SamEmbedding:
    """The encoder's answer for one image.

    Attributes:
        features: ``float32 (1, 256, g, g)`` tensor on the engine's device (``g`` = encoder
            side / 16: 64 for SAM's 1024).
        input_size: ``(h, w)`` of the resized image inside the encoder's square input.
        original_size: ``(H, W)`` of the image.
        decoder_cache: per-image part of the decoder's first layer
            (:class:`~cellsparse_app.sam.fast_decoder.DecoderCache`), or None.
    """

    features: Any
    input_size: tuple[int, int]
    original_size: tuple[int, int]
    decoder_cache: Any = None


class SamEngine:
    """SAM or MobileSAM ready to encode images and decode prompts.

    Args:
        model: the ``Sam`` module (weights loaded), any device.
        spec: its backend.
        device: ``cpu`` or ``cuda``.
        encoder_engine: ``torch`` or ``onnx`` (CPU only).
        precision: ``fp32``, ``bf16``, ``fp16`` (torch autocast) or ``int8`` (onnx).
        threads: intra-op threads of the ONNX encoder (None: torch's setting).
        decoder_threads: OpenMP threads for decoding a click (see ``SamConfig``).
        onnx_dir: where ONNX exports are cached.
        name: model name reported in results (default: the backend name).
    """

    def __init__(self, model: Any, spec: BackendSpec, *, device: str = "cpu",
                 encoder_engine: str = "torch", precision: str = "fp32",
                 threads: int | None = None, decoder_threads: int | None = None,
                 onnx_dir: str | Path | None = None, name: str | None = None) -> None:
        import torch

        if encoder_engine == "onnx" and device != "cpu":
            raise ValueError("encoder_engine='onnx' runs on the CPU; use 'torch' with CUDA")
        self.spec = spec
        self.name = name or spec.name
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.encoder_engine = encoder_engine
        self.precision = precision
        self.threads = threads
        self.decoder_threads = decoder_threads
        self.onnx_dir = Path(onnx_dir) if onnx_dir is not None else None
        self.encoder_calls = 0
        self._onnx: Any = None
        self._pe: Any = None
        #: Use :mod:`cellsparse_app.sam.fast_decoder` (same results, faster) when it applies.
        self.use_fast_decoder = fast_decoder.supports(self.model)
        self._encode_lock = threading.Lock()
        transforms = importlib.import_module(f"{spec.module}.utils.transforms")
        self.transform = transforms.ResizeLongestSide(self.model.image_encoder.img_size)

    def describe(self) -> str:
        """E.g. ``vit_t on cpu, onnx fp32 encoder``."""
        return f"{self.name} on {self.device.type}, {self.encoder_engine} {self.precision} encoder"

    def prepare_encoder(self) -> None:
        """Export/check the ONNX encoder now instead of on the first image."""
        if self.encoder_engine == "onnx":
            self._onnx_encoder()

    def _onnx_encoder(self) -> Any:
        if self._onnx is None:
            from cellsparse_app.sam.onnx_encoder import load_onnx_encoder

            if self.onnx_dir is None:
                raise RuntimeError("encoder_engine='onnx' needs onnx_dir (the export cache)")
            self._onnx = load_onnx_encoder(self.model.image_encoder, self.onnx_dir, self.name,
                                           precision=self.precision, threads=self.threads)
        return self._onnx

    def encode(self, rgb: np.ndarray) -> SamEmbedding:
        """Embed an ``(H, W, 3) uint8`` RGB image (see :func:`~cellsparse_app.sam.render_rgb`)."""
        import torch

        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[-1] != 3:
            raise ValueError(f"SAM needs an (H, W, 3) uint8 RGB image, got {rgb.dtype} {rgb.shape}")
        with self._encode_lock:
            self.encoder_calls += 1
            resized = self.transform.apply_image(rgb)
            x = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None]
            input_size = (int(x.shape[-2]), int(x.shape[-1]))
            with torch.inference_mode():
                x = self.model.preprocess(x)
                features = self._run_encoder(x).float().to(self.device)
                cache = (fast_decoder.build_cache(self.model, features, self._dense_pe())
                         if self.use_fast_decoder else None)
        return SamEmbedding(features, input_size, (int(rgb.shape[0]), int(rgb.shape[1])), cache)

    def _run_encoder(self, x: Any) -> Any:
        import torch

        if self.encoder_engine == "onnx":
            return self._onnx_encoder()(x)
        if self.precision in ("bf16", "fp16"):
            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
            with torch.autocast(self.device.type, dtype=dtype):
                return self.model.image_encoder(x)
        return self.model.image_encoder(x)

    def decode(self, embedding: SamEmbedding, prompt: Prompt,
               mode: str = "all") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for ``prompt`` selected by output ``mode`` (see :func:`select_masks`).

        Returns:
            ``bool (M, H, W)`` masks, their scores ``(M,)`` and low-resolution logits
            ``(M, 4g, 4g)`` (``256 x 256`` at SAM's 1024 input side); ``single`` uses SAM's
            single-mask output, the other modes its three candidates. Only the selected masks are
            upscaled to the image size.
        """
        import torch

        sam = prompt.to_sam()  # the one (row, col) -> (x, y) conversion
        size = embedding.original_size
        dev = self.device
        with torch.inference_mode(), omp_threads(self._click_threads()):
            points = boxes = masks_in = None
            if sam.point_coords is not None:
                coords = self.transform.apply_coords(sam.point_coords.astype(np.float64), size)
                points = (torch.as_tensor(coords, dtype=torch.float32, device=dev)[None],
                          torch.as_tensor(sam.point_labels, dtype=torch.int32, device=dev)[None])
            if sam.box is not None:
                box = self.transform.apply_boxes(sam.box.astype(np.float64)[None], size)
                boxes = torch.as_tensor(box, dtype=torch.float32, device=dev)
            if sam.mask_input is not None:
                masks_in = torch.as_tensor(sam.mask_input, dtype=torch.float32, device=dev)[None]
            sparse, dense = self.model.prompt_encoder(points=points, boxes=boxes, masks=masks_in)
            if embedding.decoder_cache is not None:
                low_res, quality, _ = fast_decoder.predict_masks(
                    self.model, embedding.decoder_cache, sparse,
                    None if masks_in is None else dense, mode)
                scores = quality[0].float().cpu().numpy()
            else:
                low_res, quality = self.model.mask_decoder(
                    image_embeddings=embedding.features,
                    image_pe=self._dense_pe(),
                    sparse_prompt_embeddings=sparse,
                    dense_prompt_embeddings=dense,
                    multimask_output=mode != "single",
                )
                scores = quality[0].float().cpu().numpy()
                if mode == "best":  # pick first, upscale one mask only
                    index = [int(np.argmax(scores))]
                    low_res, scores = low_res[:, index], scores[index]
            logits = self.model.postprocess_masks(low_res, embedding.input_size, size)
            masks = (logits[0] > self.model.mask_threshold).cpu().numpy()
            low = low_res[0].float().cpu().numpy()
        if mode in ("best", "single"):
            return masks, scores, low
        return select_masks(masks, scores, mode, low)

    def _click_threads(self) -> int | None:
        """OpenMP threads for one click (None: leave torch's setting)."""
        if self.device.type != "cpu":
            return None
        if self.decoder_threads is not None:
            return self.decoder_threads or None
        return 1 if machine_is_busy() else None

    def _dense_pe(self) -> Any:
        """SAM's positional encoding of the embedding grid (constant: computed once)."""
        if self._pe is None:
            self._pe = self.model.prompt_encoder.get_dense_pe()
        return self._pe

    def predictor_for_automask(self, embed: Any, on_batch: Any = None, *,
                               multimask: bool = True) -> Any:
        """A ``SamPredictor`` of the backend's library whose ``set_image`` uses ``embed``.

        ``embed(rgb) -> SamEmbedding`` lets automatic mask generation reuse cached embeddings
        and this engine's encoder (ONNX, autocast); prompts go through the fast decoder.
        ``on_batch()`` is called after each batch of prompts (progress). ``multimask`` False:
        SAM's single-output mask per prompt, whatever the generator asks for (its
        ``multimask_output=True`` is fixed in ``SamAutomaticMaskGenerator``).
        """
        base = importlib.import_module(f"{self.spec.module}.predictor").SamPredictor

        class CachedPredictor(base):  # type: ignore[misc, valid-type]
            decoder_cache: Any = None

            def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
                emb = embed(np.ascontiguousarray(image))
                self.reset_image()
                self.features = emb.features
                self.original_size = emb.original_size
                self.input_size = emb.input_size
                self.decoder_cache = emb.decoder_cache
                self.is_image_set = True

            def predict_torch(self, point_coords, point_labels, boxes=None, mask_input=None,
                              multimask_output=True, return_logits=False):
                if on_batch is not None:
                    on_batch()
                multimask_output = multimask_output and multimask
                if self.decoder_cache is None or mask_input is not None:
                    return super().predict_torch(point_coords, point_labels, boxes, mask_input,
                                                 multimask_output, return_logits)
                points = None if point_coords is None else (point_coords, point_labels)
                sparse, _ = self.model.prompt_encoder(points=points, boxes=boxes, masks=None)
                low_res, quality, _ = fast_decoder.predict_masks(
                    self.model, self.decoder_cache, sparse, None,
                    "all" if multimask_output else "single")
                masks = self.model.postprocess_masks(low_res, self.input_size, self.original_size)
                if not return_logits:
                    masks = masks > self.model.mask_threshold
                return masks, quality, low_res

        return CachedPredictor(self.model)


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; refuses ``cuda`` without a GPU."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for but no CUDA GPU is available")
    return device


def resolve_engine(cfg: SamConfig, spec: BackendSpec, device: str) -> tuple[str, str]:
    """``(encoder_engine, precision)`` for ``cfg`` on ``device`` (resolving ``auto``)."""
    import importlib.util

    import torch

    precision = cfg.precision
    engine = cfg.encoder_engine
    if device == "cuda":
        if engine == "onnx" or precision == "int8":
            raise ValueError("the ONNX/int8 encoder runs on the CPU; use device='cpu'")
        if precision == "auto":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "torch", precision
    if engine == "auto":
        has_ort = importlib.util.find_spec("onnxruntime") is not None
        wants_onnx = precision == "int8" or (precision in ("auto", "fp32")
                                             and spec.cpu_engine == "onnx")
        engine = "onnx" if wants_onnx and has_ort else "torch"
    if precision == "auto":
        precision = "fp32"
    if precision == "fp16" and engine == "torch":
        raise ValueError("fp16 autocast is not supported on CPU; use bf16 or fp32")
    return engine, precision


def create_sam_engine(cfg: SamConfig, weights: WeightsManager) -> SamEngine:
    """Build the network of ``cfg.model_type``, load its weights, pick the encoder path.

    Raises:
        WeightsUnavailableError: official/registered weights missing and not downloadable.
        ValueError: a given checkpoint does not exist or does not fit the model type.
        RuntimeError: the backend's package is missing or CUDA was asked for without a GPU.
    """
    spec = get_backend(cfg.model_type)
    if not spec.needs_weights:
        raise ValueError(f"{cfg.model_type!r} is not a SAM network")
    path = resolve_checkpoint(cfg, weights)
    device = resolve_device(cfg.device)
    engine, precision = resolve_engine(cfg, spec, device)
    model = build_network(spec, seed=cfg.seed)
    if path is not None:
        load_weights(model, spec, path)
        label = cfg.weights or spec.name
    else:
        logger.warning("SAM %s uses RANDOM weights (tests/benchmarks only): masks are meaningless",
                       spec.name)
        label = f"{spec.name} (random weights)"
    if cfg.encoder_side != STANDARD_SIDE:
        model = with_encoder_side(model, spec.family, cfg.encoder_side)
        label = f"{label} @{cfg.encoder_side}px"  # embeddings differ: other cache keys
    sam = SamEngine(model, spec, device=device, encoder_engine=engine, precision=precision,
                    threads=cfg.threads, decoder_threads=cfg.decoder_threads,
                    onnx_dir=weights.directory.parent / "onnx", name=label)
    if engine == "onnx" and cfg.encoder_engine == "auto":
        try:
            sam.prepare_encoder()
        except RuntimeError as exc:  # export failed or disagreed: PyTorch is always correct
            logger.warning("ONNX encoder unavailable (%s); using the PyTorch encoder", exc)
            sam.encoder_engine = "torch"
    logger.info("SAM engine ready: %s", sam.describe())
    return sam


def resolve_checkpoint(cfg: SamConfig, weights: WeightsManager) -> Path | None:
    """The checkpoint file for ``cfg`` (None for random weights), downloading if allowed."""
    if cfg.random_weights:
        return None
    if cfg.checkpoint:
        path = Path(cfg.checkpoint).expanduser()
        if not path.is_file():
            raise ValueError(
                f"SAM checkpoint {path} does not exist (from CELLSPARSE_SAM_CHECKPOINT or "
                "--sam-checkpoint)"
            )
        return path
    name = cfg.weights or get_backend(cfg.model_type).weights
    spec = weights.get(name)
    if spec.model_type != cfg.model_type:
        raise ValueError(
            f"weights {name!r} are for model type {spec.model_type!r}, not {cfg.model_type!r}"
        )
    return weights.ensure(name, download_missing=cfg.download)
