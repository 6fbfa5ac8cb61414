"""Hostile and broken requests: each gets a clear 4xx, the server stays healthy, nothing is
written outside the data dir. Run against FastAPI's TestClient and a real ``cellsparse serve``."""

from __future__ import annotations

import base64
import struct
import zlib

import numpy as np
import pytest
from api_helpers import b64png, b64tiff, tree

MB = 2**20


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int, idat: bytes = b"") -> str:
    """A tiny PNG whose header claims ``width`` x ``height`` gray pixels."""
    raw = (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + _png_chunk(b"IDAT", idat or zlib.compress(b""))
        + _png_chunk(b"IEND", b"")
    )
    return base64.b64encode(raw).decode()


def png_bomb(side: int) -> str:
    """A *valid* PNG of side x side zeros: a few KB that would decode to side**2 bytes."""
    rows = b"".join(b"\x00" + bytes(side) for _ in range(side))
    return png_claiming(side, side, zlib.compress(rows, 9))


IMG = np.zeros((64, 64), np.uint8)
IMG[20:40, 20:40] = 200
GOOD = b64png(IMG)
WIRE = np.ones((64, 64), np.uint16)
WIRE[20:40, 20:40] = 2
GOOD_LBL = b64png(WIRE)
TRUNCATED = base64.b64encode(base64.b64decode(GOOD)[:60]).decode()
RGB_LABELS = np.zeros((64, 64, 3), np.uint8)
RGB_LABELS[..., 0] = 1
RGB_LABELS[..., 1] = 7


def cp(**fields):
    body = {"modelname": "default", "b64img": GOOD, "b64lbl": GOOD_LBL, "train": True,
            "eval": True, "epochs": 1, "batchsize": 2, "steps": 2}
    body.update(fields)
    return {k: v for k, v in body.items() if v is not None}


def sam(**fields):
    body = {"type": "fallback", "b64img": b64png(np.stack([IMG] * 3, -1)),
            "point_coords": [[30, 30]], "point_labels": [1]}
    body.update(fields)
    return {k: v for k, v in body.items() if v is not None}


