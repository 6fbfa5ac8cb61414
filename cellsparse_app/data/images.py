"""Image input/output and normalisation.

Images are returned channels-last: ``(H, W)`` for grayscale or ``(H, W, C)`` for multichannel, in
their native dtype (uint8, uint16, float32 ...). Networks get ``float32`` ``(C, H, W)`` through
:func:`prepare_image`. Coordinates in the core are ``(row, col)``; ``(x, y)`` only at the edges.

The label convention (-1 unlabelled, 0 background, 1..N instances) lives in
:mod:`cellsparse_app.data.labels`.
"""

from __future__ import annotations

import io as _io
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from cellsparse_app.errors import InvalidType

logger = logging.getLogger(__name__)

#: Largest image accepted (pixels per channel): bigger is almost surely a mistake or a bomb.
MAX_PIXELS: int = 12_000 * 12_000
#: Most channels accepted for a 2-D image.
MAX_CHANNELS: int = 16
#: First bytes of classic and BigTIFF files, either byte order.
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def read_image(source: str | Path | bytes, *, name: str | None = None) -> np.ndarray:
    """Read a PNG/JPEG/TIFF image from a path or bytes and validate it.

    The format is recognised from the file's first bytes, not its name. TIFF channel axes
    (ImageJ ``CYX``, planar RGB) are moved last; a z-stack or time series is refused. An alpha
    channel (transparency, not a measurement) is dropped.

    Args:
        source: file path or the file's bytes.
        name: what to call the image in error messages (defaults to the path).

    Returns:
        ``(H, W)`` or ``(H, W, C)`` array in the file's dtype.

    Raises:
        ValueError: missing, empty, corrupt, unsupported or absurdly large images, naming the
            problem.
    """
    label, data = _load(source, name, "image")
    try:
        if data[:4] in TIFF_MAGIC:
            image = _read_tiff(data)
        else:
            image = _read_pillow(data)
    except ValueError as exc:
        raise ValueError(f"{label}: {exc}") from exc
    except Exception as exc:  # decoder libraries raise many types on corrupt input
        raise ValueError(f"{label}: cannot decode image ({type(exc).__name__}: {exc})") from exc
    return validate_image(image, name=label)


def _load(source: str | Path | bytes, name: str | None, default: str) -> tuple[str, bytes]:
    """``(name for messages, the file's bytes)``; a missing or empty file is a ValueError."""
    if isinstance(source, (bytes, bytearray)):
        label, data = name or default, bytes(source)
    else:
        label, path = name or str(source), Path(source)
        if not path.is_file():
            raise ValueError(f"{label}: no such file")
        data = path.read_bytes()
    if not data:
        raise ValueError(f"{label}: the file is empty")
    return label, data


def _read_tiff(
    data: bytes, max_pixels: int = MAX_PIXELS, *, one_series: bool = False
) -> np.ndarray:
    """Decode a TIFF's first series; ``one_series``: refuse files holding several (labels)."""
    import tifffile

    with tifffile.TiffFile(_io.BytesIO(data)) as tif:
        if not tif.series:
            raise ValueError("TIFF holds no image")
        if one_series and len(tif.series) > 1:
            raise ValueError(f"TIFF holds {len(tif.series)} images; a label file holds one plane")
        series = tif.series[0]
        n = int(np.prod(series.shape))
        if n > max_pixels * MAX_CHANNELS:
            raise ValueError(f"TIFF of shape {series.shape} is too large (max {max_pixels} pixels)")
        image = series.asarray()
        axes = series.axes if len(series.axes) == image.ndim else ""
    keep = [i for i, size in enumerate(image.shape) if size != 1]
    if len(keep) >= 2:  # drop length-1 axes, keeping the axis letters aligned
        axes = "".join(axes[i] for i in keep) if axes else ""
        image = image.reshape([image.shape[i] for i in keep])
    if image.ndim != 3:
        return image
    channel = next((axes.index(a) for a in "CS" if a in axes), None)
    if channel is None:
        stack = next((a for a in "ZT" if a in axes), None)
        if stack is not None:
            kind = "z-stack" if stack == "Z" else "time series"
            raise ValueError(
                f"TIFF is a {kind} (axes {axes}, shape {image.shape}); only 2-D images are "
                "supported: save one plane"
            )
        # Unnamed third axis: a short leading axis is channels (channels-first writers).
        if image.shape[0] <= MAX_CHANNELS < image.shape[-1]:
            channel = 0
    if channel is not None:
        image = np.moveaxis(image, channel, -1)
    return image


