"""The SAM image encoder through ONNX Runtime: export once, cache on disk, check against PyTorch.

On CPU, ONNX Runtime runs MobileSAM's TinyViT encoder several times faster than eager PyTorch
(it folds the batch norms into the convolutions, fuses GELU/LayerNorm/attention and avoids the
many transposing copies); ``python -m bench sam`` measures it. The plain ViTs of SAM gain little.

The exported graph is keyed by a fingerprint of the encoder's weights, so a cached file is never
used with other weights. Every export is checked against the PyTorch encoder on a fixed input
before it is used (relative L2 error for fp32, cosine similarity for int8); the numbers are
stored next to the file (``.json``). ``int8`` is a dynamic quantisation of the MatMul weights:
faster, approximate, opt-in.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from cellsparse_app.sam.input_side import STANDARD_SIDE

logger = logging.getLogger(__name__)

#: Bump when the export procedure changes (invalidates cached files).
EXPORT_VERSION = 1
OPSET = 17
#: Accepted difference between the ONNX and the PyTorch encoder on the check input.
MAX_REL_ERROR_FP32 = 1e-3
MIN_COSINE_INT8 = 0.98

_EXPORT_LOCK = threading.Lock()


def fingerprint_module(module: Any) -> str:
    """A hash of a module's parameters and buffers (names, shapes, dtypes and values)."""
    import torch

    digest = hashlib.blake2b(digest_size=12)
    for name, tensor in sorted(module.state_dict().items()):
        array = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tuple(array.shape)}|{array.dtype}|".encode())
        digest.update(memoryview(array.view(-1).view(torch.uint8).numpy()))
    return digest.hexdigest()


