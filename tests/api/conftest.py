"""Fixtures for the REST API tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def real_sample(dsb_fluo):
    """A real 256x256 fluorescence image with its human annotation."""
    for sample in dsb_fluo:
        if sample.image.shape[:2] == (256, 256) and sample.image.ndim == 2 \
                and sample.mask.max() > 8:
            return sample
    for sample in dsb_fluo:
        if sample.image.shape[:2] == (256, 256) and sample.mask.max() > 8:
            return sample
    pytest.skip("no 256x256 sample in dsb2018_fluo_dev")


MB = 2**20


def _victim(root):
    (root / "victim").mkdir()
    (root / "victim" / "keep.txt").write_text("precious")


@pytest.fixture(scope="session")
def tc_target(tmp_path_factory):
    """(TestClient, root): the app in-process; data in root/data, a decoy dir root/victim."""
    from fastapi.testclient import TestClient

    from cellsparse_app.api import ServerSettings, create_app

    root = tmp_path_factory.mktemp("api-tc")
    _victim(root)
    settings = ServerSettings(data_dir=root / "data", max_body_bytes=8 * MB, mount_ui=False,
                              sam_random_init=True, sam_encoder="torch")
    with TestClient(create_app(settings)) as client:
        yield client, root


@pytest.fixture(scope="session")
def live_server(tmp_path_factory):
    """A real ``cellsparse serve`` process (UI mounted if available), shared by the API tests."""
    from api_helpers import LiveServer

    root = tmp_path_factory.mktemp("api-live")
    _victim(root)
    server = LiveServer(root, env={"CELLSPARSE_SAM_RANDOM_INIT": "1",
                                      "CELLSPARSE_SAM_ENCODER": "torch"})
    yield server
    server.stop()


@pytest.fixture(scope="session")
def live_target(live_server):
    """(httpx.Client, root) talking to the live server over TCP."""
    import httpx

    with httpx.Client(base_url=live_server.url, timeout=120) as client:
        yield client, live_server.workdir


@pytest.fixture(params=["testclient", "live"])
def target(request):
    """Each test runs in-process and against the real server."""
    return request.getfixturevalue("tc_target" if request.param == "testclient" else "live_target")
