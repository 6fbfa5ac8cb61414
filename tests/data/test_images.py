"""Image reading, validation, normalisation and label files: formats, dtypes and bad inputs."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tifffile
from PIL import Image

from cellsparse_app.data.images import (
    MAX_PIXELS,
    ImageConfig,
    normalize,
    prepare_image,
    read_image,
    read_labels,
    select_channels,
    validate_image,
    write_labels,
)


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    image = Image.fromarray(array, mode=mode) if mode else Image.fromarray(array)
    image.save(buf, format="PNG")
    return buf.getvalue()


def _tiff(array: np.ndarray, **kwargs) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, array, **kwargs)
    return buf.getvalue()


@pytest.fixture
def gray(rng):
    return rng.integers(0, 255, (40, 50), dtype=np.uint8)


def test_png_jpeg_and_paths(tmp_path, gray):
    assert (read_image(_png(gray)) == gray).all()
    path = tmp_path / "img.png"
    path.write_bytes(_png(gray))
    assert (read_image(path) == gray).all() and (read_image(str(path)) == gray).all()
    buf = io.BytesIO()
    Image.fromarray(np.stack([gray] * 3, -1)).save(buf, format="JPEG", quality=95)
    jpg = read_image(buf.getvalue())
    assert jpg.shape == (40, 50, 3) and jpg.dtype == np.uint8
    # The content decides the format, not the name.
    wrong = tmp_path / "actually_png.tif"
    wrong.write_bytes(_png(gray))
    assert (read_image(wrong) == gray).all()


def test_16bit_png_and_tiff(rng):
    img16 = rng.integers(0, 65535, (30, 40), dtype=np.uint16)
    assert read_image(_png(img16)).dtype == np.uint16
    assert (read_image(_png(img16)) == img16).all()
    assert (read_image(_tiff(img16)) == img16).all()
    f32 = rng.random((30, 40), dtype=np.float32)
    assert read_image(_tiff(f32)).dtype == np.float32


def test_real_images_read_back(tmp_path, usiigaci_phase, dsb_histo):
    phase = usiigaci_phase[0].image
    path = tmp_path / "phase.tif"
    tifffile.imwrite(path, phase)
    assert read_image(path).dtype == np.uint16 and (read_image(path) == phase).all()
    rgb = dsb_histo[1].image
    assert (read_image(_png(rgb)) == rgb).all()


def test_rgba_png_drops_alpha(gray):
    rgba = np.stack([gray, gray // 2, gray // 3, np.full_like(gray, 255)], -1)
    out = read_image(_png(rgba))
    assert out.shape == (40, 50, 3) and (out[..., 1] == gray // 2).all()
    rgba[..., 3] = np.arange(50, dtype=np.uint8)[None]
    assert read_image(_png(rgba)).shape == (40, 50, 3)
    la = np.stack([gray, np.full_like(gray, 200)], -1)
    assert (read_image(_png(la, "LA")) == gray).all()


def test_palette_and_binary_png(gray):
    buf = io.BytesIO()
    Image.fromarray(gray).convert("P").save(buf, format="PNG")
    assert read_image(buf.getvalue()).shape == (40, 50, 3)
    buf = io.BytesIO()
    Image.fromarray(gray > 128).save(buf, format="PNG")
    binary = read_image(buf.getvalue())
    assert binary.shape == (40, 50) and set(np.unique(binary)) <= {0, 255}


@pytest.mark.parametrize("shape, kwargs", [
    ((3, 30, 40), {"imagej": True, "metadata": {"axes": "CYX"}}),
    ((2, 30, 40), {"photometric": "minisblack"}),
    ((3, 30, 40), {"photometric": "rgb", "planarconfig": "separate"}),
    ((30, 40, 3), {"photometric": "rgb"}),
    ((1, 3, 30, 40), {"imagej": True, "metadata": {"axes": "TCYX"}}),
])
def test_multichannel_tiff_is_channels_last(rng, shape, kwargs):
    data = rng.integers(0, 255, shape, dtype=np.uint8)
    out = read_image(_tiff(data, **kwargs))
    assert out.shape[:2] == (30, 40) and out.ndim == 3
    channels_first = data.reshape(-1, 30, 40) if shape[-1] != 3 or len(shape) == 4 else None
    if channels_first is not None:
        assert (out[..., 1] == channels_first[1]).all()


def test_small_cyx_tiff_uses_axes_not_sizes(rng):
    data = rng.integers(0, 255, (3, 10, 12), dtype=np.uint8)
    out = read_image(_tiff(data, imagej=True, metadata={"axes": "CYX"}))
    assert out.shape == (10, 12, 3) and (out[..., 2] == data[2]).all()


def test_zstack_tiff_is_refused(rng):
    data = rng.integers(0, 255, (5, 30, 40), dtype=np.uint8)
    with pytest.raises(ValueError, match="z-stack"):
        read_image(_tiff(data, imagej=True, metadata={"axes": "ZYX"}))


@pytest.mark.parametrize(
    "data, match",
    [
        (b"", "empty"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "cannot decode"),
        (b"II*\x00" + b"\xff" * 60, "cannot decode|TIFF"),
        (b"this is not an image at all", "cannot decode"),
    ],
)
def test_corrupt_files(data, match):
    with pytest.raises(ValueError, match=match):
        read_image(data, name="upload.png")


def test_truncated_png_and_missing_file(tmp_path, gray):
    with pytest.raises(ValueError, match="upload.png"):
        read_image(_png(gray)[:60], name="upload.png")
    with pytest.raises(ValueError, match="no such file"):
        read_image(tmp_path / "missing.png")
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        read_image(empty)


def test_absurd_size_is_refused_before_decoding():
    # A PNG header claiming 20000 x 20000 pixels (a decompression bomb) is refused from its header.
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")
    with pytest.raises(ValueError, match="too large"):
        read_image(png)
    assert 20000 * 20000 > MAX_PIXELS


@pytest.mark.parametrize(
    "array, error, match",
    [
        (np.full((20, 20), np.nan, np.float32), ValueError, "NaN"),
        (np.full((20, 20), np.inf), ValueError, "NaN or infinite"),
        (np.zeros((4, 20)), ValueError, "too small"),
        (np.zeros((0, 20)), ValueError, "empty"),
        (np.zeros((20,)), ValueError, "2-D"),
        (np.zeros((2, 3, 20, 20)), ValueError, "2-D"),
        (np.zeros((20, 20, 40)), ValueError, "channels"),
        (np.zeros((20, 20), complex), TypeError, "dtype"),
        (np.array([["a"] * 10] * 10), TypeError, "dtype"),
    ],
)
def test_validate_image_rejects(array, error, match):
    with pytest.raises(error, match=match):
        validate_image(array, name="x")


def test_validate_image_accepts_and_squeezes():
    assert validate_image(np.zeros((10, 10, 1), np.uint16)).shape == (10, 10)
    assert validate_image(np.zeros((10, 10), bool)).dtype == np.uint8


def test_channels_and_normalisation(rng):
    img = np.stack([rng.integers(0, 100, (20, 20)), rng.integers(1000, 5000, (20, 20))], -1)
    assert select_channels(img).shape == (20, 20, 2)
    assert (select_channels(img, [1])[..., 0] == img[..., 1]).all()
    with pytest.raises(ValueError, match="not available"):
        select_channels(img, [2])
    with pytest.raises(ValueError, match="not available"):
        select_channels(img, [])
    x = normalize(img.astype(np.uint16), 0, 100)
    assert x.dtype == np.float32
    assert np.allclose(x.min(axis=(0, 1)), 0) and np.allclose(x.max(axis=(0, 1)), 1)
    assert np.allclose(normalize(np.full((10, 10), 7, np.uint8)), 0)  # constant: no division by 0
    with pytest.raises(ValueError, match="percentiles"):
        normalize(img, 50, 10)
    prepared = prepare_image(img, channels=[1])
    assert prepared.shape == (1, 20, 20) and prepared.flags["C_CONTIGUOUS"]
    cfg = ImageConfig(channels=(0, 1), lower=0.0, upper=100.0)
    again = ImageConfig.from_dict(cfg.to_dict())
    assert again.to_dict() == cfg.to_dict()
    assert np.array_equal(again.prepare(img), cfg.prepare(img))
    assert cfg.prepare(img).shape == (2, 20, 20)


def test_label_files_round_trip(tmp_path, dsb_fluo):
    mask = dsb_fluo[0].mask
    dense = read_labels(write_labels(tmp_path / "dense.tif", mask))
    assert dense.dtype == np.int32 and (dense == mask).all()
    assert tifffile.imread(tmp_path / "dense.tif").dtype == np.uint16
    sparse = np.where(mask == 0, -1, mask)
    assert (read_labels(write_labels(tmp_path / "sub" / "sparse.tif", sparse)) == sparse).all()
    big = np.zeros((10, 10), np.uint32)
    big[0, 0] = 70000
    assert tifffile.imread(write_labels(tmp_path / "big.tif", big)).dtype == np.uint32
    png = tmp_path / "labels.png"
    png.write_bytes(_png(mask.astype(np.uint16)))
    assert (read_labels(png) == mask).all()


def test_label_files_bad_inputs(tmp_path, gray):
    with pytest.raises(TypeError):
        write_labels(tmp_path / "f.tif", np.zeros((10, 10), np.float32) + 0.5)
    rgb = tmp_path / "rgb.png"
    rgb.write_bytes(_png(np.stack([gray, gray[::-1], gray], -1)))
    with pytest.raises(ValueError, match="single-channel"):
        read_labels(rgb)
    rgb.write_bytes(_png(np.stack([gray] * 3, -1)))  # grey saved as RGB: its one channel
    assert (read_labels(rgb) == gray).all()
    floats = tmp_path / "floats.tif"
    tifffile.imwrite(floats, np.full((10, 10), 3.0, np.float32))
    with pytest.raises(ValueError, match="integer dtype"):
        read_labels(floats)  # one rule with the REST API: float label images are refused
    wrapped = tmp_path / "wrapped.tif"
    tifffile.imwrite(wrapped, np.full((10, 10), 2**32 - 1, np.uint32))
    with pytest.raises(ValueError, match="int32"):
        read_labels(wrapped)  # must not wrap around to -1 (unlabelled)
    neg = tmp_path / "neg.tif"
    tifffile.imwrite(neg, np.full((10, 10), -5, np.int32))
    with pytest.raises(ValueError, match="-5"):
        read_labels(neg)
