"""Cellpose-style family: sparse flow targets, masked loss, mask reconstruction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cellsparse_app.data.labels import from_dense, select_sparse
from cellsparse_app.models import get_family
from cellsparse_app.models.cellpose import (
    CellposeConfig,
    flow_targets,
    instance_flows,
    masked_loss,
    reconstruct_instances,
    recover_unseeded_objects,
    unit_flows,
)


def _disks(shape=(64, 64), centres=((20, 20), (40, 44)), radius=9):
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    for i, (r, c) in enumerate(centres, start=1):
        labels[(rr - r) ** 2 + (cc - c) ** 2 <= radius**2] = i
    return labels


def _ideal_output(targets: np.ndarray) -> np.ndarray:
    """What a perfect network would output for these targets (5x flows, confident logits)."""
    return np.stack([5 * targets[0], 5 * targets[1], np.where(targets[2] > 0, 8.0, -8.0)])


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ious = np.zeros((a.max() + 1, b.max() + 1))
    for i in range(1, a.max() + 1):
        for j in np.unique(b[a == i]):
            if j:
                inter = np.sum((a == i) & (b == j))
                ious[i, j] = inter / np.sum((a == i) | (b == j))
    return ious


def test_family_is_registered():
    family = get_family("cellpose")
    assert family.config_cls is CellposeConfig
    net = family.build(CellposeConfig(in_channels=2, base_channels=4, depth=2))
    assert net(torch.zeros(1, 2, 32, 32)).shape == (1, 3, 32, 32)
    assert family.target_kinds(CellposeConfig()) == ("vy", "vx", "nearest", "nearest")


def test_flows_point_to_the_centre_and_vanish_off_cells():
    labels = _disks()
    labels[:, :4] = -1  # unlabelled strip
    t = flow_targets(labels)
    assert t.shape == (4, 64, 64) and t.dtype == np.float32
    cell = labels > 0
    centres = np.zeros_like(cell)
    centres[20, 20] = centres[40, 44] = True  # the heat sources: flow 0 by definition
    magnitude = np.hypot(t[0], t[1])
    np.testing.assert_allclose(magnitude[cell & ~centres], 1.0, atol=1e-5)
    assert np.all(magnitude[centres] == 0)
    assert np.all(t[:2, ~cell] == 0)
    rr, cc = np.mgrid[:64, :64]
    to_centre = np.stack([20 - rr, 20 - cc]).astype(float)
    disk1 = (labels == 1) & (np.hypot(rr - 20, cc - 20) > 2)
    cos = (t[0] * to_centre[0] + t[1] * to_centre[1])[disk1] / np.hypot(*to_centre)[disk1]
    assert cos.min() > 0.9
    assert np.array_equal(t[2], cell.astype(np.float32))
    assert np.array_equal(t[3], (labels >= 0).astype(np.float32))


def test_flat_heat_gives_defined_flows_whatever_the_rounding():
    """Where the heat gradient vanishes, the flow does not depend on rounding noise (the case
    that differs between CPUs with and without AVX-512): exact zeros and noise of any sign at
    1e-12 give the same flows -- 0 at the centre, straight at the centre elsewhere."""
    off_row = np.array([0.0, 3.0, -2.0, 0.0])
    off_col = np.array([0.0, 0.0, 2.0, 5.0])
    is_centre = np.array([True, False, False, False])
    scale = np.full(4, 0.5)
    results = []
    for noise in (np.zeros(4), 1e-12 * np.array([1, -1, 1, -1]), 1e-12 * np.array([-1, 1, 1, 1])):
        results.append(unit_flows(noise, -noise, off_row, off_col, is_centre=is_centre,
                                  scale=scale))
    for flow_y, flow_x in results:
        np.testing.assert_allclose(flow_y, [0.0, -1.0, 2 / np.hypot(2, 2), 0.0], atol=1e-12)
        np.testing.assert_allclose(flow_x, [0.0, 0.0, -2 / np.hypot(2, 2), -1.0], atol=1e-12)
    # A real gradient is normalised as in Cellpose.
    fy, fx = unit_flows(np.array([0.0, 0.3]), np.array([0.0, 0.4]), off_row[:2], off_col[:2],
                        is_centre=is_centre[:2], scale=scale[:2])
    np.testing.assert_allclose([fy[1], fx[1]], [0.6, 0.8])


def test_symmetric_cells_get_flows_independent_of_the_solver_rounding(monkeypatch):
    """Exactly symmetrised heat (what a CPU without AVX-512 produced) and the solver's own
    result give the same targets, up to float32 tolerance (no exact equality across CPUs)."""
    from cellsparse_app.models.cellpose import flows as cellpose

    labels = _disks(centres=((20, 20), (45, 45)), radius=9)
    plain = instance_flows(labels)
    solve = cellpose._steady_heat

    def symmetric(padded, rows, cols, ids):
        heat = solve(padded, rows, cols, ids)
        field = np.zeros(padded.shape)
        field[rows, cols] = heat
        # Both disks are symmetric under transposition and flips about their centres (+1: pad).
        for r, c in ((21, 21), (46, 46)):
            box = field[r - 10 : r + 11, c - 10 : c + 11]
            box[:] = (box + box[::-1] + box[:, ::-1] + box[::-1, ::-1]) / 4
            box[:] = (box + box.T) / 2
        return field[rows, cols]

    monkeypatch.setattr(cellpose, "_steady_heat", symmetric)
    symmetrised = instance_flows(labels)
    np.testing.assert_allclose(symmetrised, plain, atol=1e-4)
    assert np.all(symmetrised[:, 20, 20] == 0) and np.all(symmetrised[:, 45, 45] == 0)


def test_flows_match_cellpose_package(dsb_fluo):
    """Our steady-state solve gives Cellpose's own diffusion flows (cosine ~1)."""
    from cellsparse_app.runtime.compat import ensure_torchvision

    ensure_torchvision()
    from cellpose.dynamics import masks_to_flows_gpu

    from cellsparse_app.data.labels import relabel_sequential

    mask = relabel_sequential(dsb_fluo[0].mask[:128, :128].astype(np.int32))
    ours = instance_flows(mask)
    theirs, _ = masks_to_flows_gpu(mask, device=torch.device("cpu"))
    cos = (ours * theirs).sum(0)[mask > 0]
    assert cos.mean() > 0.98
    assert np.percentile(cos, 5) > 0.9


