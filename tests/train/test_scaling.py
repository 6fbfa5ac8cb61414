"""Object-scale normalisation in training and prediction: the model records its training diameter
and scale, saves and loads them (legacy configs load with scale 1), predicts on the image's grid,
and continued training keeps the scale."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cellsparse_app.data.object_scale import CANONICAL_DIAMETER
from cellsparse_app.models.cellpose import CellposeConfig
from cellsparse_app.predict import PredictConfig, predict_instances, predict_raw, predict_scaled
from cellsparse_app.train import TrainConfig, TrainedModel, train

TINY = CellposeConfig(base_channels=4, depth=2)
QUICK = TrainConfig(steps=2, batch_size=2, patch_size=32, device="cpu", warmup_steps=1)


def _cells(radius=30, shape=(230, 240)):
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    for i, (r, c) in enumerate(((55, 55), (55, 175), (165, 115)), start=1):
        labels[(rr - r) ** 2 + (cc - c) ** 2 <= radius**2] = i
    image = np.where(labels > 0, 200, 10).astype(np.uint8)
    return image, labels


@pytest.fixture(scope="module")
def scaled_model():
    image, labels = _cells()
    return train([image], [labels], QUICK, model_config=TINY)


def test_training_measures_the_diameter_and_records_the_scale(scaled_model):
    assert CANONICAL_DIAMETER == 45
    assert scaled_model.config.diameter == pytest.approx(60, rel=0.05)
    assert scaled_model.config.scale == pytest.approx(45 / scaled_model.config.diameter, rel=1e-3)


def test_diameter_and_object_diameter_override_or_disable_rescaling():
    image, labels = _cells()
    given = train([image], [labels], QUICK.replace(diameter=90.0), model_config=TINY)
    assert given.config.diameter == 90 and given.config.scale == 0.5
    small = train([image], [labels], QUICK.replace(diameter=30.0), model_config=TINY)
    assert small.config.scale == 1.0  # smaller cells are not enlarged by default
    up = train([image], [labels], QUICK.replace(diameter=30.0, upscale=True), model_config=TINY)
    assert up.config.scale == 1.5
    native = train([image], [labels], QUICK.replace(object_diameter=None), model_config=TINY)
    assert native.config.scale == 1.0 and native.config.diameter == pytest.approx(60, rel=0.05)
    with pytest.raises(ValueError, match="-2"):
        TrainConfig(diameter=-2)


def test_prediction_returns_labels_on_the_image_grid(scaled_model):
    image, _ = _cells()
    for resample in ("labels", "output"):
        labels = predict_instances(scaled_model, image, PredictConfig(device="cpu",
                                                                     resample=resample))
        assert labels.shape == image.shape and labels.dtype == np.uint32
    raw = predict_raw(scaled_model, image, PredictConfig(device="cpu"))
    assert raw.shape == (3, *image.shape)
    small, scale = predict_scaled(scaled_model, image, PredictConfig(device="cpu"))
    assert scale == scaled_model.config.scale
    assert small.shape[1:] == (round(230 * scale), round(240 * scale))


def test_other_magnification_uses_its_own_diameter(scaled_model):
    image, _ = _cells()
    d = scaled_model.config.diameter
    _, scale = predict_scaled(scaled_model, image, PredictConfig(device="cpu", diameter=d / 2))
    assert scale == pytest.approx(2 * scaled_model.config.scale, rel=1e-3)
    with pytest.raises(ValueError, match="0"):
        PredictConfig(diameter=0)
    with pytest.raises(ValueError, match="'nearest'"):
        PredictConfig(resample="nearest")


def test_scale_survives_save_and_load_and_legacy_configs_load_with_scale_1(scaled_model, tmp_path):
    image, _ = _cells()
    loaded = TrainedModel.load(scaled_model.save(tmp_path / "m"))
    assert loaded.config == scaled_model.config
    np.testing.assert_array_equal(
        predict_instances(loaded, image, PredictConfig(device="cpu")),
        predict_instances(scaled_model, image, PredictConfig(device="cpu")),
    )
    path = tmp_path / "m" / "config.json"
    data = json.loads(path.read_text())
    del data["model"]["diameter"], data["model"]["scale"]
    path.write_text(json.dumps(data))
    legacy = TrainedModel.load(tmp_path / "m")
    assert legacy.config.scale == 1.0 and legacy.config.diameter is None
    assert predict_instances(legacy, image, PredictConfig(device="cpu")).shape == image.shape
    with pytest.warns(UserWarning, match="no training diameter"):
        predict_raw(legacy, image, PredictConfig(device="cpu", diameter=20.0))


def test_continued_training_keeps_the_scale(scaled_model):
    image, labels = _cells(radius=10)  # other cells: the measured diameter would differ
    more = train([image], [labels], QUICK, initial=scaled_model)
    assert (more.config.diameter, more.config.scale) == (
        scaled_model.config.diameter, scaled_model.config.scale)
