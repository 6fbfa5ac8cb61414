"""The one label decoder (``data.images.read_labels``): PNG/TIFF, 8/16/32-bit, bytes or paths,
and the refusals shared by files and the REST API (float, negative, multi-plane, too large,
corrupt)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tifffile
from PIL import Image

from cellsparse_app.data.images import read_labels
from cellsparse_app.errors import InvalidType


def _labels(dtype, top: int) -> np.ndarray:
    lab = np.zeros((24, 30), dtype)
    lab[2:8, 3:9] = 1
    lab[10:20, 12:25] = top
    return lab


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    (Image.fromarray(array, mode=mode) if mode else Image.fromarray(array)).save(buf, "PNG")
    return buf.getvalue()


def _tiff(array: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, array, **kw)
    return buf.getvalue()


@pytest.mark.parametrize(
    "dtype, top, encode",
    [
        (np.uint8, 200, _png),
        (np.uint16, 60000, _png),
        (np.uint8, 255, _tiff),
        (np.uint16, 65535, _tiff),
        (np.uint32, 2**31 - 1, _tiff),
        (np.int32, 70000, _tiff),
    ],
)
def test_png_and_tiff_of_8_16_32_bits_decode_to_int32(dtype, top, encode, tmp_path):
    lab = _labels(dtype, top)
    raw = encode(lab)
    out = read_labels(raw)
    assert out.dtype == np.int32 and out.shape == lab.shape
    assert (out == lab.astype(np.int64)).all()
    path = tmp_path / "labels.bin"  # the format comes from the bytes, not the name
    path.write_bytes(raw)
    assert (read_labels(path) == out).all()


def test_signed_tiff_keeps_unlabelled_and_palette_png_keeps_indices():
    sparse = _labels(np.int16, 3)
    sparse[0] = -1
    assert (read_labels(_tiff(sparse)) == sparse).all()
    palette = Image.fromarray(_labels(np.uint8, 5), mode="L").convert("P")
    buf = io.BytesIO()
    palette.putpalette([v for i in range(256) for v in (i * 7 % 256, 0, 255 - i)])
    palette.save(buf, "PNG")
    assert (read_labels(buf.getvalue()) == _labels(np.uint8, 5)).all()


def test_a_float_image_is_refused_naming_the_file_and_dtype():
    # Even with integral values: one rule for files and the REST API.
    with pytest.raises(InvalidType, match=r"truth\.tif: .*integer dtype.*float32"):
        read_labels(_tiff(_labels(np.float32, 3)), name="truth.tif")
    buf = io.BytesIO()
    Image.fromarray(_labels(np.float32, 3), mode="F").save(buf, "TIFF")  # Pillow's float TIFF
    with pytest.raises(ValueError, match="integer dtype"):
        read_labels(buf.getvalue(), name="lbl")


def test_values_below_the_minimum_and_beyond_int32_are_refused():
    with pytest.raises(ValueError, match=r"lbl: contains -5; label values must be >= -1"):
        read_labels(_tiff(np.full((10, 10), -5, np.int32)), name="lbl")
    with pytest.raises(ValueError, match=r"wire: contains -1; label values must be >= 0"):
        read_labels(_tiff(np.full((10, 10), -1, np.int32)), name="wire", min_value=0)
    with pytest.raises(ValueError, match="4294967295 does not fit int32"):
        read_labels(_tiff(np.full((10, 10), 2**32 - 1, np.uint32)))


def test_several_planes_or_colour_channels_are_refused():
    stack = np.stack([_labels(np.uint16, 3)] * 20)  # 20 planes: a z-stack
    with pytest.raises(ValueError, match="single-channel.*shape"):
        read_labels(_tiff(stack), name="stack")
    buf = io.BytesIO()
    with tifffile.TiffWriter(buf) as tif:  # two separate images in one file
        tif.write(_labels(np.uint16, 3))
        tif.write(_labels(np.uint16, 4), photometric="minisblack")
    with pytest.raises(ValueError, match="pages: TIFF holds 2 images"):
        read_labels(buf.getvalue(), name="pages")
    colour = np.stack([_labels(np.uint8, 3), _labels(np.uint8, 9), _labels(np.uint8, 3)], -1)
    with pytest.raises(ValueError, match=r"single-channel.*\(24, 30, 3\)"):
        read_labels(_png(colour))
    grey_rgba = np.dstack([np.stack([_labels(np.uint8, 3)] * 3, -1),
                           np.full((24, 30), 255, np.uint8)])
    assert (read_labels(_png(grey_rgba)) == _labels(np.uint8, 3)).all()


def test_size_cap_corrupt_empty_and_missing_files_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"big: .*too large"):
        read_labels(_png(_labels(np.uint8, 3)), name="big", max_pixels=100)
    with pytest.raises(ValueError, match=r"big: .*too large"):
        read_labels(_tiff(_labels(np.uint16, 3)), name="big", max_pixels=100)
    truncated = _png(_labels(np.uint8, 3))[:60]
    with pytest.raises(ValueError, match=r"cut\.png: cannot decode label image"):
        read_labels(truncated, name="cut.png")
    with pytest.raises(ValueError, match=r"junk: cannot decode label image"):
        read_labels(b"not an image at all", name="junk")
    with pytest.raises(ValueError, match="the file is empty"):
        read_labels(b"")
    with pytest.raises(ValueError, match=r"nope\.tif: no such file"):
        read_labels(tmp_path / "nope.tif")