def _read_pillow(
    data: bytes, max_pixels: int = MAX_PIXELS, *, indices: bool = False
) -> np.ndarray:
    """Decode with Pillow; ``indices``: keep palette indices and 1-bit values (label images)."""
    from PIL import Image

    try:
        opened = Image.open(_io.BytesIO(data))
    except Image.DecompressionBombError as exc:  # Pillow's own limit, above ours
        raise ValueError(f"image is too large ({exc})") from exc
    with opened as img:
        if img.width * img.height > max_pixels:
            raise ValueError(f"image of {img.width}x{img.height} pixels is too large")
        if indices:
            pass  # palette indices and 0/1 bits are the label values: no conversion
        elif img.mode == "1":
            img = img.convert("L")
        elif img.mode in ("P", "PA"):
            img = img.convert("RGBA")
        elif img.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
            img = img.convert("RGB")
        has_alpha = "A" in img.mode
        image = np.asarray(img)
    if has_alpha and image.ndim == 3:
        image = image[..., :-1]  # transparency carries no signal
    return image


def validate_image(image: np.ndarray, *, name: str = "image") -> np.ndarray:
    """Check that ``image`` is a usable 2-D (optionally multichannel) image and return it.

    Raises:
        TypeError: for non-numeric dtypes.
        ValueError: for wrong dimensions, empty or huge images, NaN/inf values.
    """
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.uint8)
    if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise InvalidType(f"{name}: unsupported dtype {image.dtype}")
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3):
        raise ValueError(
            f"{name}: expected a 2-D image (H, W) or (H, W, C), got shape {image.shape}"
        )
    if image.ndim == 3 and image.shape[-1] > MAX_CHANNELS:
        raise ValueError(
            f"{name}: {image.shape[-1]} channels in shape {image.shape}; a 3-D stack or "
            f"time series is not supported (max {MAX_CHANNELS} channels)"
        )
    h, w = image.shape[:2]
    if h == 0 or w == 0:
        raise ValueError(f"{name}: image is empty (shape {image.shape})")
    if h * w > MAX_PIXELS:
        raise ValueError(f"{name}: {h}x{w} pixels is too large (max {MAX_PIXELS})")
    if min(h, w) < 8:
        raise ValueError(f"{name}: {h}x{w} pixels is too small (min 8x8)")
    if np.issubdtype(image.dtype, np.floating) and not np.all(np.isfinite(image)):
        raise ValueError(f"{name}: contains NaN or infinite values")
    return image


def select_channels(image: np.ndarray, channels: Sequence[int] | None = None) -> np.ndarray:
    """Return ``(H, W, C)`` keeping ``channels`` (all when None)."""
    image = validate_image(image)
    if image.ndim == 2:
        image = image[..., None]
    if channels is None:
        return image
    channels = list(channels)
    bad = [c for c in channels if not 0 <= int(c) < image.shape[-1]]
    if bad or not channels:
        raise ValueError(f"channels {channels} not available in an image with {image.shape[-1]}")
    return image[..., channels]


def normalize(
    image: np.ndarray, lower: float = 1.0, upper: float = 99.8, *, sample: int = 1_000_000
) -> np.ndarray:
    """Per-channel percentile normalisation to ``float32`` (lower -> 0, upper -> 1), not clipped.

    Args:
        image: ``(H, W)`` or ``(H, W, C)``.
        lower, upper: percentiles mapped to 0 and 1.
        sample: at most this many pixels are used to estimate percentiles (speed on big images).
    """
    if not 0 <= lower < upper <= 100:
        raise ValueError(
            f"percentiles must satisfy 0 <= lower < upper <= 100, got {lower}, {upper}"
        )
    x = np.asarray(image, dtype=np.float32)
    squeeze = x.ndim == 2
    if squeeze:
        x = x[..., None]
    flat = x.reshape(-1, x.shape[-1])
    if len(flat) > sample:
        flat = flat[:: len(flat) // sample + 1]
    lo, hi = np.percentile(flat, [lower, upper], axis=0)
    scale = np.where(hi - lo > 1e-8, hi - lo, 1.0).astype(np.float32)
    out = (x - lo.astype(np.float32)) / scale
    return out[..., 0] if squeeze else out


def prepare_image(
    image: np.ndarray,
    channels: Sequence[int] | None = None,
    lower: float = 1.0,
    upper: float = 99.8,
) -> np.ndarray:
    """Channel selection + percentile normalisation -> ``float32 (C, H, W)`` for the networks."""
    x = normalize(select_channels(image, channels), lower, upper)
    return np.ascontiguousarray(np.moveaxis(x, -1, 0))


def write_labels(path: str | Path, labels: np.ndarray) -> Path:
    """Write an instance label image as a compressed TIFF (uint16, or uint32 if needed)."""
    import tifffile

    from cellsparse_app.data.labels import validate_labels

    labels = np.asarray(labels)
    validate_labels(labels)  # integer, 2-D, >= -1: a float or 3-D array is a caller's mistake
    if labels.size and labels.min() < 0:
        # -1 (unlabelled) must survive: keep the signed convention.
        out = labels.astype(np.int32)
    else:
        out = labels.astype(np.uint16 if labels.max(initial=0) <= 65535 else np.uint32)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, out, compression="zlib")
    return path


