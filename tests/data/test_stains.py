"""Stain options: the detector on synthetic H&E-, brightfield- and fluorescence-like images, and
ImageConfig's inversion and haematoxylin channel."""

from __future__ import annotations

import numpy as np
import pytest

from cellsparse_app.data.images import ImageConfig
from cellsparse_app.data.stains import hematoxylin, suggest_stain


def _blobs(shape=(128, 128)):
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    mask = np.zeros(shape, bool)
    for r, c in ((30, 30), (30, 90), (90, 60), (100, 110)):
        mask |= (rr - r) ** 2 + (cc - c) ** 2 <= 12**2
    return mask


def _he_like(rng):
    mask = _blobs()
    image = np.empty((*mask.shape, 3), np.float32)
    image[:] = (235, 200, 220)  # pink eosin background
    image[mask] = (110, 60, 160)  # purple haematoxylin nuclei
    return np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8), mask


def _fluorescence_like(rng):
    mask = _blobs()
    image = np.where(mask, 180, 8).astype(np.float32) + rng.normal(0, 3, mask.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def _brightfield_like(rng):
    mask = _blobs()
    image = np.where(mask, 90, 210).astype(np.float32) + rng.normal(0, 3, mask.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def test_detector_suggests_per_kind(rng):
    he, _ = _he_like(rng)
    fl, _ = _fluorescence_like(rng)
    bf, _ = _brightfield_like(rng)
    assert suggest_stain(he).stain == "hematoxylin"
    assert suggest_stain(fl).stain is None
    assert suggest_stain(bf).stain == "invert"
    assert suggest_stain(np.stack([bf] * 3, -1)).stain == "invert"  # grey stored as RGB
    # Phase contrast: mid-grey background with brighter and darker parts: left alone.
    phase = (rng.normal(32000, 3000, (128, 128))).astype(np.uint16)
    assert suggest_stain(phase).stain is None
    # A set: H&E and grey RGB brightfield together -> haematoxylin, which serves both.
    mixed = suggest_stain([he, np.stack([bf] * 3, -1), he])
    assert mixed.stain == "hematoxylin" and "H&E" in mixed.reason
    assert suggest_stain([fl, fl, he]).stain is None


def test_stain_options_make_objects_bright(rng):
    he, mask = _he_like(rng)
    h = ImageConfig(stain="hematoxylin").prepare(he)
    assert h.shape == (1, *mask.shape)
    assert h[0][mask].mean() > h[0][~mask].mean() + 0.5
    bf, mask = _brightfield_like(rng)
    x = ImageConfig(stain="invert").prepare(bf)
    assert x.shape == (1, *mask.shape)
    assert x[0][mask].mean() > 0.8 and x[0][~mask].mean() < 0.2
    plain = ImageConfig().prepare(bf)
    np.testing.assert_allclose(x, 1 - plain, atol=1e-6)


def test_stain_config_round_trip_and_errors():
    cfg = ImageConfig(stain="hematoxylin")
    assert ImageConfig.from_dict(cfg.to_dict()) == cfg
    assert ImageConfig.from_dict({"channels": None, "lower": 1.0, "upper": 99.8}).stain is None
    with pytest.raises(ValueError, match="'eosin'"):
        ImageConfig(stain="eosin")
    with pytest.raises(ValueError, match=r"\(64, 64\)"):
        hematoxylin(np.zeros((64, 64)))
    with pytest.raises(ValueError, match="at least one"):
        suggest_stain([])