def compare_outputs(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """``rel_error`` (relative L2), ``cosine`` similarity and ``max_abs`` difference."""
    ref = reference.astype(np.float64).ravel()
    out = other.astype(np.float64).ravel()
    norm = float(np.linalg.norm(ref)) or 1.0
    cosine = float(ref @ out / (norm * (float(np.linalg.norm(out)) or 1.0)))
    return {"rel_error": float(np.linalg.norm(ref - out) / norm), "cosine": cosine,
            "max_abs": float(np.abs(ref - out).max())}


def check_input(seed: int = 0, side: int = STANDARD_SIDE) -> np.ndarray:
    """The fixed, image-like ``side x side`` encoder input used to check exports."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, 3, side // 16, side // 16)).astype(np.float32)
    x = np.repeat(np.repeat(x, 16, axis=2), 16, axis=3)  # blocky structure, like an image
    x += 0.3 * rng.standard_normal(x.shape).astype(np.float32)
    x[..., side * 3 // 4:, :] = 0.0  # padding rows, as for a landscape image
    return x


def encoder_side(encoder: Any) -> int:
    """The square input side of a SAM image encoder (``img_size``; SAM's 1024 by default)."""
    return int(getattr(encoder, "img_size", STANDARD_SIDE))


class OnnxEncoder:
    """A callable ``(1, 3, S, S) float32 tensor -> (1, C, S/16, S/16) tensor`` on CPU (S = 1024
    for SAM; the encoder's side, see :func:`encoder_side`).

    Args:
        path: the ``.onnx`` file.
        threads: intra-op threads (None: torch's current setting).
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort
        import torch

        self.path = Path(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(self.path), options,
                                            providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def run(self, x: np.ndarray) -> np.ndarray:
        """Run on a numpy array."""
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, np.float32)})[0]

    def __call__(self, x: Any) -> Any:
        import torch

        return torch.from_numpy(self.run(x.detach().float().cpu().numpy()))


def load_onnx_encoder(
    encoder: Any,
    directory: str | Path,
    name: str,
    *,
    precision: str = "fp32",
    threads: int | None = None,
) -> OnnxEncoder:
    """The ONNX Runtime version of ``encoder``, exported and checked on first use.

    Args:
        encoder: the PyTorch image encoder (``sam.image_encoder``), in eval mode.
        directory: where exported files are cached.
        name: model name used in the file name (``vit_t`` ...).
        precision: ``fp32`` or ``int8``.
        threads: intra-op threads.

    Raises:
        RuntimeError: onnxruntime/onnx missing, the export failed, or the export disagrees with
            PyTorch beyond tolerance (the file is then deleted).
    """
    if precision not in ("fp32", "int8"):
        raise ValueError(f"ONNX encoder precision must be fp32 or int8, got {precision!r}")
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(
            "encoder_engine='onnx' needs onnxruntime: pip install onnxruntime onnx"
        ) from exc
    import torch

    torch_version = torch.__version__.split("+")[0]
    side = encoder_side(encoder)
    key = f"{name}-{fingerprint_module(encoder)}-s{side}-t{torch_version}-v{EXPORT_VERSION}"
    directory = Path(directory)
    path = directory / f"{key}-{precision}.onnx"
    try:
        with _EXPORT_LOCK:
            if not path.is_file():
                directory.mkdir(parents=True, exist_ok=True)
                fp32 = directory / f"{key}-fp32.onnx"
                if not fp32.is_file():
                    _export(encoder, fp32)
                if precision == "int8":
                    _quantize(fp32, path)
                _check(encoder, path, precision, threads,
                       directory / f"{key}-reference.npy")
        return OnnxEncoder(path, threads)
    except OSError as exc:  # read-only cache, disk full ...
        raise RuntimeError(f"cannot prepare the ONNX encoder in {directory}: {exc}") from exc


def _export(encoder: Any, path: Path) -> None:
    import torch

    start = time.perf_counter()
    logger.info("exporting the SAM image encoder to ONNX (once; cached in %s)", path.parent)
    x = torch.from_numpy(check_input(side=encoder_side(encoder)))
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(encoder, (x,), tmp, input_names=["image"],
                              output_names=["embedding"], opset_version=OPSET, dynamo=False)
        os.replace(tmp, path)
    except Exception as exc:  # the exporter raises many types for unsupported graphs
        raise RuntimeError(f"ONNX export of the SAM image encoder failed: {exc}") from exc
    finally:
        Path(tmp).unlink(missing_ok=True)
    logger.info("ONNX export done in %.1f s", time.perf_counter() - start)


def _quantize(src: Path, dst: Path) -> None:
    """Dynamic int8 quantisation of the MatMul weights (after ORT's recommended pre-processing)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=dst.parent)
    os.close(fd)
    pre = Path(tmp).with_suffix(".pre.onnx")
    try:
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_dynamic(str(pre), tmp, weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul"])
        os.replace(tmp, dst)
    finally:
        Path(tmp).unlink(missing_ok=True)
        pre.unlink(missing_ok=True)


def _check(encoder: Any, path: Path, precision: str, threads: int | None,
           reference_path: Path) -> dict[str, float]:
    """Compare the exported encoder with PyTorch; delete the file if they disagree.

    PyTorch's answer on the check input is kept (``reference_path``) for the next precision.
    """
    import torch

    x = check_input(side=encoder_side(encoder))
    try:
        reference = np.load(reference_path)
    except (OSError, ValueError):
        with torch.inference_mode():
            reference = encoder(torch.from_numpy(x)).float().numpy()
        np.save(reference_path, reference)
    report = compare_outputs(reference, OnnxEncoder(path, threads).run(x))
    ok = (report["rel_error"] <= MAX_REL_ERROR_FP32 if precision == "fp32"
          else report["cosine"] >= MIN_COSINE_INT8)
    report.update(precision=precision, ok=ok)
    if not ok:
        path.unlink(missing_ok=True)
        raise RuntimeError(f"the ONNX encoder ({precision}) disagrees with PyTorch: {report}")
    path.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    logger.info("ONNX encoder check passed: %s", report)
    return report
