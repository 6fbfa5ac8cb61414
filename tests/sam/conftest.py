"""Fixtures of the SAM engine tests: one random-init MobileSAM for the whole session."""

from __future__ import annotations

import http.server
import importlib.util
import threading

import numpy as np
import pytest
from sam_test_server import Handler

from cellsparse_app.sam import SamAnnotator, SamConfig, WeightsManager


@pytest.fixture(scope="session")
def sam_cache(tmp_path_factory):
    """An empty cache directory (no weights in it)."""
    return tmp_path_factory.mktemp("sam-cache")


@pytest.fixture(scope="session")
def vit_t(sam_cache):
    """Random-init MobileSAM (real architecture and cost, meaningless masks), torch encoder."""
    if importlib.util.find_spec("mobile_sam") is None:  # importing it needs the torchvision shim
        pytest.skip("mobilesam-mirror is not installed")
    cfg = SamConfig(model_type="vit_t", random_weights=True, encoder_engine="torch", device="cpu",
                    decoder_threads=1)  # same thread count in every test thread: same floats
    return SamAnnotator(cfg, weights=WeightsManager(sam_cache)).load()


@pytest.fixture(scope="session")
def nuclei_image(dsb_fluo):
    """A real 256x256 fluorescence nuclei image with its dense ground truth."""
    sample = next(s for s in dsb_fluo if s.image.shape[:2] == (256, 256))
    return sample.image, sample.mask


@pytest.fixture(scope="session")
def wide_image():
    """A non-square 16-bit image (rows != cols), to catch (x, y) / (row, col) mix-ups."""
    rng = np.random.default_rng(3)
    image = rng.integers(0, 400, size=(160, 320)).astype(np.uint16)
    image[40:80, 200:260] += 3000
    return image


@pytest.fixture(scope="session")
def server():
    """Base URL of a local HTTP server (127.0.0.1) serving made-up weights and bad answers."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
