"""samapi weights routes against a local HTTP server: register, list, progress, cancel, refused
redirects. The download policy is the engine's test policy (http://127.0.0.1 only)."""

from __future__ import annotations

import http.server
import threading
import time

import pytest
from fastapi.testclient import TestClient

from cellsparse_app.api import ServerSettings, create_app
from cellsparse_app.api.samapi import SamService
from cellsparse_app.sam import DownloadPolicy

PAYLOAD = b"not really weights, but bytes to download" * 100


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        if self.path == "/weights.pt":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD)
        elif self.path == "/slow.pt":
            self.send_response(200)
            self.send_header("Content-Length", str(50 * 2**20))
            self.end_headers()
            try:
                for _ in range(200):
                    self.wfile.write(b"\0" * 2**18)
                    time.sleep(0.05)
            except (BrokenPipeError, ConnectionResetError):
                pass
        elif self.path == "/redirect.pt":
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            self.end_headers()
        else:
            self.send_response(404)
            self.end_headers()


@pytest.fixture(scope="module")
def files():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    settings = ServerSettings(data_dir=root / "data", mount_ui=False)
    app = create_app(settings)
    app.state.cellsparse.sam = SamService(settings, policy=DownloadPolicy.local_testing())
    with TestClient(app) as c:
        yield c, root


def test_register_list_progress(client, files):
    c, root = client
    url = f"{files}/weights.pt"
    r = c.post("/sam/weights/", json={"type": "vit_t", "name": "mine", "url": url})
    assert r.status_code == 200 and r.text == f"mine ({url}) is registered."
    assert (root / "data" / "weights" / "sam" / "mine.pt").read_bytes() == PAYLOAD
    listed = c.get("/sam/weights/", params={"type": "vit_t"}).json()
    assert {"type": "vit_t", "name": "mine", "url": url, "downloaded": True,
            "available": True} in listed
    assert all(w["type"] == "vit_t" for w in listed)
    assert not any(w["name"] == "mine" for w in c.get("/sam/weights/?type=vit_b").json())
    assert c.get("/sam/progress/").json()["percent"] == 100
    again = c.post("/sam/weights/", json={"type": "vit_t", "name": "mine", "url": url})
    assert again.status_code == 200 and "Skip registration" in again.text


def test_redirect_to_forbidden_host_is_refused(client, files):
    c, root = client
    url = f"{files}/redirect.pt"
    r = c.post("/sam/weights/", json={"type": "vit_t", "name": "evil", "url": url})
    # the QuPath extension shows only 200 bodies: the reason goes there (and in the log)
    assert r.status_code == 200 and r.headers["x-registration-failed"] == "400", r.text
    assert r.text.startswith("Registration failed:")
    assert "refused redirect" in r.text and "169.254.169.254" in r.text
    assert not any(w["name"] == "evil" for w in c.get("/sam/weights/").json())
    assert not list((root / "data" / "weights" / "sam").glob("evil*"))


def test_cancel_a_running_download(client, files):
    c, root = client
    url = f"{files}/slow.pt"
    answer = {}

    def register():
        answer["r"] = c.post("/sam/weights/", json={"type": "vit_b", "name": "big", "url": url})

    thread = threading.Thread(target=register)
    thread.start()
    deadline = time.time() + 20
    while time.time() < deadline:
        progress = c.get("/sam/progress/").json()
        running = progress["message"] and "big: running" in progress["message"]
        if running and progress["percent"] >= 0:
            break
        time.sleep(0.05)
    assert progress["message"] and "big: running" in progress["message"]
    assert 0 <= progress["percent"] < 100
    cancel = c.get("/sam/weights/cancel/")
    assert cancel.status_code == 200 and cancel.text == "Cancel signal sent"
    thread.join(30)
    assert answer["r"].status_code == 200 and answer["r"].text.startswith("Cancelled to register")
    assert not any(w["name"] == "big" for w in c.get("/sam/weights/").json())
    assert not [p for p in (root / "data" / "weights" / "sam").iterdir() if "big" in p.name]
