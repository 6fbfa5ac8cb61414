"""Flow quality control and its per-model calibration (cellsparse_app.models.cellpose.quality)."""

from __future__ import annotations

import numpy as np
import pytest

from cellsparse_app.models.cellpose import instance_flows
from cellsparse_app.models.cellpose.quality import (
    CELLPOSE_FLOW_THRESHOLD,
    MAX_FLOW_THRESHOLD,
    calibrated_flow_threshold,
    mask_flow_errors,
    remove_bad_flow_masks,
)


def _disks(shape=(80, 80), centres=((20, 20), (50, 55), (62, 18)), radius=9):
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    for i, (r, c) in enumerate(centres, start=1):
        labels[(rr - r) ** 2 + (cc - c) ** 2 <= radius**2] = i
    return labels


def test_exact_flows_have_no_error_and_scaled_flows_a_known_one():
    labels = _disks()
    ideal = instance_flows(labels)
    assert mask_flow_errors(labels, ideal)[1:] == pytest.approx(0.0, abs=1e-6)
    # Flows at 30% of their length: error (1 - 0.3)^2 x the mean squared ideal length.
    errors = mask_flow_errors(labels, 0.3 * ideal)
    sq = (ideal**2).sum(axis=0)
    for k in (1, 2, 3):
        assert errors[k] == pytest.approx(0.49 * sq[labels == k].mean(), rel=1e-5)


def test_calibration_keeps_cellpose_threshold_for_exact_flows():
    labels = _disks()
    assert calibrated_flow_threshold([instance_flows(labels)], [labels]) == CELLPOSE_FLOW_THRESHOLD


def test_calibration_follows_the_error_of_weak_flows_within_bounds():
    labels = _disks()
    ideal = instance_flows(labels)
    weak = 0.25 * ideal  # error ~0.56 x mean squared length, between 0.4 and 1
    expected = np.quantile(mask_flow_errors(labels, weak)[1:], 0.9)
    assert CELLPOSE_FLOW_THRESHOLD < expected < MAX_FLOW_THRESHOLD
    assert calibrated_flow_threshold([weak], [labels]) == pytest.approx(expected)
    # Flows pointing the wrong way: capped.
    assert calibrated_flow_threshold([-ideal], [labels]) == MAX_FLOW_THRESHOLD


def test_calibration_ignores_background_and_unlabelled_pixels():
    dense = _disks()
    labels = np.where(dense == 3, -1, dense)  # object 3 unannotated
    labels[:, 70:] = 0
    weak = 0.25 * instance_flows(dense)
    rng = np.random.default_rng(0)
    noisy = weak.copy()
    outside = labels <= 0
    noisy[:, outside] = rng.normal(size=(2, int(outside.sum())))
    assert calibrated_flow_threshold([noisy], [labels]) == calibrated_flow_threshold(
        [weak], [labels]
    )
    assert calibrated_flow_threshold([noisy], [np.minimum(labels, 0)]) == CELLPOSE_FLOW_THRESHOLD


def test_calibration_rejects_mismatched_inputs():
    labels = _disks()
    with pytest.raises(ValueError, match="label image"):
        calibrated_flow_threshold([instance_flows(labels)], [])
    with pytest.raises(ValueError, match="do not match"):
        calibrated_flow_threshold([instance_flows(labels)[:, :40]], [labels])


def test_remove_bad_flow_masks_drops_only_inconsistent_masks():
    labels = _disks()
    flows = instance_flows(labels)
    flows[:, labels == 2] *= -1  # object 2's flows point outwards
    kept = remove_bad_flow_masks(labels, flows, 0.4)
    assert kept.max() == 2
    assert np.array_equal(kept > 0, (labels == 1) | (labels == 3))
