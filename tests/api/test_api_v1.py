"""Our /api/v1 routes: job -> stored model -> list, info, zip download, label TIFF, metrics,
delete; in-process (the transport is covered by the compat tests)."""

from __future__ import annotations

import base64
import io
import time
import zipfile

import numpy as np
import tifffile
from api_helpers import b64png, b64tiff, gray, sparse_wire_labels


def _wait(client, job_id, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        snap = client.get(f"/api/v1/jobs/{job_id}").json()
        if snap["state"] in ("done", "failed", "cancelled"):
            return snap
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish: {snap}")


def test_job_model_predict_metrics_download_delete(tc_target, real_sample):
    client, root = tc_target
    image = gray(real_sample.image).astype(np.uint8)
    sparse = sparse_wire_labels(real_sample.mask).astype(np.int32) - 1  # -1/0/1..N, signed TIFF
    body = {"family": "cellpose", "model_name": "v1", "images": [b64png(image)],
            "labels": [b64tiff(sparse)], "label_format": "sparse", "steps": 3, "batch_size": 2,
            "patch_size": 64, "resume": False}
    submitted = client.post("/api/v1/jobs", json=body)
    assert submitted.status_code == 202, submitted.text
    assert submitted.json()["state"] in ("queued", "running")
    snap = _wait(client, submitted.json()["id"])
    assert snap["state"] == "done" and snap["model_saved"] and snap["progress"] == 1.0

    models = client.get("/api/v1/models").json()
    assert any(m["family"] == "cellpose" and m["name"] == "v1" for m in models)
    info = client.get("/api/v1/models/cellpose/v1").json()
    assert info["config"]  # the model's config.json
    download = client.get("/api/v1/models/cellpose/v1/download")
    assert download.status_code == 200 and download.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(download.content)) as zf:
        assert {"config.json", "weights.pt"} <= set(zf.namelist())

    tiff = client.post("/api/v1/predict", json={"model_name": "v1", "image": b64png(image)})
    assert tiff.status_code == 200 and tiff.headers["content-type"] == "image/tiff"
    labels = tifffile.imread(io.BytesIO(tiff.content))
    assert labels.shape == image.shape and labels.dtype in (np.uint16, np.uint32)
    assert int(tiff.headers["x-object-count"]) == int(labels.max())
    geo = client.post("/api/v1/predict", json={"model_name": "v1", "image": b64png(image),
                                               "format": "geojson"})
    assert geo.status_code == 200 and len(geo.json()) == len(np.unique(labels)) - 1

    pred_b64 = base64.b64encode(tiff.content).decode()
    scored = client.post("/api/v1/metrics", json={
        "truth": b64png(real_sample.mask.astype(np.uint16)), "pred": pred_b64})
    assert scored.status_code == 200
    result = scored.json()
    assert result["n_true"] == real_sample.mask.max() and result["n_pred"] == labels.max()
    assert 0 <= result["ap50"] <= 1
    sparse_truth = client.post("/api/v1/metrics", json={
        "truth": b64tiff(sparse), "truth_format": "sparse", "pred": pred_b64})
    assert sparse_truth.status_code == 200 and sparse_truth.json()["sparse"] is True

    assert client.delete("/api/v1/models/cellpose/v1").json() == {"deleted": True}
    assert client.post("/api/v1/predict", json={"model_name": "v1", "image": b64png(image)}
                       ).status_code == 404
    assert not (root / "data" / "models" / "cellpose" / "v1").exists()


def test_job_with_bad_labels_fails_fast(tc_target, real_sample):
    client, _ = tc_target
    image = gray(real_sample.image).astype(np.uint8)
    body = {"model_name": "v1-bad", "images": [b64png(image)],
            "labels": [b64png(np.ones(image.shape, np.uint8))]}  # only background
    r = client.post("/api/v1/jobs", json=body)
    assert r.status_code == 400 and "no foreground" in r.json()["detail"]


def test_rest_job_waits_for_the_web_apps_training_in_the_same_process(tc_target, real_sample):
    """The server's jobs take the process's training slot, as the mounted web app's rounds do:
    a job submitted while a web round trains (and another waits) is queued behind both."""
    from cellsparse_app.jobs.slot import process_slot

    client, _ = tc_target
    image = gray(real_sample.image).astype(np.uint8)
    body = {"family": "cellpose", "model_name": "v1-slot", "images": [b64png(image)],
            "labels": [b64tiff(sparse_wire_labels(real_sample.mask))], "steps": 2,
            "batch_size": 2, "patch_size": 64, "resume": False}
    with process_slot().enter("web app round (test)") as web:
        assert web.wait(5)
        other = process_slot().enter("web app round 2 (test)")
        submitted = client.post("/api/v1/jobs", json=body)
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["id"]
        time.sleep(0.5)  # the worker would have started it by now if it could
        snap = client.get(f"/api/v1/jobs/{job_id}").json()
        assert snap["state"] == "queued" and snap["queue_position"] == 1
        other.release()  # the waiting web round was stopped
        snap = client.get(f"/api/v1/jobs/{job_id}").json()
        assert snap["state"] == "queued" and snap["queue_position"] == 0
    assert _wait(client, job_id)["state"] == "done"


def test_job_diameter_sets_the_models_scale_and_rescale_false_keeps_the_images_own(
        tc_target, real_sample):
    """The training diameter (issue 19) reaches the engine: cells said to be 60 px across are
    shrunk to the canonical diameter, and the model records it; ``rescale: false`` keeps 1."""
    client, _ = tc_target
    image = gray(real_sample.image).astype(np.uint8)
    sparse = sparse_wire_labels(real_sample.mask).astype(np.int32) - 1
    base = {"family": "cellpose", "images": [b64png(image)], "labels": [b64tiff(sparse)],
            "label_format": "sparse", "steps": 2, "batch_size": 2, "patch_size": 64,
            "resume": False}
    scales = {}
    for name, extra in {"d60": {"diameter": 60}, "own": {"diameter": 60, "rescale": False}}.items():
        submitted = client.post("/api/v1/jobs", json={**base, "model_name": name, **extra})
        assert submitted.status_code == 202, submitted.text
        assert _wait(client, submitted.json()["id"])["state"] == "done"
        model = client.get(f"/api/v1/models/cellpose/{name}").json()["config"]["model"]
        scales[name] = (model["diameter"], model["scale"])
    from cellsparse_app.data.object_scale import CANONICAL_DIAMETER

    assert scales["d60"][0] == 60.0
    assert abs(scales["d60"][1] - CANONICAL_DIAMETER / 60) < 1e-3
    assert scales["own"][1] == 1.0
    bad = client.post("/api/v1/jobs", json={**base, "model_name": "bad", "diameter": -3})
    assert bad.status_code == 422 and "diameter" in bad.text