@pytest.mark.parametrize("index", [0, 5])
def test_targets_round_trip_to_the_annotated_masks(dsb_fluo, index):
    mask = dsb_fluo[index].mask
    rebuilt = reconstruct_instances(_ideal_output(flow_targets(from_dense(mask))), min_size=0)
    assert rebuilt.dtype == np.uint32
    assert rebuilt.max() == mask.max()
    ious = _iou_matrix(mask.astype(np.int64), rebuilt.astype(np.int64))
    assert np.all(ious[1:].max(axis=1) > 0.95)


def test_sparse_targets_ignore_unannotated_cells_exactly(dsb_fluo):
    """A kept cell's flows do not depend on which other cells are annotated."""
    mask = dsb_fluo[2].mask
    dense = flow_targets(from_dense(mask))
    keep = [1, 5, 9]
    sparse_labels = select_sparse(mask, keep, background=True)
    sparse = flow_targets(sparse_labels)
    kept = np.isin(mask, keep)
    np.testing.assert_allclose(sparse[:2, kept], dense[:2, kept], atol=1e-5)
    dropped = (mask > 0) & ~kept
    assert np.all(sparse[:, dropped] == 0)  # no flow, no probability, not labelled
    assert np.all(sparse[3, mask == 0] == 1) and np.all(sparse[2, mask == 0] == 0)


def _batch(seed=0):
    labels = _disks()
    labels[:, 50:] = -1
    t = torch.from_numpy(flow_targets(labels))[None]
    out = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
    return out, t


def test_loss_is_exactly_invariant_under_unlabelled_pixels():
    out, t = _batch()
    base = masked_loss(out, t)
    unlabelled = t[:, 3:4].expand_as(out) < 0.5
    out2 = torch.where(unlabelled, torch.full_like(out, float("nan")), out)
    t2 = t.clone()
    t2[:, :3] = torch.where(t[:, 3:4].expand(-1, 3, -1, -1) < 0.5, 123.0, t[:, :3])
    assert masked_loss(out2, t2).item() == base.item()
    # ... while a labelled pixel does change it (the test can fail).
    out3 = out.clone()
    out3[0, 0, 10, 10] += 1.0
    assert masked_loss(out3, t).item() != base.item()


def test_loss_gradient_is_zero_on_unlabelled_pixels():
    out, t = _batch()
    out.requires_grad_(True)
    masked_loss(out, t).backward()
    assert torch.all(out.grad[:, :, :, 50:] == 0)
    assert out.grad[:, :, :, :50].abs().sum() > 0


def test_loss_is_averaged_over_labelled_pixels():
    out, t = _batch()
    ideal = torch.from_numpy(_ideal_output(t[0].numpy()))[None]
    assert masked_loss(ideal, t).item() < 1e-3
    # Doubling the unlabelled area does not dilute the loss.
    wide_out = torch.cat([out, torch.zeros_like(out)], dim=-1)
    wide_t = torch.cat([t, torch.zeros_like(t)], dim=-1)
    assert masked_loss(wide_out, wide_t).item() == pytest.approx(
        masked_loss(out, t).item(), rel=1e-6
    )
    assert masked_loss(out, torch.zeros_like(t)).item() == 0.0  # nothing labelled