# (id, method, path, json body or raw bytes, expected status(es), fragment of the message)
CASES = [
    ("corrupt-base64", "post", "/cellpose/", cp(b64img="@@@not base64!!"), 400, "base64"),
    ("not-an-image", "post", "/cellpose/",
     cp(b64img=base64.b64encode(b"hello world, not a png").decode()), 400, "not a PNG"),
    ("truncated-png", "post", "/cellpose/", cp(b64img=TRUNCATED), 400, "b64img"),
    ("zero-size", "post", "/cellpose/", cp(b64img=png_claiming(0, 0)), 400, "b64img"),
    ("huge-dimensions", "post", "/cellpose/", cp(b64img=png_claiming(100_000, 100_000)), 413,
     "pixels"),
    ("decompression-bomb", "post", "/cellpose/", cp(b64img=png_bomb(6100)), 413, "limit"),
    ("tiny-image", "post", "/cellpose/",
     cp(b64img=b64png(np.zeros((4, 4), np.uint8)), train=False), 400, "too small"),
    ("labels-wrong-size", "post", "/cellpose/", cp(b64lbl=b64png(WIRE[:32])), 400,
     "do not match"),
    ("labels-rgb", "post", "/cellpose/", cp(b64lbl=b64png(RGB_LABELS)), 400, "single-channel"),
    ("labels-float-tiff", "post", "/cellpose/",
     cp(b64lbl=b64tiff(WIRE.astype(np.float32))), 400, "integer"),
    ("labels-16bit-no-foreground", "post", "/cellpose/",
     cp(b64lbl=b64png(np.ones((64, 64), np.uint16))), 400, "no foreground"),
    ("labels-nothing-annotated", "post", "/cellpose/",
     cp(b64lbl=b64png(np.zeros((64, 64), np.uint8))), 400, "annotate nothing"),
    ("train-without-labels", "post", "/cellpose/", cp(b64lbl=None), 400, "needs labels"),
    ("label-count-mismatch", "post", "/cellpose/",
     cp(b64img=None, b64lbl=None, b64imgs=[GOOD, GOOD], b64lbls=[GOOD_LBL]), 400,
     "label image"),
    ("traversal-modelname", "post", "/cellpose/", cp(modelname="../../etc"), 400,
     "invalid model name"),
    ("absolute-modelname", "post", "/cellpose/", cp(modelname="/etc/passwd"), 400,
     "invalid model name"),
    ("reset-traversal", "post", "/cellpose/reset/", {"modelname": "../../victim"}, 400,
     "invalid model name"),
    ("reset-dotdot", "post", "/stardist/reset/", {"modelname": ".."}, 400, "invalid model name"),
    ("reset-pretrained-unavailable", "post", "/cellpose/reset/",
     {"modelname": "default", "pretrained": "cyto"}, 400, "not available"),
    ("eval-missing-model", "post", "/cellpose/", cp(modelname="never-trained", train=False), 404,
     "never-trained"),
    ("wrong-type-train", "post", "/cellpose/", cp(train="yes please"), 422, "train"),
    ("wrong-type-image", "post", "/cellpose/", cp(b64img=12345), 422, "b64img"),
    ("negative-epochs", "post", "/cellpose/", cp(epochs=-1), 422, "epochs"),
    ("not-json", "post", "/cellpose/", b"{this is not json", 422, "JSON"),
    ("oversized-body", "post", "/cellpose/", b"x" * (9 * MB), 413, "limit"),
    ("sam-file-url", "post", "/sam/", sam(type="vit_t", checkpoint_url="file:///etc/passwd"), 400,
     "file:///etc/passwd"),
    ("sam-loopback-url", "post", "/sam/",
     sam(type="vit_t", checkpoint_url="http://127.0.0.1:8000/weights.pth"), 400, "127.0.0.1"),
    ("sam-metadata-url", "post", "/sam/",
     sam(type="vit_t", checkpoint_url="http://169.254.169.254/latest/meta-data/"), 400,
     "169.254.169.254"),
    ("sam-lookalike-host", "post", "/sam/",
     sam(type="vit_b", checkpoint_url="https://dl.fbaipublicfiles.com.evil.example/sam.pth"), 400,
     "evil.example"),
    ("sam-redirector-url", "post", "/sam/",
     sam(type="vit_b", checkpoint_url="https://evil.example/r?to=https://dl.fbaipublicfiles.com/"
         "segment_anything/sam_vit_b_01ec64.pth"), 400, "evil.example"),
    ("sam-points-without-labels", "post", "/sam/", sam(point_labels=[]), 400, "point_labels"),
    ("sam-no-prompt", "post", "/sam/", sam(point_coords=[], point_labels=[]), 400, "no prompt"),
    ("sam-bad-point-label", "post", "/sam/", sam(point_labels=[2]), 400, "point_labels"),
    ("sam-point-outside-image", "post", "/sam/", sam(point_coords=[[500, 10]]), 400, "outside"),
    ("sam-unknown-type", "post", "/sam/", sam(type="vit_zz"), 400, "vit_zz"),
    # issue 20: samapi's SAM2/SAM3 types and routes answer 503 with the reason, never 404/400
    ("sam-sam2-type", "post", "/sam/", sam(type="sam2_l"), 503, "sam2"),
    ("sam-sam3-type", "post", "/sam/", sam(type="sam3"), 503, "sam3"),
    ("automask-sam2-type", "post", "/sam/automask/", {"type": "sam2_t", "b64img": GOOD}, 503,
     "sam2"),
    ("sam3-route", "post", "/sam/sam3/", {"type": "sam3", "b64img": GOOD, "text_prompt": "cell"},
     503, "not available"),
    ("video-route", "post", "/sam/video/", {"type": "sam2_t", "objs": {}}, 503, "not available"),
    ("sam3video-route", "post", "/sam/sam3video/", {"type": "sam3", "objs": {}}, 503,
     "not available"),
    ("upload-route", "post", "/sam/upload/", b"--x--", 503, "not available"),
    # issue 20: a batch bounded by the machine's memory
    ("batch-too-large", "post", "/cellpose/", cp(batchsize=256, trainpatch=2048), 400,
     "pixels per step"),
    ("v1-batch-too-large", "post", "/api/v1/jobs",
     {"images": [GOOD], "labels": [GOOD_LBL], "batch_size": 256, "patch_size": 2048}, 400,
     "pixels per step"),
    ("v1-resume-unknown-job", "post", "/api/v1/jobs/0123456789ab/resume", None, 404,
     "0123456789ab"),
    ("sam-huge-image", "post", "/sam/", sam(b64img=png_claiming(50_000, 50_000)), 413, "pixels"),
    ("automask-bad-output-type", "post", "/sam/automask/",
     {"type": "fallback", "b64img": GOOD, "output_type": "everything"}, 400, "output_type"),
    ("weights-unknown-type", "get", "/sam/weights/?type=bogus", None, 400, "bogus"),
    ("v1-unknown-job", "get", "/api/v1/jobs/doesnotexist", None, 404, "doesnotexist"),
    ("v1-download-traversal", "get", "/api/v1/models/cellpose/..%2F..%2Fetc/download", None,
     (400, 404), ""),
    ("v1-predict-traversal", "post", "/api/v1/predict",
     {"model_name": "../../x", "image": GOOD}, 400, "invalid model name"),
    ("v1-unknown-field", "post", "/api/v1/predict",
     {"model_name": "m", "image": GOOD, "rm_rf": True}, 422, "rm_rf"),
]


