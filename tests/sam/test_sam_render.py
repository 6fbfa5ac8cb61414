"""Rendering microscopy images to SAM's RGB uint8 input, and the embedding cache key."""

from __future__ import annotations

import numpy as np
import pytest

from cellsparse_app.sam import RenderConfig, render_rgb
from cellsparse_app.sam.render import image_key


def test_16bit_grey_is_percentile_normalised_to_grey_rgb(usiigaci_phase):
    image = usiigaci_phase[0].image
    assert image.dtype == np.uint16
    rgb = render_rgb(image)
    assert rgb.shape == image.shape + (3,) and rgb.dtype == np.uint8
    assert np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])
    # 1st..99.8th percentiles span 0..255: about 1% black, 0.2% white.
    assert 0.003 < np.mean(rgb[..., 0] == 0) < 0.03
    assert 0.0005 < np.mean(rgb[..., 0] == 255) < 0.01
    order = np.argsort(image.ravel()[::97])
    assert np.all(np.diff(rgb[..., 0].ravel()[::97][order].astype(int)) >= 0)  # monotone


def test_rgb8_passes_through_and_channels_can_be_chosen(dsb_histo):
    image = next(s.image for s in dsb_histo if s.image.ndim == 3)
    assert np.array_equal(render_rgb(image), image)
    picked = render_rgb(image, RenderConfig(channels=(2, 0)))
    # Two channels -> green (the first) and magenta (the second), as the UI shows them.
    assert np.array_equal(picked[..., 0], picked[..., 2])
    assert abs(np.corrcoef(picked[..., 1].ravel(), image[..., 2].ravel())[0, 1]) > 0.95
    assert abs(np.corrcoef(picked[..., 0].ravel(), image[..., 0].ravel())[0, 1]) > 0.95
    with pytest.raises(ValueError, match="not available"):
        render_rgb(image, RenderConfig(channels=(3,)))


def test_multichannel_float_uses_first_three_channels():
    rng = np.random.default_rng(0)
    image = rng.random((32, 40, 5)).astype(np.float32)
    image[..., 3:] = 1000.0  # channels 3, 4 would dominate if used
    rgb = render_rgb(image)
    assert rgb.shape == (32, 40, 3)
    assert 100 < rgb.mean() < 155


def test_bad_images_are_refused():
    with pytest.raises(ValueError, match="NaN"):
        render_rgb(np.full((16, 16), np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="2-D image"):
        render_rgb(np.zeros((4, 16, 16, 2)))


def test_image_key_depends_on_content_render_and_model():
    image = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    key = image_key(image, None, "vit_t")
    assert key == image_key(image.copy(), RenderConfig(), "vit_t")
    changed = image.copy()
    changed[5, 5] += 1
    assert image_key(changed, None, "vit_t") != key
    assert image_key(image, RenderConfig(upper=99.0), "vit_t") != key
    assert image_key(image, None, "vit_b") != key
    assert image_key(image.astype(np.int32), None, "vit_t") != key


class _RecordingEngine:
    """Stands in for SAM's encoder: keeps every picture it is asked to embed."""

    name = "recorder"
    encoder_calls = 0

    def __init__(self):
        self.seen = []

    def encode(self, rgb):
        self.seen.append(rgb.copy())
        return object()


def _image(n_channels: int) -> np.ndarray:
    rng = np.random.default_rng(n_channels)
    image = rng.gamma(2.0, 300.0, (48, 40, n_channels)).astype(np.uint16)
    image[..., -1] //= 3  # channels of different brightness
    return image[..., 0] if n_channels == 1 else image


@pytest.mark.parametrize("n_channels", [1, 2, 3])
@pytest.mark.parametrize("lower, upper", [(1.0, 99.8), (5.0, 90.0)])
def test_sam_receives_the_picture_the_ui_shows(n_channels, lower, upper):
    """One image-to-RGB path: what the UI displays is what SAM embeds, whether SAM gets the UI's
    display (web app) or the raw image with the same settings (REST API, CLI)."""
    from cellsparse_app.data.display import to_rgb as to_display
    from cellsparse_app.data.images import ImageConfig
    from cellsparse_app.sam import SamAnnotator

    image = _image(n_channels)
    display = to_display(image, ImageConfig(lower=lower, upper=upper))
    assert display.shape == (48, 40, 3) and display.dtype == np.uint8
    engine = _RecordingEngine()
    annotator = SamAnnotator.from_engine(engine)
    annotator.set_image(display)  # the web app sends its display
    annotator.set_image(image, RenderConfig(lower=lower, upper=upper))  # API / CLI: raw pixels
    ui_seen, api_seen = engine.seen
    assert np.array_equal(ui_seen, display)
    assert np.array_equal(api_seen, display)
