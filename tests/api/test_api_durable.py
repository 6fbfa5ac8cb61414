"""Issue 20: training is never lost and REST clients are told the truth.

Real HTTP (TestClient in-process, and a real ``cellsparse serve`` stopped with SIGTERM):
job records and queued jobs on disk survive a restart, interrupted jobs resume, a shutdown
answers the waiting client with a 503 (JSON), the time cap is said in the reply and progress is
pollable, and SAM answers SAM or an error unless the fallback is allowed.
"""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np
import pytest
from api_helpers import LiveServer, b64png
from fastapi.testclient import TestClient

from cellsparse_app.api import ServerSettings, create_app

IMG = np.zeros((64, 64), np.uint8)
IMG[20:40, 20:40] = 200
WIRE = np.ones((64, 64), np.uint16)
WIRE[20:40, 20:40] = 2


def _job_body(name, steps, **extra):
    return {"family": "cellpose", "model_name": name, "images": [b64png(IMG)],
            "labels": [b64png(WIRE)], "steps": steps, "batch_size": 2, "patch_size": 32,
            "resume": False, **extra}


def _until(check, timeout=120.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def _settings(root, **changes):
    return ServerSettings(data_dir=root / "data", mount_ui=False, sam_encoder="torch", **changes)


def test_job_records_and_queued_jobs_survive_a_restart(tmp_path):
    settings = _settings(tmp_path)
    with TestClient(create_app(settings)) as client:
        long = client.post("/api/v1/jobs", json=_job_body("long", 100_000)).json()["id"]
        queued = client.post("/api/v1/jobs", json=_job_body("later", 3)).json()["id"]
        _until(lambda: client.get(f"/api/v1/jobs/{long}").json()["step"] >= 10)
        assert client.get(f"/api/v1/jobs/{queued}").json()["state"] == "queued"
    # the app stopped: the running job kept its model, the queued one waits on disk
    jobs_dir = tmp_path / "data" / "jobs"
    assert {p.name for p in jobs_dir.glob("*.json")} == {f"{long}.json", f"{queued}.json"}
    assert (jobs_dir / f"{queued}.npz").is_file()
    assert (tmp_path / "data" / "models" / "cellpose" / "long" / "config.json").is_file()

    with TestClient(create_app(settings)) as client:  # restart
        jobs = {j["id"]: j for j in client.get("/api/v1/jobs").json()}
        assert set(jobs) == {long, queued}
        stopped = jobs[long]
        assert stopped["state"] == "interrupted" and stopped["model_saved"]
        assert stopped["rerunnable"] and "shutdown" in stopped["stop_reason"]
        done = _until(lambda: (j := client.get(f"/api/v1/jobs/{queued}").json())["state"]
                      == "done" and j)
        assert done["model_saved"] and done["step"] == 3
        resumed = client.post(f"/api/v1/jobs/{long}/resume")
        assert resumed.status_code == 202, resumed.text
        new = resumed.json()
        assert new["resumed_from"] == long
        assert new["steps_requested"] == 100_000 - stopped["step"]
        _until(lambda: client.get(f"/api/v1/jobs/{new['id']}").json()["step"] >= 10)
        client.post(f"/api/v1/jobs/{new['id']}/cancel")
        final = _until(lambda: (j := client.get(f"/api/v1/jobs/{new['id']}").json())["state"]
                       == "cancelled" and j)
        assert final["model_saved"] and final["step"] >= 10
        again = client.post(f"/api/v1/jobs/{long}/resume")  # its data moved to the new job
        assert again.status_code == 404 and "not kept" in again.json()["detail"]


def test_time_cap_is_said_in_the_reply_and_progress_is_polled(tmp_path):
    with TestClient(create_app(_settings(tmp_path, max_train_seconds=4.0))) as client:
        body = {"modelname": "capped", "b64img": b64png(IMG), "b64lbl": b64png(WIRE),
                "train": True, "eval": False, "epochs": 5, "steps": 200, "batchsize": 2,
                "trainpatch": 32}
        answer = {}
        thread = threading.Thread(target=lambda: answer.update(r=client.post("/cellpose/",
                                                                             json=body)))
        thread.start()
        seen = _until(lambda: (p := client.get("/cellpose/progress/?modelname=capped").json())
                      ["job"] and p["job"]["state"] == "running" and p)
        assert "step" in seen["message"] and -1 <= seen["percent"] <= 100
        thread.join(120)
        r = answer["r"]
        assert r.status_code == 200, r.text
        steps = int(r.headers["x-training-steps"])
        assert 0 < steps < 1000 and r.headers["x-training-steps-requested"] == "1000"
        assert r.headers["x-training-cut"] == "true"
        reason = r.headers["x-training-stop-reason"]
        assert "time budget of 4 s" in reason and "CELLSPARSE_MAX_TRAIN_SECONDS" in reason
        job = client.get(f"/api/v1/jobs/{r.headers['x-training-job']}").json()
        assert job["cut"] and job["stop_reason"] == reason and job["step"] == steps
        done = client.get("/cellpose/progress/?modelname=capped").json()
        assert done["percent"] == 100 and "time budget" in done["message"]


def test_sam_answers_sam_or_an_error_unless_the_fallback_is_allowed(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLSPARSE_OFFLINE", "1")  # no weights, no downloads
    rgb = np.stack([IMG] * 3, -1)
    body = {"type": "vit_l", "b64img": b64png(rgb), "point_coords": [[30, 30]],
            "point_labels": [1], "checkpoint_url":
            "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth"}
    with TestClient(create_app(_settings(tmp_path / "strict"))) as client:
        r = client.post("/sam/", json=body)
        assert r.status_code == 503, r.text
        detail = r.json()["detail"]
        assert "vit_l" in detail and "CELLSPARSE_ALLOW_SAM_FALLBACK" in detail
        auto = client.post("/sam/automask/", json={"type": "vit_l", "b64img": b64png(rgb)})
        assert auto.status_code == 503
        by_name = client.post("/sam/", json={**body, "type": "fallback", "checkpoint_url": None})
        assert by_name.status_code == 200 and by_name.json()[0]["properties"]["sam_model"] \
            == "fallback"
    with TestClient(create_app(_settings(tmp_path / "lenient", allow_sam_fallback=True))) as c:
        r = c.post("/sam/", json=body)
        assert r.status_code == 200 and r.json()[0]["properties"]["sam_model"] == "fallback"


def test_sigterm_during_blocking_training_answers_503_and_keeps_the_work(tmp_path):
    env = {"CELLSPARSE_SAM_RANDOM_INIT": "1"}
    server = LiveServer(tmp_path, env=env)
    body = {"modelname": "sig", "b64img": b64png(IMG), "b64lbl": b64png(WIRE), "train": True,
            "eval": True, "epochs": 100, "steps": 1000, "batchsize": 2, "trainpatch": 32}
    answer = {}

    def post():
        try:
            answer["r"] = httpx.post(server.url + "/stardist/", json=body, timeout=120)
        except httpx.HTTPError as exc:
            answer["error"] = exc

    try:
        thread = threading.Thread(target=post)
        thread.start()
        _until(lambda: (httpx.get(server.url + "/stardist/progress/?modelname=sig").json()
                        .get("job") or {}).get("step", 0) >= 10)
        server.proc.terminate()  # SIGTERM
        thread.join(60)
        assert server.proc.wait(60) in (0, -15)  # uvicorn re-raises SIGTERM once stopped
    finally:
        server.stop()
    assert "error" not in answer, answer
    r = answer["r"]
    assert r.status_code == 503 and r.headers["content-type"] == "application/json"
    detail = r.json()["detail"]
    assert "shutting down" in detail and "saved as 'sig'" in detail and "/resume" in detail
    assert int(r.headers["x-training-steps"]) >= 10
    assert (server.data / "models" / "stardist" / "sig" / "config.json").is_file()
    assert not (server.home / ".cache").exists()  # temporary files stay in the data dir

    restarted = LiveServer(tmp_path, env=env)
    try:
        jobs = httpx.get(restarted.url + "/api/v1/jobs").json()
        assert len(jobs) == 1 and jobs[0]["state"] == "interrupted" and jobs[0]["model_saved"]
        eval_only = httpx.post(restarted.url + "/stardist/", json={**body, "train": False},
                               timeout=120)
        assert eval_only.status_code == 200  # the interrupted training's model answers
    finally:
        restarted.stop()


@pytest.mark.parametrize("flag", ["env", "settings"])
def test_fallback_setting(flag, monkeypatch):
    if flag == "env":
        monkeypatch.setenv("CELLSPARSE_ALLOW_SAM_FALLBACK", "1")
        assert ServerSettings.from_env().allow_sam_fallback
    else:
        monkeypatch.delenv("CELLSPARSE_ALLOW_SAM_FALLBACK", raising=False)
        assert not ServerSettings.from_env().allow_sam_fallback