def _send(client, method, path, payload):
    if isinstance(payload, bytes):
        return client.request(method, path, content=payload,
                              headers={"content-type": "application/json"})
    if payload is None:
        return client.request(method, path)
    return client.request(method, path, json=payload)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_a_clear_4xx(target, case):
    client, root = target
    _, method, path, payload, status, fragment = case
    response = _send(client, method, path, payload)
    expected = status if isinstance(status, tuple) else (status,)
    assert response.status_code in expected, response.text[:500]
    detail = str(response.json().get("detail"))
    assert fragment.lower() in detail.lower(), detail[:500]
    assert "Traceback" not in response.text
    assert client.get("/api/v1/health").status_code == 200


def test_nothing_written_outside_the_data_dir(target):
    client, root = target
    before = tree(root)
    for case in CASES:  # the whole suite again, then compare the file trees
        _send(client, case[1], case[2], case[3])
    after = tree(root)
    assert after == before, after ^ before
    assert (root / "victim" / "keep.txt").read_text() == "precious"
    assert client.get("/api/v1/health").json()["status"] == "ok"


# -- issue 20: answers the QuPath extensions can show ------------------------------------------

@pytest.mark.parametrize("model_type", ["sam2_l", "sam2_bp", "sam2_s", "sam2_t", "sam3"])
def test_weights_of_samapi_only_types_are_listed_not_empty(target, model_type):
    """The extension crashes on an empty weights list: each type lists its official weights,
    named so that its weights menu says they cannot run here."""
    client, _ = target
    r = client.get(f"/sam/weights/?type={model_type}")
    assert r.status_code == 200, r.text
    weights = r.json()
    assert len(weights) == 1 and weights[0]["type"] == model_type
    assert "NOT AVAILABLE" in weights[0]["name"] and weights[0]["url"].startswith("https://")
    assert weights[0]["available"] is False and model_type in weights[0]["message"]


def test_failed_weights_registration_says_why_in_a_200_body(target):
    """The extension shows only 200 bodies ("Registration request failed" otherwise)."""
    client, _ = target
    r = client.post("/sam/weights/", json={"type": "vit_t", "name": "x",
                                           "url": "http://localhost:22/"})
    assert r.status_code == 200
    assert r.text.startswith("Registration failed:") and "localhost" in r.text
    assert r.headers["x-registration-failed"] == "400"
    assert not any(w["name"] == "x" for w in client.get("/sam/weights/").json())


def test_422_does_not_echo_the_whole_body(target):
    client, _ = target
    huge = "A" * (2 * MB)
    r = client.post("/cellpose/", json=cp(b64img=None, b64imgs=huge))
    assert r.status_code == 422
    assert len(r.content) < 5000 and "b64imgs" in r.text and "characters" in r.text


def test_only_foreground_labels_train_with_a_warning(tc_target):
    client, _ = tc_target
    cells_only = np.zeros((64, 64), np.uint16)  # 0 unlabelled, 2 a cell, no 1 (background)
    cells_only[20:40, 20:40] = 2
    r = client.post("/cellpose/", json=cp(modelname="fg-only", b64lbl=b64png(cells_only),
                                          eval=False))
    assert r.status_code == 200, r.text[:300]
    assert "no background" in r.headers["x-training-warnings"]
    job = client.get(f"/api/v1/jobs/{r.headers['x-training-job']}").json()
    assert any("no background" in w for w in job["warnings"])


def test_empty_masks_are_left_out():
    from cellsparse_app.api.codec import sam_features

    masks = np.zeros((3, 32, 32), bool)
    masks[1, 5:15, 5:15] = True
    features = sam_features(masks, [0.9, 0.8, 0.7], "vit_t")
    assert len(features) == 1 and features[0]["geometry"]["coordinates"]
    assert features[0]["properties"]["object_idx"] == -1  # numbered without gaps
    assert features[0]["properties"]["quality"] == pytest.approx(0.8)
