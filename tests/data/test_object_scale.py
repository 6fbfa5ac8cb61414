"""Object-scale normalisation: diameters of known disks, resizing round trips, scale choice."""

from __future__ import annotations

import numpy as np
import pytest

from cellsparse_app.data.object_scale import (
    median_diameter,
    object_diameters,
    prediction_scale,
    rescale_image,
    rescale_labels,
    resize_labels,
    resize_output,
    scale_for,
)


def _disks(radius: float, shape=(200, 200), centres=((50, 50), (50, 150), (150, 100))):
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    for i, (r, c) in enumerate(centres, start=1):
        labels[(rr - r) ** 2 + (cc - c) ** 2 <= radius**2] = i
    return labels


@pytest.mark.parametrize("radius", [5, 12, 30])
def test_diameter_of_disks_is_twice_the_radius(radius):
    diameters = object_diameters(_disks(radius))
    assert len(diameters) == 3
    np.testing.assert_allclose(diameters, 2 * radius, rtol=0.05)
    assert median_diameter([_disks(radius), _disks(radius)]) == pytest.approx(2 * radius, rel=0.05)


def test_median_ignores_background_and_unlabelled_and_pools_images():
    lab = _disks(10)
    lab[lab == 0] = -1
    lab[:5, :5] = 0
    assert median_diameter(lab) == pytest.approx(20, rel=0.05)
    pooled = median_diameter([_disks(10), _disks(10), _disks(40, shape=(400, 400))])
    assert pooled == pytest.approx(20, rel=0.05)  # 6 of 9 objects are 20 px
    assert median_diameter(np.full((8, 8), -1, np.int32)) is None
    with pytest.raises(TypeError, match="float"):
        object_diameters(np.zeros((4, 4), np.float32))


def test_scale_for_and_its_errors():
    assert scale_for(60, 30) == 0.5
    assert scale_for(15, 30) == 2.0
    with pytest.raises(ValueError, match="-3"):
        scale_for(-3)
    with pytest.raises(ValueError, match="10000"):
        scale_for(10000, 30)


def test_prediction_scale():
    assert prediction_scale(0.5, 60.0, None) == 0.5
    assert prediction_scale(0.5, 60.0, 30.0) == 1.0  # cells half as large -> twice the scale
    with pytest.warns(UserWarning, match="no training diameter"):
        assert prediction_scale(1.0, None, 30.0) == 1.0


@pytest.mark.parametrize("scale", [0.5, 0.37, 2.0, 1.6])
def test_labels_round_trip_keeps_values_and_shapes(scale):
    lab = _disks(25)
    lab[:40] = -1
    small = rescale_labels(lab, scale)
    assert small.shape == (round(200 * scale), round(200 * scale))
    assert set(np.unique(small)) == set(np.unique(lab))  # -1, 0 and every id survive
    back = resize_labels(small, lab.shape)
    assert back.shape == lab.shape and back.dtype == lab.dtype
    assert (back == lab).mean() > 0.97
    assert median_diameter(rescale_labels(_disks(25), scale)) == pytest.approx(50 * scale, rel=0.1)


def test_image_resize_shapes_and_values():
    x = np.random.default_rng(0).random((2, 101, 64)).astype(np.float32)
    assert rescale_image(x, 1) is x
    down = rescale_image(x, 0.5)
    assert down.shape == (2, 50, 32) and down.dtype == np.float32
    assert down.mean() == pytest.approx(x.mean(), abs=0.01)  # area averaging keeps the mean
    up = rescale_image(x, 2.0)
    assert up.shape == (2, 202, 128)
    back = resize_output(down, (101, 64))
    assert back.shape == (2, 101, 64)
    const = np.full((3, 40, 40), 0.7, np.float32)
    np.testing.assert_allclose(resize_output(rescale_image(const, 0.3), (40, 40)), 0.7, atol=1e-5)