def read_labels(
    source: str | Path | bytes,
    *,
    name: str | None = None,
    max_pixels: int = MAX_PIXELS,
    min_value: int = -1,
) -> np.ndarray:
    """Decode a label image (PNG or TIFF, a path or the file's bytes) to ``int32``.

    The one label decoder: files (CLI, UI) and the REST API (whose codec converts the wire format
    0/1/>=2 afterwards) go through it. Values are returned as stored. Checks:

    * one 2-D plane: a multi-page TIFF, z-stack or colour image is refused; a grey picture saved
      as RGB(A) (all channels equal) is read as its one channel; palette PNGs keep their indices
      (the label values) and alpha is dropped;
    * an integer dtype (8/16/32-bit, signed or not): float images are refused, since ids saved as
      floats may have been interpolated or rounded;
    * values ``>= min_value`` (-1 unlabelled, by default) that fit ``int32`` (a uint32
      ``2**32 - 1`` must not wrap around to -1);
    * at most ``max_pixels`` pixels, checked before the pixels are decoded.

    Args:
        source: file path or bytes.
        name: what to call the file in messages (default: the path, or "label image").
        max_pixels: size cap.
        min_value: smallest value allowed.

    Raises:
        ValueError: each failed check, naming ``name`` and the offending value
            (:class:`~cellsparse_app.errors.InvalidType` for a float image).
    """
    label, data = _load(source, name, "label image")
    try:
        if data[:4] in TIFF_MAGIC:
            image = _read_tiff(data, max_pixels, one_series=True)
        else:
            image = _read_pillow(data, max_pixels, indices=True)
    except ValueError as exc:
        raise ValueError(f"{label}: {exc}") from exc
    except Exception as exc:  # decoder libraries raise many types on corrupt input
        raise ValueError(
            f"{label}: cannot decode label image ({type(exc).__name__}: {exc})"
        ) from exc
    return _check_label_values(_one_plane(image, label, max_pixels), label, min_value)


def _one_plane(image: np.ndarray, label: str, max_pixels: int) -> np.ndarray:
    """The single 2-D plane of a decoded label image (grey RGB(A) collapsed), size checked."""
    image = np.squeeze(image) if image.ndim > 2 else image
    if image.ndim == 3 and image.shape[-1] in (3, 4) and np.all(image[..., :3] == image[..., :1]):
        image = image[..., 0]  # grey saved as RGB(A): the ids are in every channel
    if image.ndim != 2:
        raise ValueError(
            f"{label}: label image must be single-channel (one 2-D plane), got shape {image.shape}"
        )
    if image.size == 0:
        raise ValueError(f"{label}: label image is empty (shape {image.shape})")
    if image.size > max_pixels:
        raise ValueError(f"{label}: {image.shape[0]}x{image.shape[1]} pixels is too large "
                         f"(max {max_pixels})")
    return image


def _check_label_values(image: np.ndarray, label: str, min_value: int) -> np.ndarray:
    """``int32`` copy of an integer label plane whose values are in ``min_value..int32 max``."""
    if image.dtype == bool:
        image = image.astype(np.uint8)
    if not np.issubdtype(image.dtype, np.integer):
        raise InvalidType(
            f"{label}: label image must have an integer dtype (8/16/32-bit), got {image.dtype}"
        )
    lo, hi = int(image.min()), int(image.max())
    if lo < min_value:
        hint = " (-1 unlabelled, 0 background, 1..N cells)" if min_value == -1 else ""
        raise ValueError(f"{label}: contains {lo}; label values must be >= {min_value}{hint}")
    if hi > np.iinfo(np.int32).max:
        raise ValueError(f"{label}: label id {hi} does not fit int32")
    return image.astype(np.int32)


import dataclasses  # noqa: E402  (kept next to the config it serves)

from cellsparse_app.json_config import JsonConfig  # noqa: E402


@dataclasses.dataclass(frozen=True)
class ImageConfig(JsonConfig):
    """How raw images become network input; saved with every model.

    Attributes:
        channels: channel indices to use (None: all channels of the image).
        lower, upper: normalisation percentiles mapped to 0 and 1.
        stain: ``None`` (the image as it is), ``"invert"`` (brightfield: bright background made
            dark) or ``"hematoxylin"`` (H&E: the haematoxylin channel of colour deconvolution, one
            channel; ``channels`` is then not used); see :mod:`cellsparse_app.data.stains`, whose
            :func:`~cellsparse_app.data.stains.suggest_stain` proposes one.
    """

    channels: tuple[int, ...] | None = None
    lower: float = 1.0
    upper: float = 99.8
    stain: str | None = None

    def __post_init__(self) -> None:
        from cellsparse_app.data.stains import check_stain

        check_stain(self.stain)

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """``float32 (C, H, W)`` network input for ``image``."""
        if self.stain == "hematoxylin":
            from cellsparse_app.data.stains import hematoxylin

            return prepare_image(hematoxylin(validate_image(image)), None, self.lower, self.upper)
        x = prepare_image(image, self.channels, self.lower, self.upper)
        if self.stain == "invert":
            x = np.subtract(1.0, x, out=x)
        return x
