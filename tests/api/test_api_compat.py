"""The request shapes of qupath-extension-cellsparse / cellsparse-api and qupath-extension-sam /
samapi, replayed in-process (TestClient) and against a real ``cellsparse serve`` (httpx)."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from api_helpers import b64png, b64tiff, gray, sparse_wire_labels

# Steps, not seconds: the same model on any machine (seeded). 80 steps of 4 patches give a first
# model that finds nuclei on a real image.
TRAIN = {"epochs": 2, "batchsize": 4, "steps": 40, "trainpatch": 128, "lr": 0.002}


def _check_features(features, shape, sam=False):
    assert isinstance(features, list)
    h, w = shape[:2]
    for i, f in enumerate(features):
        assert f["type"] == "Feature" and f["geometry"]["type"] == "Polygon"
        props = f["properties"]
        assert props["label"] == "object"
        if sam:
            assert set(props) == {"object_idx", "label", "quality", "sam_model"}
            assert props["object_idx"] == i - 1  # samapi numbering
            assert math.isfinite(props["quality"])
        else:
            assert props["object_idx"] == i
        rings = f["geometry"]["coordinates"]
        if rings:
            ring = np.asarray(rings[0], dtype=float)
            assert ring.ndim == 2 and ring.shape[1] == 2 and len(ring) >= 4
            assert ring[:, 0].min() >= 0 and ring[:, 0].max() <= w
            assert ring[:, 1].min() >= 0 and ring[:, 1].max() <= h


def test_cellpose_train_eval_reset_round_trip(target, real_sample, request):
    client, root = target
    live = "live" in request.node.callspec.id
    # QuPath's cellsparse extension encodes TIFF; cellsparse-api's docs say PNG: one each.
    encode = b64tiff if live else b64png
    name = "round-trip-live" if live else "round-trip"
    image = gray(real_sample.image).astype(np.uint8)
    wire = sparse_wire_labels(real_sample.mask, fraction=0.3)
    train = TRAIN if not live else {**TRAIN, "epochs": 1, "steps": 20}
    # qupath-extension-cellsparse, older client: one image + label, train and eval
    body = {"modelname": name, "b64img": encode(image), "b64lbl": encode(wire), "train": True,
            "eval": True, "chan1": 0, "chan2": 0, "simplify_tol": 0, "minarea": 10.0,
            "unknown_future_field": 1, **train}
    r = client.post("/cellpose/", json=body)
    assert r.status_code == 200, r.text[:500]
    features = r.json()
    _check_features(features, image.shape)
    # newer client's inference body: no label, no train flag
    infer = {"modelname": name, "b64img": encode(image), "eval": True, "minarea": 10.0,
             "simplify_tol": 0.0, "chan1": 0, "chan2": 0}
    again = client.post("/cellpose/", json=infer)
    assert again.status_code == 200
    assert again.json() == features  # the stored model predicts deterministically
    # the same model scored against the full human annotation, through our own route
    m = client.post("/api/v1/metrics", json={"truth": b64png(real_sample.mask.astype(np.uint16)),
                                             "image": b64png(image), "model_name": name})
    assert m.status_code == 200, m.text[:300]
    assert m.json()["n_pred"] == len(features) and m.json()["n_true"] == real_sample.mask.max()
    # exactly what the core gives with the stored model
    from cellsparse_app.data.export import labels_to_geojson_features
    from cellsparse_app.predict import PredictConfig, predict_instances
    from cellsparse_app.train import TrainedModel

    stored = TrainedModel.load(root / "data" / "models" / "cellpose" / name)
    labels = predict_instances(stored, image, PredictConfig(min_size=10))
    assert features == labels_to_geojson_features(labels)
    if not live:  # 80 steps on a real image: a first model that finds nuclei
        assert len(features) >= 1 and m.json()["ap50"] > 0
    config = root / "data" / "models" / "cellpose" / name / "config.json"
    assert config.is_file()
    # reset -> fresh model: eval now 404, files gone
    reset = client.post("/cellpose/reset/", json={"modelname": name, "pretrained": None})
    assert reset.status_code == 200 and reset.json() == ""
    missing = client.post("/cellpose/", json=infer)
    assert missing.status_code == 404 and name in missing.json()["detail"]
    assert not config.parent.exists()


def test_newer_client_multi_image_train_body(target, real_sample):
    client, _ = target
    image = gray(real_sample.image).astype(np.uint8)
    halves = [image[:, :128], image[:, 128:]]
    masks = [real_sample.mask[:, :128], real_sample.mask[:, 128:]]
    body = {"modelname": "multi", "b64imgs": [b64png(h) for h in halves],
            "b64lbls": [b64png(sparse_wire_labels(m, 0.5)) for m in masks], "train": True,
            "eval": False, **{**TRAIN, "epochs": 1, "steps": 2}}
    r = client.post("/cellpose/", json=body)
    assert r.status_code == 200 and r.json() == []
    assert client.post("/cellpose/reset/", json={"modelname": "multi"}).status_code == 200


@pytest.mark.parametrize("family", ["stardist", "elephant"])
def test_other_families_train_and_eval(tc_target, real_sample, family):
    """The same wire format drives the StarDist- and ELEPHANT-style families."""
    client, root = tc_target
    image = gray(real_sample.image).astype(np.uint8)
    body = {"modelname": "fam", "b64img": b64png(image),
            "b64lbl": b64png(sparse_wire_labels(real_sample.mask)), "train": True, "eval": True,
            "epochs": 1, "steps": 3, "batchsize": 2, "trainpatch": 64}
    r = client.post(f"/{family}/", json=body)
    assert r.status_code == 200, r.text[:500]
    _check_features(r.json(), image.shape)
    assert (root / "data" / "models" / family / "fam" / "config.json").is_file()
    assert client.post(f"/{family}/reset/", json={"modelname": "fam"}).json() == ""
    assert not (root / "data" / "models" / family / "fam").exists()


def test_training_job_progress_and_cancel_keeps_the_model_trained_so_far(target, real_sample):
    client, root = target
    image = gray(real_sample.image).astype(np.uint8)
    body = {"family": "cellpose", "model_name": "jobs", "images": [b64png(image)],
            "labels": [b64png(sparse_wire_labels(real_sample.mask))], "max_seconds": 300,
            "batch_size": 2, "patch_size": 64, "resume": False}
    r = client.post("/api/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    deadline = time.time() + 120
    snap = r.json()
    while snap["step"] < 10 and time.time() < deadline:  # progress comes every 10 steps
        time.sleep(0.2)
        snap = client.get(f"/api/v1/jobs/{job_id}").json()
    assert snap["state"] == "running" and snap["step"] >= 10
    assert 0 < snap["progress"] < 1
    assert len(snap["history"]) >= 1 and all(math.isfinite(h["loss"]) for h in snap["history"])
    assert any(j["id"] == job_id for j in client.get("/api/v1/jobs").json())
    cancelled = client.post(f"/api/v1/jobs/{job_id}/cancel")
    assert cancelled.status_code == 200
    while client.get(f"/api/v1/jobs/{job_id}").json()["state"] == "running":
        time.sleep(0.2)
    final = client.get(f"/api/v1/jobs/{job_id}").json()
    # the work is kept, as the web app keeps a stopped round: the model so far is stored
    assert final["state"] == "cancelled" and final["model_saved"] is True
    assert final["step"] >= 10 and "cancelled after" in final["stop_reason"]
    config = root / "data" / "models" / "cellpose" / "jobs" / "config.json"
    assert config.is_file()
    from cellsparse_app.train import TrainedModel

    stored = TrainedModel.load(config.parent)
    assert stored.meta["cancelled"] is True and stored.meta["steps"] == final["step"]
    assert client.post("/api/v1/predict", json={"model_name": "jobs", "image": b64png(image),
                                                "format": "geojson"}).status_code == 200


def _sam_view(real_sample):
    """A 128x128 RGB view of the real image (what QuPath sends) and a point on a nucleus."""
    image = gray(real_sample.image).astype(np.uint8)[:128, :128]
    ys, xs = np.nonzero(real_sample.mask[:128, :128] > 0)
    return np.stack([image] * 3, -1), int(xs[len(xs) // 2]), int(ys[len(ys) // 2])


@pytest.mark.parametrize("sam_type", ["fallback", "vit_t"])
def test_sam_prompts_and_automask(target, real_sample, sam_type):
    client, _ = target
    rgb, x, y = _sam_view(real_sample)
    b64 = b64png(rgb)  # one image: SAM encodes it once, later requests reuse the embedding
    # qupath-extension-sam point prompt: background points first, then foreground, ints
    body = {"type": sam_type, "bbox": None, "b64img": b64, "b64mask": None,
            "point_coords": [[2, 2], [x, y]], "point_labels": [0, 1], "multimask_output": False,
            "checkpoint_url": None}
    r = client.post("/sam/", json=body)
    assert r.status_code == 200, r.text[:500]
    feats = r.json()
    assert len(feats) == 1
    _check_features(feats, rgb.shape, sam=True)
    assert feats[0]["properties"]["sam_model"].startswith(sam_type)
    if sam_type == "fallback":  # a real segmenter: the clicked nucleus is inside its outline
        from cellsparse_app.data.polygons import polygon_to_mask

        ring = np.asarray(feats[0]["geometry"]["coordinates"][0])
        assert polygon_to_mask(ring, rgb.shape[:2])[y, x]
    # box prompt (QuPath rounds the far corner up to the region edge) with multimask output
    box = {"type": sam_type, "b64img": b64, "bbox": [x - 10, y - 10, 128, 128],
           "multimask_output": True}
    r = client.post("/sam/", json=box)
    assert r.status_code == 200, r.text[:500]
    assert len(r.json()) >= 1
    _check_features(r.json(), rgb.shape, sam=True)
    # automatic masks (samapi body as qupath-extension-sam sends it)
    auto = {"type": sam_type, "b64img": b64, "points_per_side": 4, "points_per_batch": 64,
            "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "stability_score_offset": 1.0,
            "box_nms_thresh": 0.2, "crop_n_layers": 0, "crop_nms_thresh": 0.7,
            "crop_overlap_ratio": 512 / 1500, "crop_n_points_downscale_factor": 1,
            "min_mask_region_area": 0, "output_type": "Multi-mask (smallest)",
            "include_image_edge": False}
    r = client.post("/sam/automask/", json=auto)
    assert r.status_code == 200, r.text[:500]
    _check_features(r.json(), rgb.shape, sam=True)
    if sam_type == "fallback":
        assert len(r.json()) >= 3  # several nuclei in the view


def test_sam_16bit_gray_input(target, real_sample):
    client, _ = target
    _, x, y = _sam_view(real_sample)
    image16 = gray(real_sample.image).astype(np.uint16)[:128, :128] * 250
    r = client.post("/sam/", json={"type": "fallback", "b64img": b64png(image16),
                                   "point_coords": [[x, y]], "point_labels": [1]})
    assert r.status_code == 200, r.text[:500]
    _check_features(r.json(), image16.shape, sam=True)


def test_sam_version_weights_progress_cancel(target):
    client, _ = target
    version = client.get("/sam/version/")
    assert version.status_code == 200 and version.headers["content-type"].startswith("text/plain")
    assert version.text.split(".")[0].isdigit()
    weights = client.get("/sam/weights/", params={"type": "vit_t"})
    assert weights.status_code == 200
    listed = weights.json()
    assert isinstance(listed, list) and listed
    assert all(set(w) >= {"type", "name", "url"} and w["type"] == "vit_t" for w in listed)
    progress = client.get("/sam/progress/")
    assert progress.status_code == 200 and set(progress.json()) == {"message", "percent"}
    cancel = client.get("/sam/weights/cancel/")
    assert cancel.status_code == 200 and cancel.text == "Cancel signal sent"
