"""The zoomed view: crop sizes, clamping at the borders, canvas <-> image coordinates, pasting
brush strokes back into the image."""

from __future__ import annotations

import numpy as np
import pytest

from cellsparse_app.session.viewport import ZOOM_FACTORS, Viewport


def test_crops_are_a_zoomth_of_each_side_and_stay_inside():
    full = Viewport.full((1024, 1024, 3))
    assert full.crop_shape == (1024, 1024) and full.window == (slice(0, 1024), slice(0, 1024))
    two = full.zoomed(2)
    assert two.crop_shape == (512, 512) and two.origin == (256, 256) and two.centre == (512, 512)
    assert Viewport.full((101, 37)).zoomed(8).crop_shape == (13, 5)  # rounded up, never empty
    corner = full.zoomed(8, (1000, 3))
    assert corner.origin == (1024 - 128, 0)  # clamped at the bottom and left borders
    assert [full.zoomed(z).crop_shape[0] for z in ZOOM_FACTORS] == [1024, 512, 256, 128]
    with pytest.raises(ValueError, match="zoom must be one of"):
        full.zoomed(3)
    with pytest.raises(ValueError, match="leaves the"):
        Viewport((100, 100), 2, (60, 0))


def test_pan_is_clamped_and_keeps_the_zoom():
    vp = Viewport.full((300, 200)).zoomed(4)  # 75x50 crop at (113, 75)
    assert vp.origin == (113, 75) and vp.step == (37, 25)
    assert vp.panned(10, -5).origin == (123, 70)
    assert vp.panned(-10**6, 10**6).origin == (0, 150)
    assert vp.panned(10**6, -10**6).origin == (225, 0)
    assert vp.centred((0, 199)).origin == (0, 150) and vp.centred((0, 199)).zoom == 4


def test_canvas_and_image_coordinates_and_paste():
    vp = Viewport.full((300, 200)).zoomed(2, (100, 60))  # 150x100 crop at (25, 10)
    assert vp.origin == (25, 10)
    assert vp.to_image(0, 0) == (25, 10) and vp.to_image(149, 99) == (174, 109)
    assert vp.to_canvas(174, 109) == (149, 99)
    with pytest.raises(ValueError, match="outside the 150x100 view"):
        vp.to_image(150, 0)
    strokes = np.zeros((150, 100), bool)
    strokes[5:7, 3] = True
    mask = vp.paste(strokes)
    assert mask.shape == (300, 200) and mask.sum() == 2 and mask[30:32, 13].all()
    with pytest.raises(ValueError, match="zooming or panning"):
        vp.paste(np.zeros((300, 200), bool))
    assert "Zoom 2×: rows 25–174, cols 10–109 of 300×200" in vp.describe()
