"""Fixtures for handler-level UI tests: an app context with the offline SAM fallback and
per-test private session folders; the bundled example loaded through the real handler."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from cellsparse_app.ui import handlers_images as img
from cellsparse_app.ui.context import ASSETS_DIR, AppContext, AppSettings


@pytest.fixture
def ctx(tmp_path):
    return AppContext(AppSettings(session_root=tmp_path / "sessions", sam_model="fallback"))


@pytest.fixture
def ws(ctx):
    workspace, _ = img.start_session(ctx)
    yield workspace
    workspace.close()


@pytest.fixture(scope="session")
def example_truth():
    return tifffile.imread(ASSETS_DIR / "example_nuclei_labels.tif").astype(np.int32)


@pytest.fixture
def example_ws(ctx, ws):
    img.load_example(ctx)(ws)
    return ws


@pytest.fixture(scope="session")
def inner_point():
    """``inner_point(truth, obj)``: the pixel of object ``obj`` farthest from its border."""
    from scipy import ndimage as ndi

    def point(truth: np.ndarray, obj: int) -> tuple[int, int]:
        inside = ndi.distance_transform_edt(truth == obj)
        r, c = np.unravel_index(np.argmax(inside), inside.shape)
        return int(r), int(c)

    return point


def select(x: int, y: int):
    """A Gradio click event at pixel (x, y), as the browser sends it."""
    import gradio as gr

    return gr.SelectData(None, {"index": [x, y], "value": None})


@pytest.fixture(scope="session")
def click_at():
    return select


def _pixels(image):
    """A canvas output (PNG path from the handlers, or an array) as a ``uint8`` array."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        return image
    with Image.open(image) as im:
        return np.asarray(im.convert("RGB"))


@pytest.fixture(scope="session")
def pixels():
    return _pixels
