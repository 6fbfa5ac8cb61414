"""Overlays: exact colours where Foreground, Background, unlabelled, errors and changes are."""

from __future__ import annotations

import numpy as np
import pytest

from cellsparse_app.data.display import to_rgb
from cellsparse_app.data.images import ImageConfig
from cellsparse_app.data.labels import select_sparse
from cellsparse_app.data.metrics import match_labels
from cellsparse_app.session import overlays


@pytest.fixture
def sample(dsb_fluo):
    return dsb_fluo[3]


def out_of(channel: np.ndarray) -> np.ndarray:
    """One channel as the display stretches it (grey)."""
    return to_rgb(channel)[..., 0]


def test_display_stretches_contrast_and_handles_channels(sample):
    dim = (sample.image // 4).astype(np.uint8)  # a dim image still fills 0..255
    out = to_rgb(dim)
    assert out.shape == (*dim.shape, 3) and out.dtype == np.uint8
    assert out.max() == 255 and out.min() == 0
    assert (out[..., 0] == out[..., 1]).all()  # grey
    two = np.stack([sample.image, 255 - sample.image], -1)
    g = to_rgb(two)
    assert (g[..., 0] == g[..., 2]).all() and not (g[..., 0] == g[..., 1]).all()  # green/magenta
    assert np.array_equal(g[..., 1], out_of(sample.image))  # channel 0 is the green one
    five = np.stack([sample.image.astype(np.uint16) * k for k in range(1, 6)], -1)
    one = to_rgb(five, ImageConfig(channels=(4,)))
    assert (one[..., 0] == one[..., 2]).all()
    with pytest.raises(ValueError, match="not available"):
        to_rgb(five, ImageConfig(channels=(7,)))


def test_annotation_overlay_colours_each_class(sample):
    display = np.full((*sample.mask.shape, 3), 100, np.uint8)
    labels = select_sparse(sample.mask, [1, 2], background=False)
    corner = np.zeros(labels.shape, bool)
    corner[:40, :40] = True
    labels[corner & (labels < 0)] = 0  # a background box that spares the cells
    out = overlays.annotation_overlay(display, labels)
    unl = labels == -1
    assert (out[unl] == 100).all()  # unlabelled pixels show the plain image
    bg = out[labels == 0]
    assert (bg[:, 2] > bg[:, 0] + 40).all()  # background is blue
    cell = out[labels == 1]
    assert (np.abs(cell.astype(int) - 100).sum(axis=1) > 30).all()  # cells are coloured
    preview = sample.mask == 5
    out2 = overlays.annotation_overlay(display, labels, preview=preview, points=[(5, 5)],
                                     point_labels=[1])
    assert (out2[preview][:, :2].astype(int) > 150).all()  # yellow-ish
    assert tuple(out2[5, 5]) == overlays.POSITIVE_RGB


def test_error_and_change_overlays_follow_metrics(sample):
    truth = sample.mask
    pred = truth.copy()
    pred[truth == 3] = 0  # missed -> FN
    fp = np.zeros_like(truth, bool)
    fp[:6, -6:] = True
    pred[fp] = truth.max() + 1  # extra object -> FP
    m = match_labels(truth, pred, (0.5,))
    assert m["fn_ids"][0] == [3] and m["fp_ids"][0] == [int(truth.max()) + 1]
    display = np.zeros((*truth.shape, 3), np.uint8)
    out = overlays.error_overlay(display, truth, pred, m["fp_ids"][0], m["fn_ids"][0])
    inner = lambda mask: mask & ~overlays.boundaries(np.where(mask, 1, 0))  # noqa: E731
    assert (out[inner(truth == 3)][:, 2] < out[inner(truth == 3)][:, 0]).all()  # yellow FN
    assert (out[inner(fp)][:, 1] < out[inner(fp)][:, 2]).all()  # magenta FP
    tp = inner(truth == 1)
    assert (out[tp][:, 1] > out[tp][:, 0]).all()  # green TP
    ch = overlays.change_overlay(display, truth, pred, [3], [int(truth.max()) + 1])
    assert (ch[inner(fp)][:, 1] > 0).all() and (ch[inner(truth == 3)][:, 0] > 0).all()


def test_box_mask_and_boundaries():
    m = overlays.box_mask((10, 10), (7, 8, 2, 1))  # corners in any order, inclusive
    assert m.sum() == 6 * 8 and m[2, 1] and m[7, 8] and not m[8, 8]
    lab = np.zeros((5, 5), int)
    lab[1:4, 1:4] = 1
    b = overlays.boundaries(lab)
    assert b.sum() == 8 and not b[2, 2]


def test_annotation_overlay_window_draws_the_crop_in_its_coordinates():
    display = np.full((120, 100, 3), 100, np.uint8)
    labels = np.full((120, 100), -1, np.int32)
    labels[:, :50] = 0  # left half Background
    labels[60:80, 40:70] = 1  # a cell cut by the window's left edge (col 45)
    window = (slice(50, 90), slice(45, 85))
    point, vertices = (70, 80), [(55, 60), (55, 75), (85, 75)]
    kw = dict(points=[point], point_labels=[0], outline=vertices, window=window)
    out = overlays.annotation_overlay(display, labels, **kw)
    assert out.shape == (40, 40, 3)
    assert (out[85 - 50, 50 - 45] == 100).all()  # an unlabelled pixel shows the plain image
    bg = out[:8, :5].reshape(-1, 3)  # image rows 50-57, cols 45-49: Background
    assert (bg[:, 2] > bg[:, 0] + 40).all()
    assert tuple(out[70 - 50, 80 - 45]) == overlays.NEGATIVE_RGB  # the point, shifted
    assert tuple(out[55 - 50, 60 - 45]) == overlays.PREVIEW_RGB  # an outline vertex
    assert tuple(out[55 - 50, 68 - 45]) == overlays.SELECTED_RGB  # the line between vertices
    # A box outside the window draws nothing in it.
    assert (overlays.annotation_overlay(display, labels, box=(0, 0, 10, 10), **kw) == out).all()
    # The cell's outline follows its own edges, not the window's edge (image col 45).
    assert (out[70 - 50, 0] == out[70 - 50, 1]).all()
    assert (out[60 - 50, 3] != out[70 - 50, 3]).any()  # its top edge (row 60) is an outline


def test_polyline_and_boxes_outside_the_image_are_clipped():
    from cellsparse_app.data.drawing import polyline_mask

    line = polyline_mask([(2, -5), (2, 5), (12, 5)], (10, 10))
    assert line[2, :6].all() and line[2:, 5].all() and line.sum() == 6 + 7
    assert not overlays.box_mask((10, 10), (-8, -8, -2, -2)).any()  # entirely above/left
    assert overlays.box_mask((10, 10), (-3, -3, 1, 1)).sum() == 4


@pytest.mark.parametrize("n_channels", [1, 2, 3])
def test_display_is_the_one_image_to_rgb_path(sample, n_channels):
    """The canvas and SAM's renderer draw an image the same way (``data.display.to_rgb``); an
    8-bit RGB picture is stretched for the canvas, passed through as it is only when asked."""
    from cellsparse_app.data.display import to_rgb
    from cellsparse_app.sam import RenderConfig, render_rgb

    base = sample.image.astype(np.uint16) * 40
    image = base if n_channels == 1 else np.stack([base // (k + 1) for k in range(n_channels)], -1)
    cfg = ImageConfig(lower=2.0, upper=99.0)
    shown = to_rgb(image, cfg)
    assert np.array_equal(shown, to_rgb(image, cfg))
    assert np.array_equal(shown, render_rgb(image, RenderConfig(lower=2.0, upper=99.0)))
    assert np.array_equal(render_rgb(shown), shown)  # the UI sends its display: kept as it is
    rgb8 = np.stack([sample.image // 2] * 3, -1).astype(np.uint8)
    assert np.array_equal(to_rgb(rgb8, keep_rgb8=True), rgb8)
    assert to_rgb(rgb8).max() == 255  # the canvas stretches a dim RGB picture
