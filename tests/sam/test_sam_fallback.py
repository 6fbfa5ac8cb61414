"""The classical fallback backend on real annotated nuclei (no SAM weights needed)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from cellsparse_app.sam import AutoMaskConfig, SamAnnotator, SamConfig


@pytest.fixture(scope="module")
def fallback(tmp_path_factory):
    cfg = SamConfig(model_type="fallback")
    return SamAnnotator(cfg, weights=None).load()


@pytest.fixture(scope="module")
def nuclei(dsb_fluo):
    """60 annotated nuclei spread over the fluorescence images: (image, truth mask)."""
    rng = np.random.default_rng(7)
    picked = []
    for index in rng.permutation(len(dsb_fluo))[:30]:
        sample = dsb_fluo[index]
        ids = np.unique(sample.mask)
        ids = ids[ids > 0]
        for k in rng.choice(ids, size=min(2, len(ids)), replace=False):
            picked.append((sample.image, sample.mask == k))
    return picked


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _inner_point(mask: np.ndarray) -> tuple[int, int]:
    """Where a person clicks: the pixel deepest inside the object."""
    depth = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    return tuple(int(v) for v in np.unravel_index(np.argmax(depth), depth.shape))


def test_a_click_inside_a_nucleus_gives_its_mask_for_most_nuclei(fallback, nuclei):
    ious = []
    for image, truth in nuclei:
        result = fallback.segment_from_points(image, [_inner_point(truth)], [1])
        assert result.model == "fallback" and result.masks.shape == (1,) + truth.shape
        ious.append(_iou(result.mask, truth))
    rate = np.mean(np.array(ious) >= 0.7)
    assert len(ious) == 60
    assert rate >= 0.65, f"only {rate:.0%} of clicks give IoU >= 0.7 (median {np.median(ious):.2f})"


def test_a_box_around_a_nucleus_gives_its_mask_for_most_nuclei(fallback, nuclei):
    ious = []
    for image, truth in nuclei:
        rows, cols = np.nonzero(truth)
        h, w = truth.shape
        box = (max(rows.min() - 2, 0), max(cols.min() - 2, 0),
               min(rows.max() + 2, h - 1), min(cols.max() + 2, w - 1))
        if box[2] <= box[0] or box[3] <= box[1]:
            continue
        ious.append(_iou(fallback.segment_from_box(image, box).mask, truth))
    assert np.mean(np.array(ious) >= 0.7) >= 0.65


def test_negative_point_separates_touching_objects(fallback):
    rr, cc = np.mgrid[:80, :120]
    image = np.zeros((80, 120), dtype=np.uint16)
    image[(rr - 40) ** 2 + (cc - 45) ** 2 < 18 ** 2] = 1000
    image[(rr - 40) ** 2 + (cc - 78) ** 2 < 18 ** 2] = 1000  # touching the first disk
    image = image + np.random.default_rng(0).integers(0, 50, image.shape).astype(np.uint16)
    left = (rr - 40) ** 2 + (cc - 45) ** 2 < 18 ** 2
    right = (rr - 40) ** 2 + (cc - 78) ** 2 < 18 ** 2
    result = fallback.segment_from_points(image, [(40, 40), (40, 85)], [1, 0], mode="all")
    for mask in result.masks:
        assert not mask[40, 85]
    best = result.masks[np.argmax(result.scores)]
    assert _iou(best, left) > 0.7 and (best & right).sum() < 0.2 * right.sum()
    single = fallback.segment_from_points(image, [(40, 40)], mode="single")
    assert single.masks.shape == (1, 80, 120)


def test_fallback_output_modes_keep_scores_with_masks(fallback, nuclei):
    image, truth = nuclei[0]
    everything = fallback.segment_from_points(image, [_inner_point(truth)], mode="all")
    for mode in ("best", "largest", "smallest"):
        one = fallback.segment_from_points(image, [_inner_point(truth)], mode=mode)
        index = [i for i, m in enumerate(everything.masks) if np.array_equal(m, one.mask)]
        assert index and one.score == everything.scores[index[0]]


def test_fallback_needs_a_positive_point_or_a_box(fallback, nuclei):
    image, _ = nuclei[0]
    with pytest.raises(ValueError, match="positive point or a box"):
        fallback.segment_from_points(image, [(10, 10)], [0])


def test_fallback_automatic_masks_find_most_nuclei(fallback, dsb_fluo):
    found, total = 0, 0
    for sample in dsb_fluo[:6]:
        result = fallback.generate(sample.image, AutoMaskConfig(min_mask_region_area=10))
        assert result.labels.shape == sample.mask.shape and result.model == "fallback"
        assert result.labels.max() == len(result.scores)
        for k in np.unique(sample.mask)[1:]:
            truth = sample.mask == k
            hits = np.unique(result.labels[truth])
            total += 1
            found += any(_iou(result.labels == h, truth) >= 0.5 for h in hits if h > 0)
    assert found / total >= 0.6, f"{found}/{total} nuclei found at IoU >= 0.5"
