"""Flagging masks that are unlikely to be one cell (cellsparse_app.data.plausibility)."""

from __future__ import annotations

import numpy as np
import pytest

from cellsparse_app.data.plausibility import AcceptGuard, implausible_mask_reason


def test_large_share_of_the_image_is_flagged_whatever_the_cells():
    assert implausible_mask_reason(1000, [], 10_000) is None  # exactly 10%: fine
    reason = implausible_mask_reason(1001, [], 10_000)
    assert reason and "covers 10% of the image (more than 10%)" in reason
    assert "50% of the image" in implausible_mask_reason(5000, [4000, 4000, 4000], 10_000)


def test_far_larger_than_the_median_cell_needs_three_cells():
    image = 1_000_000
    assert implausible_mask_reason(800, [200, 100, 250], image) is None  # exactly 4x: fine
    reason = implausible_mask_reason(801, [200, 100, 250], image)
    assert reason and "801 px, 4.0x the median of your 3 annotated cells (200 px)" in reason
    assert implausible_mask_reason(5000, [200, 100], image) is None  # two cells: no median yet
    with pytest.raises(ValueError, match="image_px must be positive, got 0"):
        implausible_mask_reason(10, [], 0)


def test_guard_refuses_once_then_accepts_the_same_mask():
    guard = AcceptGuard()
    big = np.zeros((100, 100), bool)
    big[:50] = True
    small = np.zeros((100, 100), bool)
    small[:5, :5] = True
    guard.check("img", small, [])  # plausible: passes at once
    with pytest.raises(ValueError, match="covers 50% of the image.*press Accept as Foreground "
                                         "again to add it anyway"):
        guard.check("img", big, [])
    guard.check("img", big, [])  # second press: accepted
    with pytest.raises(ValueError, match="covers 50%"):
        guard.check("img", big, [])  # a new acceptance asks again
    other = big.copy()
    other[60, 60] = True
    with pytest.raises(ValueError):
        guard.check("img", other, [])  # refined mask: asked again
    with pytest.raises(ValueError):
        guard.check("other image", other, [])  # same pixels on another image: asked again