def test_postprocess_thresholds_and_min_size():
    labels = _disks(centres=((20, 20), (45, 45)), radius=9)
    labels[_disks(centres=((5, 55),), radius=2) > 0] = 3  # a 13-pixel object
    out = _ideal_output(flow_targets(labels))
    family = get_family("cellpose")
    from cellsparse_app.predict import PredictConfig

    assert family.postprocess(out, CellposeConfig(), PredictConfig(min_size=0)).max() == 3
    assert family.postprocess(out, CellposeConfig(), PredictConfig(min_size=20)).max() == 2
    low = out.copy()
    low[2] = -1.0  # probability 0.27 everywhere
    assert family.postprocess(low, CellposeConfig(), PredictConfig()).max() == 0
    assert family.postprocess(low, CellposeConfig(), PredictConfig(prob_threshold=0.2)).max() >= 1
    with pytest.raises(ValueError, match="shape"):
        reconstruct_instances(out[:2])


@pytest.mark.parametrize("centre_flow", [(-1, 0), (1, 0), (0, 1), (0, -1), (0.6, -0.8), (0, 0)])
def test_small_objects_survive_whatever_the_flow_at_their_centre(centre_flow):
    """A 13-pixel object's pixels can end split over two bins (Cellpose needs > 10 in one):
    which way depends on rounding at its centre, so every direction must keep it."""
    labels = _disks(centres=((20, 20), (45, 45)), radius=9)
    labels[_disks(centres=((5, 55),), radius=2) > 0] = 3
    out = _ideal_output(flow_targets(labels))
    for r, c in ((20, 20), (45, 45), (5, 55)):
        out[:2, r, c] = 5 * np.asarray(centre_flow)
    for flow_threshold in (0.0, 0.4, 1.0):
        rebuilt = reconstruct_instances(out, flow_threshold=flow_threshold, min_size=0)
        assert rebuilt.max() == 3
        ious = _iou_matrix(labels.astype(np.int64), rebuilt.astype(np.int64))
        assert ious[3].max() > 0.9


def test_recovery_adds_only_unclaimed_compact_groups():
    shape = (40, 40)
    masks = np.zeros(shape, np.int64)
    masks[2:8, 2:8] = 1  # a mask Cellpose made; its seed is at (5, 5)
    rows = np.array([3, 3, 3, 4, 4, 4, 5, 5, 5, 6, 6, 6, 6, 6, 20, 20, 21, 30, 30, 34],
                    dtype=np.int64)
    cols = np.array([3, 4, 5, 3, 4, 5, 3, 4, 5, 3, 4, 5, 6, 7, 20, 21, 20, 30, 31, 10],
                    dtype=np.int64)
    masks_at = masks[rows, cols].copy()
    masks_at[12:14] = 0  # dropped by Cellpose next to its seed: stay dropped
    masks_full = masks.copy()
    masks_full[rows[12:14], cols[12:14]] = 0
    final = np.stack([rows, cols]).astype(np.float32)
    final[:, :12] = 5.2  # converged on the seed
    # ends: 12 at the seed (5, 5); two next to it; three ending at (20..21, 20..21) -> a new
    # object; two at (30, 30) (too few); one at (34, 10) alone.
    final[:, 12:14] = [[6, 7], [6, 6]]
    final[:, 14:17] = [[20, 20, 21], [20, 21, 21]]
    final[:, 17:19] = [[30, 30], [30, 30]]
    final[:, 19] = [34, 10]
    inds = (rows, cols)
    out = recover_unseeded_objects(masks_full, final, inds)
    assert out.max() == 2
    assert set(map(tuple, np.argwhere(out == 2))) == {(20, 20), (20, 21), (21, 20)}
    assert np.all(out[rows[12:14], cols[12:14]] == 0)


def test_flow_threshold_is_the_models_own_unless_overridden():
    from cellsparse_app.predict import PredictConfig

    labels = _disks()
    out = _ideal_output(flow_targets(labels))
    out[:2, labels == 2] *= 0.1  # weak flows: error ~0.8 in object 2, ~0 in the others
    family = get_family("cellpose")
    n = int(labels.max())

    def count(model_threshold, predict_threshold):
        cfg = CellposeConfig(flow_threshold=model_threshold)
        return int(
            family.postprocess(out, cfg, PredictConfig(flow_threshold=predict_threshold)).max()
        )

    assert count(0.4, None) == n - 1  # Cellpose's 0.4 drops the weak object
    assert count(0.95, None) == n  # a calibrated looser threshold keeps it
    assert count(0.95, 0.4) == n - 1  # PredictConfig overrides the model's own
    assert count(0.4, 0.0) == n  # 0: no check
    # Models saved before the field existed keep Cellpose's 0.4.
    old = {k: v for k, v in CellposeConfig().to_dict().items() if k != "flow_threshold"}
    assert CellposeConfig.from_dict(old).flow_threshold == 0.4


def test_config_validation():
    with pytest.raises(ValueError, match="base_channels"):
        CellposeConfig(base_channels=0)
    cfg = CellposeConfig(in_channels=3)
    assert CellposeConfig.from_dict(cfg.to_dict()) == cfg
