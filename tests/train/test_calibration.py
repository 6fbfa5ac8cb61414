"""Post-training calibration: crops around annotated objects, the loop storing the result."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cellsparse_app.models.cellpose import CellposeConfig
from cellsparse_app.train import TrainConfig, calibration, train
from cellsparse_app.train.calibration import annotated_crops


def _labels(shape, boxes):
    lab = np.full(shape, -1, np.int32)
    for k, (r, c) in enumerate(boxes, start=1):
        lab[r : r + 10, c : c + 10] = k
    return lab


def test_one_crop_holds_every_object_with_a_margin():
    lab = _labels((200, 300), [(50, 60), (120, 200)])
    lab[0:5, 0:5] = 0  # background alone does not widen the crop
    image = np.arange(200 * 300, dtype=np.float32).reshape(1, 200, 300)
    crops = annotated_crops([image], [lab], margin=8)
    assert len(crops) == 1
    crop_image, crop_lab = crops[0]
    assert crop_lab.shape == (138 - 42, 218 - 52) and crop_image.shape == (1, *crop_lab.shape)
    assert crop_image[0, 0, 0] == image[0, 42, 52]
    assert sorted(np.unique(crop_lab[crop_lab > 0])) == [1, 2]
    assert (crop_lab == 1).sum() == (crop_lab == 2).sum() == 100  # whole objects


def test_images_without_objects_give_no_crop():
    image = np.zeros((1, 50, 50), np.float32)
    assert annotated_crops(
        [image, image], [np.zeros((50, 50), np.int32), np.full((50, 50), -1)]
    ) == []


def test_far_apart_objects_are_cropped_one_by_one(monkeypatch):
    monkeypatch.setattr(calibration, "MAX_UNION_PIXELS", 50 * 50)
    lab = _labels((300, 300), [(10, 10), (15, 20), (250, 260)])
    image = np.zeros((2, 300, 300), np.float32)
    crops = annotated_crops([image], [lab], margin=4)
    assert len(crops) == 3
    for k, (img, part) in enumerate(crops, start=1):
        assert img.shape[0] == 2 and img.shape[1:] == part.shape
        # Only object k counts in its crop; a neighbour cut by the crop is unlabelled.
        assert set(np.unique(part)) <= {-1, 0, k} and (part == k).sum() == 100
    window = lab[6:24, 6:24]  # object 1's crop: part of object 2 is in it
    assert (window == 2).sum() > 0
    assert (crops[0][1] == -1).sum() == (window == -1).sum() + (window == 2).sum()


@pytest.mark.parametrize("cancel", [False, True])
def test_training_stores_the_calibrated_flow_threshold(tmp_path, cancel):
    rr, cc = np.mgrid[:64, :64]
    labels = np.zeros((64, 64), np.int32)
    for k, (r, c) in enumerate(((20, 20), (44, 40)), start=1):
        labels[(rr - r) ** 2 + (cc - c) ** 2 <= 64] = k
    image = (labels > 0).astype(np.float32) * 200 + 10
    cfg = TrainConfig(steps=4, batch_size=2, patch_size=32, device="cpu")
    model = train([image], [labels], cfg, model_config=CellposeConfig(base_channels=4, depth=2),
                  should_stop=(lambda: True) if cancel else None)
    # Four steps leave the flows far from exact: calibrated above Cellpose's 0.4 -- unless the
    # run was cancelled, which keeps the setting it started with.
    threshold = model.config.flow_threshold
    assert threshold == 0.4 if cancel else 0.4 < threshold <= 1.0
    saved = json.loads((model.save(tmp_path / "m") / "config.json").read_text())
    assert saved["model"]["flow_threshold"] == threshold
