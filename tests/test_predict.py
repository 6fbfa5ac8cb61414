"""Prediction: tiling of any image size, persistence round trip, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cellsparse_app.data.images import ImageConfig
from cellsparse_app.data.labels import from_dense
from cellsparse_app.models.cellpose import CellposeConfig
from cellsparse_app.predict import PredictConfig, predict_instances, predict_raw, tile_layout
from cellsparse_app.train import TrainConfig, TrainedModel, train


def _small_images(samples, count=4):
    return [s for s in samples if s.image.shape == (256, 256)][:count]


@pytest.fixture(scope="module")
def nuclei_model(dsb_fluo):
    """A small model trained briefly on real nuclei images (enough to give real outputs)."""
    samples = _small_images(dsb_fluo)
    cfg = TrainConfig(steps=150, batch_size=4, patch_size=96, device="cpu", learning_rate=4e-3)
    return train(
        [s.image for s in samples],
        [from_dense(s.mask) for s in samples],
        cfg,
        model_config=CellposeConfig(base_channels=8, depth=3),
    )


@pytest.mark.parametrize("length,tile,overlap", [(100, 64, 8), (520, 512, 64), (2000, 512, 64)])
def test_tile_layout_covers_with_overlap(length, tile, overlap):
    size, starts = tile_layout(length, tile, overlap, multiple=8)
    assert size % 8 == 0 and size <= max(tile, length + 7)
    assert starts[0] == 0 and starts[-1] + size >= length
    gaps = np.diff(starts)
    assert np.all(size - gaps >= overlap)


def test_any_image_size_gives_labels_of_that_size(nuclei_model):
    rng = np.random.default_rng(0)
    for shape in [(37, 53), (130, 70), (64, 64, 1)]:
        image = rng.integers(0, 255, shape).astype(np.uint8)
        labels = predict_instances(nuclei_model, image)
        assert labels.shape == shape[:2] and labels.dtype == np.uint32


def test_tiled_prediction_matches_untiled(nuclei_model, dsb_fluo):
    """A 512x512 mosaic of real images, cut into 4+ tiles, segments like the whole image."""
    from cellsparse_app.data.metrics import match_labels

    tiles = [s.image for s in _small_images(dsb_fluo)]  # four 256x256 images
    mosaic = np.block([[tiles[0], tiles[1]], [tiles[2], tiles[3]]])
    whole_cfg = PredictConfig(tile_size=1024)
    tiled_cfg = PredictConfig(tile_size=192, tile_overlap=0.25)
    calls = []
    raw_whole = predict_raw(nuclei_model, mosaic, whole_cfg)
    raw_tiled = predict_raw(
        nuclei_model, mosaic, tiled_cfg, progress=lambda d, t: calls.append((d, t))
    )
    assert calls[-1][0] == calls[-1][1] >= 9
    corr = np.corrcoef(raw_whole[2].ravel(), raw_tiled[2].ravel())[0, 1]
    assert corr > 0.97
    whole = predict_instances(nuclei_model, mosaic, whole_cfg)
    tiled = predict_instances(nuclei_model, mosaic, tiled_cfg)
    assert whole.max() > 20
    agreement = match_labels(whole.astype(np.int32), tiled, (0.5,))
    assert agreement["f1"][0] > 0.85


def test_save_load_round_trip_gives_identical_predictions(nuclei_model, dsb_fluo, tmp_path):
    image = dsb_fluo[1].image
    before = predict_raw(nuclei_model, image, PredictConfig(device="cpu"))
    out = nuclei_model.save(tmp_path / "model")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "weights.pt"]
    data = json.loads((out / "config.json").read_text())
    assert data["family"] == "cellpose" and data["model"]["base_channels"] == 8
    assert data["image"] == ImageConfig().to_dict() and data["meta"]["steps_done"] == 150
    assert len(data["history"]) == 15
    loaded = TrainedModel.load(out)
    assert loaded.config == nuclei_model.config and loaded.history == nuclei_model.history
    after = predict_raw(loaded, image, PredictConfig(device="cpu"))
    np.testing.assert_array_equal(after, before)
    assert np.array_equal(
        predict_instances(loaded, image), predict_instances(nuclei_model, image)
    )


def test_load_errors_are_clear(nuclei_model, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TrainedModel.load(tmp_path / "nothing")
    out = nuclei_model.save(tmp_path / "m")
    (out / "weights.pt").unlink()
    with pytest.raises(FileNotFoundError, match="weights.pt"):
        TrainedModel.load(out)
    out = nuclei_model.save(tmp_path / "m2")
    (out / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        TrainedModel.load(out)
    out = nuclei_model.save(tmp_path / "m3")
    data = json.loads((out / "config.json").read_text())
    data["model"]["base_channels"] = 16
    (out / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="does not fit"):
        TrainedModel.load(out)
    out = nuclei_model.save(tmp_path / "m4")
    (out / "weights.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read"):
        TrainedModel.load(out)


def test_weights_load_without_pickled_code(nuclei_model, tmp_path):
    out = nuclei_model.save(tmp_path / "m")
    state = torch.load(out / "weights.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())


def test_wrong_channels_and_bad_config_raise(nuclei_model):
    rgb = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="channel"):
        predict_instances(nuclei_model, rgb)
    with pytest.raises(ValueError, match="tile_overlap"):
        PredictConfig(tile_overlap=0.6)
    with pytest.raises(ValueError, match="prob_threshold"):
        PredictConfig(prob_threshold=1.5)


def test_prob_threshold_controls_detections(nuclei_model, dsb_fluo):
    image = dsb_fluo[1].image
    normal = predict_instances(nuclei_model, image)
    strict = predict_instances(nuclei_model, image, PredictConfig(prob_threshold=0.999))
    assert (strict > 0).sum() < (normal > 0).sum()
