"""Wire conversions of the REST API: base64 images in, GeoJSON Features out.

Images arrive base64-encoded (PNG as samapi clients send, TIFF as qupath-extension-cellsparse
sends, or JPEG). Their header is read first and oversized images are refused *before* any pixel is
decoded (decompression bombs). Label images are decoded by the core's one label decoder,
:func:`cellsparse_app.data.images.read_labels`; this module adds only the size cap's 413 and the
cellsparse-api wire format (0 unlabelled, 1 background, >=2 instances), converted to the core
convention with :func:`cellsparse_app.data.labels.from_wire`.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import math
import re
from typing import Any, Sequence

import numpy as np

from cellsparse_app.api.errors import PayloadTooLarge
from cellsparse_app.data.images import TIFF_MAGIC, read_image, read_labels
from cellsparse_app.data.labels import from_wire, validate_labels
from cellsparse_app.errors import InvalidType

logger = logging.getLogger(__name__)

_DATA_URL = re.compile(r"^data:[\w/+.-]+;base64,", re.IGNORECASE)


def decode_base64(data: Any, what: str) -> bytes:
    """Bytes of a base64 string (a ``data:...;base64,`` prefix and line breaks are allowed).

    Raises:
        TypeError: ``data`` is not a string.
        ValueError: empty or not base64, naming ``what``.
    """
    if not isinstance(data, str):
        raise InvalidType(f"{what} must be a base64 string, got {type(data).__name__}")
    text = _DATA_URL.sub("", data.strip(), count=1)
    text = "".join(text.split())
    if not text:
        raise ValueError(f"{what} is empty")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"{what} is not valid base64 ({exc})") from None
    if not raw:
        raise ValueError(f"{what} decodes to no bytes")
    return raw


def image_size(raw: bytes, what: str) -> tuple[int, int]:
    """``(height, width)`` of an encoded image read from its header only (no pixel decoding).

    Raises:
        ValueError: not a PNG/TIFF/JPEG (or another format Pillow knows), naming ``what``.
    """
    if raw[:4] in TIFF_MAGIC:
        import tifffile

        try:
            with tifffile.TiffFile(io.BytesIO(raw)) as tif:
                shape = tif.series[0].shape
                axes = tif.series[0].axes
        except Exception as exc:  # tifffile raises many types on corrupt headers
            raise ValueError(f"{what}: not a readable TIFF ({type(exc).__name__}: {exc})") from None
        dims = [n for n, a in zip(shape, axes) if a in "YX"]
        if len(dims) < 2:
            raise ValueError(f"{what}: TIFF of shape {shape} ({axes}) is not a 2-D image")
        n_planes = math.prod(n for n, a in zip(shape, axes) if a not in "YXSC")
        if n_planes > 1:
            raise ValueError(f"{what}: TIFF of shape {shape} ({axes}) has several planes")
        return int(dims[-2]), int(dims[-1])
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(raw)) as img:  # lazy: reads the header only
            return int(img.height), int(img.width)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        start = raw[:8]
        raise ValueError(
            f"{what}: not a PNG, TIFF or JPEG image (starts with {start!r}; {exc})"
        ) from None
    except Image.DecompressionBombError as exc:
        raise PayloadTooLarge(f"{what}: {exc}") from None


def check_size(raw: bytes, what: str, max_pixels: int) -> tuple[int, int]:
    """:func:`image_size`, refusing empty and over-``max_pixels`` images.

    Raises:
        PayloadTooLarge: more than ``max_pixels`` pixels.
        ValueError: zero-sized image.
    """
    h, w = image_size(raw, what)
    if h <= 0 or w <= 0:
        raise ValueError(f"{what}: image is empty ({w}x{h} pixels)")
    if h * w > max_pixels:
        raise PayloadTooLarge(
            f"{what}: {w}x{h} = {h * w} pixels exceeds this server's limit of {max_pixels} "
            "pixels; send a smaller region or a downsampled image"
        )
    return h, w


def decode_image(data: Any, what: str, max_pixels: int) -> np.ndarray:
    """A base64 image as ``(H, W)`` or ``(H, W, C)`` in its native dtype (8/16-bit, gray/RGB)."""
    raw = decode_base64(data, what)
    check_size(raw, what, max_pixels)
    return read_image(raw, name=what)


def decode_label_image(
    data: Any, what: str, max_pixels: int, *, min_value: int = 0
) -> np.ndarray:
    """A base64 single-channel integer image (8/16/32-bit PNG or TIFF) as ``int32``.

    :func:`cellsparse_app.data.images.read_labels` after the header's size check (413 for an
    over-``max_pixels`` image); values below ``min_value`` are refused.
    """
    raw = decode_base64(data, what)
    check_size(raw, what, max_pixels)
    return read_labels(raw, name=what, max_pixels=max_pixels, min_value=min_value)


def decode_wire_labels(
    data: Any, image_shape: Sequence[int], what: str, max_pixels: int
) -> np.ndarray:
    """cellsparse-api wire labels (0 unlabelled, 1 background, >=2 cells) -> -1/0/1..N int32."""
    wire = decode_label_image(data, what, max_pixels, min_value=0)
    if tuple(wire.shape) != tuple(image_shape[:2]):
        raise ValueError(
            f"{what}: labels of shape {wire.shape} do not match the image of shape "
            f"{tuple(image_shape[:2])}"
        )
    return from_wire(wire)


def decode_sparse_labels(
    data: Any, image_shape: Sequence[int], what: str, max_pixels: int
) -> np.ndarray:
    """Labels already in the core convention (-1/0/1..N; signed TIFF) for the /api/v1 routes."""
    labels = decode_label_image(data, what, max_pixels, min_value=-1)
    return validate_labels(labels, shape=tuple(image_shape))


def geojson_features(
    labels: np.ndarray, simplify_tol: float | None = None
) -> list[dict[str, Any]]:
    """cellsparse-api response: one Polygon Feature per instance, ``object_idx`` from 0.

    ``simplify_tol`` None, NaN (QuPath's "not applying") or <= 0 keeps exact outlines.
    """
    from cellsparse_app.data.export import labels_to_geojson_features

    tol = simplify_tol if simplify_tol is not None and math.isfinite(simplify_tol) else 0.0
    return labels_to_geojson_features(labels, simplify_tol=max(0.0, float(tol)))


def sam_features(
    masks: Sequence[np.ndarray], scores: Sequence[float], model: str
) -> list[dict[str, Any]]:
    """samapi response: a Feature per mask (``object_idx``, ``label``, ``quality``, ``sam_model``).

    samapi numbers ``object_idx`` from -1 (``i - 1``) and the QuPath extension turns it into the
    class of unclassified objects, so the numbering is kept; unlike samapi, each ``quality`` is
    the score of its own mask. Empty masks are left out (samapi sends an empty Polygon, which
    QuPath turns into an empty annotation); the others are numbered without gaps.
    """
    from cellsparse_app.data.polygons import mask_to_polygons

    out = []
    for mask, score in zip(masks, scores):
        rings = mask_to_polygons(_largest_part(np.asarray(mask, dtype=bool)))
        if not rings:
            continue
        coords = [rings[0].tolist()]
        out.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": coords},
                "properties": {
                    "object_idx": len(out) - 1,
                    "label": "object",
                    "quality": float(score),
                    "sam_model": model,
                },
            }
        )
    return out


def _largest_part(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected part of ``mask`` (samapi keeps only the longest contour).

    Tracing only this part keeps speckled masks (hundreds of specks) cheap to outline.
    """
    from scipy import ndimage as ndi

    parts, n = ndi.label(mask, structure=np.ones((3, 3), dtype=bool))
    if n <= 1:
        return mask
    counts = np.bincount(parts.ravel())
    counts[0] = 0
    return parts == int(counts.argmax())
