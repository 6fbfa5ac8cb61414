"""``POST /sam/automask/``'s ``output_type`` reaches the generator: each of samapi's five values
answers its own objects (the fallback engine's classical masks swapped for three nested
candidates, so that the rule of each mode shows)."""

from __future__ import annotations

import numpy as np
import pytest
from api_helpers import b64png

from cellsparse_app.data.polygons import polygon_to_mask

SIDE = 64
rr, cc = np.mgrid[:SIDE, :SIDE]
DISK = (rr - 25.5) ** 2 + (cc - 25.5) ** 2 <= 15.0**2
SQUARE = np.zeros((SIDE, SIDE), bool)
SQUARE[10:42, 10:42] = True
BIG = np.zeros((SIDE, SIDE), bool)
BIG[9:43, 9:43] = True


@pytest.fixture
def client(tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from cellsparse_app.api import ServerSettings, create_app
    from cellsparse_app.sam import predictor

    def nested(embedding, cfg):  # two "prompts", each with the three nested masks
        masks = np.stack([DISK, SQUARE, BIG] * 2)
        return masks, np.array([0.90, 0.97, 0.93] * 2, dtype=np.float32)

    monkeypatch.setattr(predictor, "automatic_masks", nested)
    settings = ServerSettings(data_dir=tmp_path / "data", mount_ui=False)
    with TestClient(create_app(settings)) as c:
        yield c


def _areas(client, output_type: str) -> list[int]:
    body = {"type": "fallback", "b64img": b64png(np.zeros((SIDE, SIDE), np.uint8) + 50),
            "output_type": output_type}
    r = client.post("/sam/automask/", json=body)
    assert r.status_code == 200, r.text[:300]
    return [int(polygon_to_mask(np.asarray(f["geometry"]["coordinates"][0]), (SIDE, SIDE)).sum())
            for f in r.json()]


def test_each_output_type_answers_its_own_objects(client):
    disk, square, big = (int(m.sum()) for m in (DISK, SQUARE, BIG))
    got = {t: _areas(client, t) for t in ("Single mask", "Multi-mask (smallest)",
                                          "Multi-mask (largest)", "Multi-mask (best quality)",
                                          "Multi-mask (all)")}
    tol = 0.08  # outline vs pixel area

    def close(a, b):
        return abs(a - b) <= tol * b

    assert len(got["Single mask"]) == 1 and close(got["Single mask"][0], disk)
    smallest = got["Multi-mask (smallest)"]
    assert len(smallest) == 1 and close(smallest[0], disk)
    assert len(got["Multi-mask (largest)"]) == 1 and close(got["Multi-mask (largest)"][0], big)
    best = got["Multi-mask (best quality)"]
    assert len(best) == 1 and close(best[0], square)
    every = got["Multi-mask (all)"]  # overlapping masks, each whole, largest first
    assert len(every) == 3 and all(close(a, e) for a, e in zip(every, (big, square, disk)))


def test_unknown_output_type_is_refused_by_name(client):
    body = {"type": "fallback", "b64img": b64png(np.zeros((8, 8), np.uint8)),
            "output_type": "Multi-mask (biggest)"}
    r = client.post("/sam/automask/", json=body)
    assert r.status_code in (400, 422) and "Multi-mask (biggest)" in r.text
