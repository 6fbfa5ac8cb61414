"""StarDist-style family: geometry, targets, loss, postprocessing, training and CLI round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from family_checks import check_saved_model, cli_round_trip

from cellsparse_app.data.labels import select_sparse
from cellsparse_app.data.metrics import average_precision
from cellsparse_app.models import get_family, list_families
from cellsparse_app.models.common import instance_edt, normalised_edt
from cellsparse_app.models.star_geometry import (
    UNKNOWN_DISTANCE,
    _Fans,
    distances_to_polygons,
    polygon_nms,
    polygons_to_labels,
    star_distances,
)
from cellsparse_app.models.stardist import StarDistConfig

FAMILY = get_family("stardist")
CFG = StarDistConfig()


def ideal_output(mask: np.ndarray, cfg: StarDistConfig = CFG) -> np.ndarray:
    """The network output a perfect model would give for a dense ``mask``."""
    prob = np.clip(normalised_edt(mask), 1e-4, 1 - 1e-4)
    dist = star_distances(mask, cfg.n_rays) / cfg.dist_scale
    return np.concatenate([np.log(prob / (1 - prob))[None], dist]).astype(np.float32)


def test_registered_with_config_round_trip(tmp_path):
    assert "stardist" in list_families()
    assert FAMILY.config_cls is StarDistConfig
    cfg = StarDistConfig(n_rays=16, grid=1)
    cfg.save(tmp_path / "c.json")
    assert StarDistConfig.load(tmp_path / "c.json") == cfg
    with pytest.raises(ValueError, match="n_rays"):
        StarDistConfig(n_rays=2)
    with pytest.raises(ValueError, match="head_channels"):
        StarDistConfig(head_channels=-1)


def test_configs_saved_before_the_hidden_head_load_as_they_were_trained():
    old = StarDistConfig(head_channels=0, balance_classes=False).to_dict()
    for key in ("head_channels", "balance_classes", "grid_network", "ray_scale"):
        del old[key]  # written by the first release
    loaded = StarDistConfig.from_dict(old)
    assert (loaded.head_channels, loaded.balance_classes, loaded.grid_network) == (0, False, False)
    assert loaded.ray_scale == 1.0
    assert FAMILY.size_multiple(loaded) == 8  # full-resolution U-Net of depth 3
    assert "LEGACY_DEFAULTS" not in StarDistConfig().to_dict()
    new = StarDistConfig.from_dict(StarDistConfig().to_dict())
    assert (new.head_channels, new.balance_classes, new.grid_network) == (64, True, True)
    with pytest.raises(ValueError, match="ray_scale"):
        StarDistConfig(ray_scale=0.0)


def test_prediction_uses_the_models_own_nms_threshold_unless_overridden():
    from cellsparse_app.models.common import predict_setting
    from cellsparse_app.predict import PredictConfig

    cfg = StarDistConfig(nms_threshold=0.25)
    assert predict_setting(PredictConfig(), "nms_threshold", cfg.nms_threshold) == 0.25
    assert predict_setting(PredictConfig(nms_threshold=0.6), "nms_threshold", 0.25) == 0.6
    with pytest.raises(ValueError, match="nms_threshold"):
        PredictConfig(nms_threshold=1.5)


@pytest.mark.parametrize("head", [0, 8])
@pytest.mark.parametrize("on_grid", [True, False])
def test_network_with_and_without_hidden_head(head, on_grid):
    cfg = StarDistConfig(head_channels=head, n_rays=8, grid_network=on_grid)
    net = FAMILY.build(cfg).eval()
    assert FAMILY.size_multiple(cfg) == (16 if on_grid else 8)
    x = torch.randn(2, 1, 32, 32)
    with torch.inference_mode():
        out = net(x)
    assert out.shape == (2, 9, 32, 32)
    # On the grid each output covers a 2x2 block, as the candidates of StarDist's grid 2.
    assert torch.equal(out[..., ::2, ::2], out[..., 1::2, 1::2]) == on_grid


def test_instance_edt_separates_touching_cells_and_continues_at_the_edge():
    labels = np.zeros((5, 8), np.int32)
    labels[:, :4], labels[:, 4:] = 1, 2  # two touching cells filling the image
    labels[2, 0] = -1
    edt = instance_edt(labels)
    np.testing.assert_array_equal(edt[2], [0, 1, 2, 1, 1, 2, 3, 4])  # the edge is no boundary
    norm = normalised_edt(labels)
    assert norm[2, 7] == 1.0 and norm[labels == 1].max() == 1.0 and norm[2, 0] == 0.0


def test_star_distances_exact_on_a_square():
    labels = np.zeros((9, 9), np.int32)
    labels[2:7, 2:7] = 1  # 5x5 square, centre (4, 4)
    dist = star_distances(labels, 4)  # rays: right, down, left, up in (row, col)
    # Three pixels to the edge, minus the half-pixel overshoot correction.
    np.testing.assert_allclose(dist[:, 4, 4], [2.5, 2.5, 2.5, 2.5])
    np.testing.assert_allclose(dist[0, 4, 2:7], [4.5, 3.5, 2.5, 1.5, 0.5])
    assert np.all(dist[:, labels == 0] == 0)
    # A ray stops at *any* other value: unlabelled pixels bound objects too.
    labels[4, 5] = -1
    assert star_distances(labels, 4)[0, 4, 4] == pytest.approx(0.5)


def test_star_distances_unknown_at_patch_edge_and_grid():
    labels = np.zeros((6, 6), np.int32)
    labels[1:6, 1:4] = 1  # touches the bottom edge
    dist = star_distances(labels, 4, unknown_outside=True)
    assert dist[1, 3, 2] == UNKNOWN_DISTANCE  # ray 1 points down, leaves the image inside
    assert dist[0, 3, 2] == pytest.approx(1.5)
    gridded = star_distances(labels, 4, grid=2)
    assert np.all(gridded[:, 3, :] == 0) and np.all(gridded[:, 2, 2] > 0)


def test_polygon_nms_keeps_best_and_drops_contained():
    points = np.array([[20.0, 20.0], [21.0, 20.0], [60.0, 60.0], [20.0, 20.0]])
    dists = np.array([[10.0] * 32, [10.0] * 32, [8.0] * 32, [3.0] * 32])
    scores = np.array([0.6, 0.9, 0.7, 0.95])
    # The small disk (score .95) lies inside the others: overlap / min area = 1, it suppresses them.
    assert list(polygon_nms(points, dists, scores, 0.4)) == [3, 2]
    assert list(polygon_nms(points[:3], dists[:3], scores[:3], 0.4)) == [1, 2]
    assert sorted(polygon_nms(points, dists, scores, 1.0)) == [0, 1, 2, 3]


def test_quadrature_overlap_matches_exact_clipping():
    shapely = pytest.importorskip("shapely")
    rng = np.random.default_rng(0)
    for _ in range(50):
        centres, dists = rng.uniform(0, 20, (2, 2)), rng.uniform(3, 15, (2, 32))
        polys = shapely.polygons(distances_to_polygons(centres, dists))
        exact = shapely.area(shapely.intersection(polys[0], polys[1])) / shapely.area(polys).min()
        fans = _Fans(centres, dists)
        assert fans.overlap(0, np.array([1]), coarse=False)[0] == pytest.approx(exact, abs=0.06)
        assert fans.overlap(0, np.array([1]), coarse=True)[0] == pytest.approx(exact, abs=0.3)


def test_polygons_to_labels_rasterises_and_higher_score_wins():
    square = np.array([[[2.0, 2.0], [2.0, 7.0], [7.0, 7.0], [7.0, 2.0]]])
    labels = polygons_to_labels(np.concatenate([square, square + 2]), (12, 12), [0.9, 0.5])
    assert labels.dtype == np.uint32
    assert labels[3, 3] == 1 and labels[6, 6] == 1 and labels[8, 8] == 2


def test_targets_sparse_convention(dsb_fluo):
    mask = dsb_fluo[0].mask
    labels = select_sparse(mask, [1, 2, 3], background=True)
    labels[:10] = -1
    target = FAMILY.targets(labels, CFG)
    assert target.shape == (1 + CFG.n_rays, *mask.shape) and target.dtype == np.float32
    prob = target[0]
    assert np.all(prob[labels == -1] == -1) and np.all(prob[labels == 0] == 0)
    assert prob[labels > 0].min() > 0 and prob[labels > 0].max() == 1
    # A network on the grid learns rays at every grid pixel of an object; a full-resolution one
    # at every object pixel. Only rays that leave the patch inside their object are unknown.
    full = FAMILY.targets(labels, CFG.replace(grid_network=False))
    assert np.array_equal(full[0], prob)
    on_grid = np.zeros(mask.shape, bool)
    on_grid[::2, ::2] = True
    for cfg_target, where in ((target, on_grid), (full, np.ones(mask.shape, bool))):
        rays = cfg_target[1:, (labels > 0) & where]
        assert np.all(rays != 0) and np.all((rays > 0) | (rays == UNKNOWN_DISTANCE))
        assert np.all(cfg_target[1:, ~((labels > 0) & where)] == 0)
    assert np.array_equal(target[1:, on_grid], full[1:, on_grid])
    inner = labels.copy()
    inner[[0, -1], :], inner[:, [0, -1]] = -1, -1  # no object touches the patch edge now
    assert np.all(FAMILY.targets(inner, CFG)[1:, (inner > 0) & on_grid] > 0)


def test_loss_ignores_unlabelled_pixels_exactly(dsb_fluo):
    mask = dsb_fluo[0].mask[:128, :128]
    labels = select_sparse(mask, np.unique(mask)[1:4], background=True)
    labels[:, :40] = -1
    target = torch.from_numpy(FAMILY.targets(labels, CFG))[None]
    gen = torch.Generator().manual_seed(0)
    output = torch.randn((1, 1 + CFG.n_rays, 128, 128), generator=gen, requires_grad=True)
    loss = FAMILY.loss(output, target, CFG)
    loss.backward()
    unlabelled = torch.from_numpy(labels == -1)
    assert torch.all(output.grad[0][:, unlabelled] == 0)
    assert torch.any(output.grad[0][:, ~unlabelled] != 0)
    off_grid = torch.ones(128, 128, dtype=torch.bool)
    off_grid[::2, ::2] = False
    assert torch.all(output.grad[0][:, off_grid] == 0)  # the network's outputs live on the grid
    changed = output.detach().clone()
    noise = torch.randn((1 + CFG.n_rays, int(unlabelled.sum())), generator=gen)
    changed[0][:, unlabelled] = noise * 1e3
    assert FAMILY.loss(changed, target, CFG).item() == loss.item()
    # Background is learnt (BCE towards 0), not ignored.
    background = torch.from_numpy(labels == 0)
    assert torch.any(output.grad[0, 0][background] != 0)


def test_probability_loss_weighs_objects_and_background_equally(dsb_fluo):
    """A few annotated objects count as much as all the background (``balance_classes``)."""
    from torch.nn import functional as F

    mask = dsb_fluo[0].mask[:128, :128]
    labels = select_sparse(mask, np.unique(mask)[1:2], background=True)
    labels[:, :20] = -1
    target = torch.from_numpy(FAMILY.targets(labels, CFG))[None]
    output = torch.randn((1, 1 + CFG.n_rays, 128, 128), generator=torch.Generator().manual_seed(1))
    cfg = StarDistConfig(dist_loss_weight=0.0)
    # The loss is taken on the grid (every second pixel), where the network's outputs live.
    bce = F.binary_cross_entropy_with_logits(
        output[0, 0], target[0, 0].clamp(min=0), reduction="none"
    )
    bce = bce[::2, ::2]
    obj, bg = torch.from_numpy(labels[::2, ::2] > 0), torch.from_numpy(labels[::2, ::2] == 0)
    assert obj.sum() < 0.1 * bg.sum()
    expected = 0.5 * (bce[obj].mean() + bce[bg].mean())
    assert FAMILY.loss(output, target, cfg).item() == pytest.approx(expected.item(), rel=1e-5)
    plain = bce[obj | bg].mean()
    unbalanced = cfg.replace(balance_classes=False)
    assert FAMILY.loss(output, target, unbalanced).item() == pytest.approx(plain.item(), rel=1e-5)
    # Only background in the batch: its own average.
    empty = torch.from_numpy(FAMILY.targets(np.zeros((128, 128), np.int32), cfg))[None]
    assert FAMILY.loss(output, empty, cfg).item() == pytest.approx(
        F.binary_cross_entropy_with_logits(output[0, 0, ::2, ::2], torch.zeros(64, 64)).item(),
        rel=1e-5)


def test_loss_is_lower_for_the_ideal_output(dsb_fluo):
    mask = dsb_fluo[0].mask[:128, :128]
    target = torch.from_numpy(FAMILY.targets(mask, CFG))[None]
    ideal = torch.from_numpy(ideal_output(mask))[None]
    noisy = ideal + torch.randn(ideal.shape, generator=torch.Generator().manual_seed(0))
    assert FAMILY.loss(ideal, target, CFG) < 0.5 * FAMILY.loss(noisy, target, CFG)


def test_calibration_picks_the_probability_threshold_the_model_needs(dsb_fluo):
    mask = dsb_fluo[0].mask[:160, :160]
    labels = select_sparse(mask, np.unique(mask)[1:6], background=True)
    out = ideal_output(mask)
    prob = np.clip(0.45 * normalised_edt(mask), 1e-4, 1 - 1e-4)  # peaks just under 0.5
    out[0] = np.log(prob / (1 - prob))
    assert FAMILY.postprocess(out, CFG, None).max() == 0  # 0.5 finds nothing
    cfg = FAMILY.calibrate([out], [labels], CFG)
    assert cfg.prob_threshold in (0.2, 0.3, 0.4)  # one that finds the objects
    assert average_precision(labels, FAMILY.postprocess(out, cfg, None), 0.5) >= 0.9
    # A confident model keeps StarDist's 0.5; no annotation changes nothing.
    confident = FAMILY.calibrate([ideal_output(mask)], [labels], CFG)
    assert (confident.prob_threshold, confident.nms_threshold) == (0.5, 0.4)
    assert FAMILY.calibrate([], [], CFG) == CFG
    assert confident.ray_scale == 1.0


def test_calibration_lengthens_rays_that_fall_short(dsb_fluo):
    """Briefly trained rays are too short; the calibrated ``ray_scale`` restores the shapes."""
    mask = dsb_fluo[0].mask[:160, :160]
    labels = select_sparse(mask, np.unique(mask)[1:8], background=True)
    out = ideal_output(mask)
    out[1:] *= 0.8
    assert average_precision(labels, FAMILY.postprocess(out, CFG, None), 0.75) < 0.5
    cfg = FAMILY.calibrate([out], [labels], CFG)
    assert cfg.ray_scale == 1.25  # 1 / 0.8
    assert average_precision(labels, FAMILY.postprocess(out, cfg, None), 0.75) >= 0.9
    # Within bounds however short the rays; too few annotated rays keep the factor.
    out[1:] *= 0.5
    assert FAMILY.calibrate([out], [labels], CFG).ray_scale == 1.25
    one = select_sparse(mask, np.unique(mask)[1:2], background=True)[:24, :24]
    assert FAMILY.calibrate([out[:, :24, :24]], [one], CFG.replace(ray_scale=1.1)).ray_scale == 1.1


def test_calibration_lowers_the_nms_threshold_when_off_centre_candidates_survive():
    # One disk (radius 10) and, besides its exact centre candidate, a smaller polygon centred
    # on its edge (the rough off-centre candidate of a briefly trained network): it overlaps
    # the kept polygon by ~1/4 of its area, so StarDist's 0.4 keeps it as a second object.
    yy, xx = np.mgrid[:80, :80]
    labels = ((yy - 40) ** 2 + (xx - 40) ** 2 <= 100).astype(np.int32)
    out = np.zeros((1 + CFG.n_rays, 80, 80), np.float32)
    out[0] = -10.0
    for (row, col), radius, prob in (((40, 40), 10.0, 0.95), ((40, 52), 6.0, 0.9)):
        out[0, row, col] = np.log(prob / (1 - prob))
        out[1:, row, col] = radius / CFG.dist_scale
    before = FAMILY.postprocess(out, CFG, None)
    assert before.max() == 2 and average_precision(labels, before, 0.5) == 0.5
    cfg = FAMILY.calibrate([out], [labels], CFG)
    assert cfg.nms_threshold < 0.4 and cfg.prob_threshold == 0.5
    after = FAMILY.postprocess(out, cfg, None)
    assert after.max() == 1 and average_precision(labels, after, 0.5) == 1.0


@pytest.mark.parametrize("dataset", ["dsb_fluo", "usiigaci_phase"])
def test_postprocess_round_trip_on_real_masks(dataset, request):
    # Whole cells in phase contrast are less star-convex than nuclei, and large: one 512 crop.
    masks = [s.mask[:512, :512] for s in request.getfixturevalue(dataset)[:4]]
    if dataset == "usiigaci_phase":
        masks = masks[:1]
    for mask in masks:
        pred = FAMILY.postprocess(ideal_output(mask), CFG, None)
        assert pred.dtype == np.uint32 and pred.shape == mask.shape
        assert average_precision(mask, pred, 0.5) >= 0.95
        assert average_precision(mask, pred, 0.75) >= 0.9


def test_postprocess_min_size_and_empty():
    out = np.full((1 + CFG.n_rays, 32, 32), -10.0, np.float32)
    assert FAMILY.postprocess(out, CFG, None).max() == 0
    out[0, 16, 16] = 5.0
    out[1:] = 0.3  # 3-pixel rays: a ~28-pixel object
    assert FAMILY.postprocess(out, CFG, None).max() == 1

    class Predict:
        min_size = 40
        prob_threshold = None
        nms_threshold = None

    assert FAMILY.postprocess(out, CFG, Predict()).max() == 0
    with pytest.raises(ValueError, match="stardist output"):
        FAMILY.postprocess(out[:5], CFG, None)


# --- training on real images, through the command line ----------------------------------------

@pytest.fixture(scope="module")
def cli_run(dsb_fluo, tmp_path_factory):
    """``cellsparse train --model stardist`` on 4 DSB images, predict on 6 others, evaluate."""
    return cli_round_trip(dsb_fluo, tmp_path_factory.mktemp("stardist_cli"), "stardist")


def test_cli_round_trip_trains_a_stardist_model(cli_run):
    check_saved_model(cli_run, "stardist", StarDistConfig, 1 + CFG.n_rays)


def test_short_sparse_training_segments_other_images(cli_run):
    """A quarter of the nuclei of 4 images + background, 120 steps: held-out AP@0.5 >= 0.5.

    Measured 0.675 (263 objects predicted for 268), up from 0.21 with ~3x too many objects before
    the class-balanced probability loss and rays learnt at every object pixel.
    """
    scores = cli_run["scores"]
    assert scores["ap50"] >= 0.5, scores
    assert 0.5 * scores["n_true"] <= scores["n_pred"] <= 1.5 * scores["n_true"], scores


def test_grid_network_predicts_any_image_size_with_tiles(dsb_fluo):
    """Tiles and padding follow the network's multiple (16: depth 3 on a grid of 2)."""
    from cellsparse_app.data.labels import from_dense
    from cellsparse_app.predict import PredictConfig, predict_instances, predict_raw
    from cellsparse_app.train import TrainConfig, train

    sample = dsb_fluo[0]
    image, mask = sample.image[:70, :90], sample.mask[:70, :90]
    cfg = TrainConfig(family="stardist", steps=2, batch_size=2, patch_size=24, device="cpu")
    model = train([image], [from_dense(mask)], cfg)
    assert model.config.grid_network and model.family_impl.size_multiple(model.config) == 16
    tiled = PredictConfig(tile_size=40, tile_overlap=0.25)  # rounded down to 32-pixel tiles
    for rows, cols in [(37, 53), (70, 90)]:
        crop = image[:rows, :cols]
        raw = predict_raw(model, crop, tiled)
        assert raw.shape == (1 + CFG.n_rays, rows, cols) and np.isfinite(raw).all()
        assert predict_instances(model, crop, tiled).shape == (rows, cols)
