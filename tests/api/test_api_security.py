"""Settings, API token, body size cap, OpenAPI coverage and the error-mapping helper."""

from __future__ import annotations

import pytest
from fastapi import HTTPException
from fastapi.testclient import TestClient

from cellsparse_app.api import ServerSettings, create_app
from cellsparse_app.api.errors import NotAvailable, PayloadTooLarge, to_http
from cellsparse_app.errors import InvalidInput, InvalidType, MissingFile, NotFound, Unavailable
from cellsparse_app.jobs.runner import QueueFullError, ShuttingDownError

TOKEN = "s3cret-token-123"


@pytest.fixture
def secured(tmp_path):
    settings = ServerSettings(data_dir=tmp_path, token=TOKEN, mount_ui=False, max_body_bytes=1000)
    with TestClient(create_app(settings)) as client:
        yield client


def test_settings_defaults_and_env(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLSPARSE_API_TOKEN", TOKEN)
    monkeypatch.setenv("CELLSPARSE_MAX_BODY_MB", "2")
    monkeypatch.setenv("CELLSPARSE_HOME", str(tmp_path / "home"))
    s = ServerSettings.from_env(port=9000)
    assert s.host == "127.0.0.1" and s.is_loopback
    assert s.token == TOKEN and s.max_body_bytes == 2 * 2**20 and s.port == 9000
    assert s.data_dir == (tmp_path / "home").resolve()
    assert not s.replace(host="0.0.0.0").is_loopback
    with pytest.raises(ValueError, match="8 characters"):
        ServerSettings(data_dir=tmp_path, token="short")
    with pytest.raises(ValueError, match="port"):
        ServerSettings(data_dir=tmp_path, port=70000)


@pytest.mark.parametrize(
    "headers, path, status",
    [
        ({}, "/sam/version/", 401),
        ({"Authorization": "Bearer wrong-token-xyz"}, "/sam/version/", 401),
        ({"Authorization": f"Bearer {TOKEN}"}, "/sam/version/", 200),
        ({"X-API-Token": TOKEN}, "/sam/version/", 200),
        ({}, f"/t/{TOKEN}/sam/version/", 200),
        ({}, "/t/wrong-token-xyz/sam/version/", 401),
        ({}, "/api/v1/health", 200),  # liveness stays open
        ({}, "/openapi.json", 401),
        ({}, f"/sam/version/?token={TOKEN}", 200),
    ],
)
def test_token(secured, headers, path, status):
    response = secured.get(path, headers=headers)
    assert response.status_code == status, response.text
    if status == 401:
        assert "API token" in response.json()["detail"]


def test_query_token_sets_cookie_for_browsers(secured):
    response = secured.get(f"/api/v1/jobs?token={TOKEN}")
    assert response.status_code == 200
    assert "cellsparse_token" in response.headers["set-cookie"]
    assert secured.get("/api/v1/jobs").status_code == 200  # cookie remembered by the client


def test_body_cap_checked_after_token(secured):
    big = b"{" + b" " * 2000 + b"}"
    headers = {"Authorization": f"Bearer {TOKEN}", "content-type": "application/json"}
    assert secured.post("/cellpose/", content=big, headers={"content-type": "application/json"}
                        ).status_code == 401
    response = secured.post("/cellpose/", content=big, headers=headers)
    assert response.status_code == 413 and "1000 bytes" in response.json()["detail"]


def test_chunked_body_over_cap_is_refused(secured):
    def chunks():
        for _ in range(10):
            yield b" " * 500

    headers = {"Authorization": f"Bearer {TOKEN}", "content-type": "application/json"}
    response = secured.post("/cellpose/", content=chunks(), headers=headers)
    assert response.status_code == 413


def test_openapi_documents_every_route(tmp_path):
    app = create_app(ServerSettings(data_dir=tmp_path, mount_ui=False))
    paths = app.openapi()["paths"]
    routes = {r.path for r in app.routes if getattr(r, "include_in_schema", False)}
    assert routes <= set(paths)
    for path in ["/cellpose/", "/cellpose/reset/", "/stardist/", "/elephant/", "/sam/",
                 "/sam/automask/", "/sam/version/", "/sam/weights/", "/sam/progress/",
                 "/sam/weights/cancel/", "/api/v1/jobs", "/api/v1/jobs/{job_id}/cancel",
                 "/api/v1/predict", "/api/v1/metrics", "/api/v1/models/{family}/{name}/download",
                 "/api/v1/health"]:
        assert path in paths, path
        for op in paths[path].values():
            assert op.get("summary"), (path, op)
    assert set(paths["/sam/weights/"]) == {"get", "post"}


@pytest.mark.parametrize(
    "exc, status",
    [
        (ValueError("bad"), 400), (InvalidInput("bad"), 400), (InvalidType("bad"), 400),
        (FileNotFoundError("gone"), 404), (MissingFile("gone"), 404), (NotFound("no job"), 404),
        (QueueFullError("busy"), 429), (PayloadTooLarge("big"), 413),
        (NotAvailable("later"), 501), (Unavailable("no weights"), 503),
        (ShuttingDownError("stopping"), 503), (HTTPException(409, "x"), 409),
        (RuntimeError("boom"), 500), (KeyError("boom"), 500), (TypeError("boom"), 500),
    ],
)
def test_error_mapping(exc, status):
    """The hierarchy maps to 4xx/503; a bare KeyError/TypeError is a bug: a generic 500."""
    http = to_http(exc)
    assert http.status_code == status
    if status == 500:
        assert "boom" not in http.detail and type(exc).__name__ in http.detail
    elif isinstance(exc, NotFound):
        assert http.detail == str(exc.args[0])  # not repr-quoted


def test_a_bug_keyerror_in_a_route_is_a_500_not_a_404(tmp_path, monkeypatch):
    """A KeyError from a bug must not read as "unknown job": the client gets a 500."""
    settings = ServerSettings(data_dir=tmp_path, mount_ui=False)
    with TestClient(create_app(settings)) as client:
        runner = client.app.state.cellsparse.runner

        def broken(job_id):
            return {}["model"]  # a bug, not a missing job

        monkeypatch.setattr(runner, "get", broken)
        r = client.get("/api/v1/jobs/0123456789ab")
        assert r.status_code == 500, r.text
        assert "KeyError" in r.json()["detail"] and "model" not in r.json()["detail"]

        def gone(job_id):
            raise NotFound(f"no training job with id {job_id!r}")

        monkeypatch.setattr(runner, "get", gone)
        r = client.get("/api/v1/jobs/0123456789ab")
        assert r.status_code == 404
        assert r.json()["detail"] == "no training job with id '0123456789ab'"


def test_not_found_from_the_core_is_a_404(tmp_path):
    settings = ServerSettings(data_dir=tmp_path, mount_ui=False)
    with TestClient(create_app(settings)) as client:
        r = client.get("/api/v1/jobs/doesnotexist")
        assert r.status_code == 404 and r.json()["detail"] == (
            "no training job with id 'doesnotexist'")
        r = client.post("/api/v1/jobs/doesnotexist/cancel")
        assert r.status_code == 404
        r = client.get("/api/v1/models/cellpose/never/download")
        assert r.status_code == 404 and "never" in r.json()["detail"]


def test_live_server_ui_and_file_tree(live_server):
    """`cellsparse serve` binds 127.0.0.1, mounts the UI, and writes nothing in $HOME."""
    import httpx
    from api_helpers import tree

    assert live_server.url.startswith("http://127.0.0.1:")
    root = httpx.get(live_server.url + "/", follow_redirects=False, timeout=30)
    assert root.status_code == 307
    if root.headers["location"] == "/ui/":  # the UI package is installed
        ui = httpx.get(live_server.url + "/ui/", timeout=60)
        assert ui.status_code == 200 and "text/html" in ui.headers["content-type"]
    docs = httpx.get(live_server.url + "/openapi.json", timeout=30).json()
    assert "/cellpose/" in docs["paths"] and "/sam/" in docs["paths"]
    assert tree(live_server.home) == set()


def test_missing_family_is_a_clear_501(tmp_path, monkeypatch):
    import cellsparse_app.models as models

    real = models.get_family

    def fake(name):
        if name == "elephant":
            raise ValueError("unknown model family 'elephant'")
        return real(name)

    monkeypatch.setattr(models, "get_family", fake)
    with TestClient(create_app(ServerSettings(data_dir=tmp_path, mount_ui=False))) as client:
        r = client.post("/elephant/", json={"modelname": "m", "b64img": "x", "eval": True})
        assert r.status_code == 501
        assert "'elephant' is not available" in r.json()["detail"]
        assert client.post("/elephant/reset/", json={"modelname": "m"}).status_code == 501


def test_dns_rebinding_host_refused_on_loopback(tmp_path):
    """A web page whose domain was rebound to 127.0.0.1 must not reach the local server."""
    with TestClient(create_app(ServerSettings(data_dir=tmp_path, mount_ui=False))) as client:
        assert client.get("/api/v1/health", headers={"host": "localhost:8000"}).status_code == 200
        assert client.get("/api/v1/health", headers={"host": "127.0.0.1:8000"}).status_code == 200
        evil = client.post("/cellpose/reset/", json={"modelname": "default"},
                           headers={"host": "evil.example:8000"})
        assert evil.status_code == 400
    open_app = create_app(ServerSettings(data_dir=tmp_path, mount_ui=False, host="0.0.0.0",
                                         token=TOKEN))
    with TestClient(open_app) as client:  # exposed on purpose: any Host, but the token
        assert client.get("/api/v1/health", headers={"host": "cells.lab.org"}).status_code == 200


def test_cross_site_form_post_is_not_json(tmp_path):
    """Browsers send cross-site 'simple' requests as text/plain: they never parse as a body."""
    with TestClient(create_app(ServerSettings(data_dir=tmp_path, mount_ui=False))) as client:
        r = client.post("/cellpose/reset/", content='{"modelname": "default"}',
                        headers={"content-type": "text/plain"})
        assert r.status_code == 422


def test_the_mounted_web_app_shares_the_servers_weights_cache(tmp_path, monkeypatch):
    """Passed explicitly, not through the environment: the web app's SAM looks for weights in
    the server's data dir, and ``CELLSPARSE_CACHE_DIR`` stays unset in this process."""
    import os
    from types import SimpleNamespace

    from cellsparse_app.api.server import _ui_context
    from cellsparse_app.session.sam_bridge import create_annotator

    monkeypatch.delenv("CELLSPARSE_CACHE_DIR", raising=False)
    settings = ServerSettings(data_dir=tmp_path / "data")
    (context,) = _ui_context(SimpleNamespace(settings=settings))  # it reads only the settings
    assert context.settings.weights_dir == settings.weights_dir == tmp_path / "data" / "weights"
    annotator = create_annotator("vit_t", weights_dir=context.settings.weights_dir)
    assert annotator.weights.directory == tmp_path / "data" / "weights" / "sam"
    assert "CELLSPARSE_CACHE_DIR" not in os.environ
