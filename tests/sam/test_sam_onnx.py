"""The ONNX Runtime image encoder: exported once, checked against PyTorch, cached; engine choice."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from cellsparse_app.sam import SamConfig
from cellsparse_app.sam import onnx_encoder as onnx_mod
from cellsparse_app.sam.engine import resolve_engine
from cellsparse_app.sam.registry import get_backend

needs_ort = pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None,
                               reason="onnxruntime is not installed")


@needs_ort
def test_onnx_encoder_matches_pytorch_and_is_cached(vit_t, tmp_path, monkeypatch):
    import torch

    encoder = vit_t.engine.model.image_encoder
    onnx = onnx_mod.load_onnx_encoder(encoder, tmp_path, "vit_t", precision="fp32", threads=2)
    report = json.loads(onnx.path.with_suffix(".json").read_text())
    assert report["ok"] and report["rel_error"] < onnx_mod.MAX_REL_ERROR_FP32
    # Another input than the export check: a real image through SAM's preprocessing.
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.standard_normal((1, 3, 1024, 1024)).astype(np.float32))
    with torch.inference_mode():
        reference = encoder(x).numpy()
    got = onnx(x).numpy()
    assert got.shape == reference.shape == (1, 256, 64, 64)
    assert onnx_mod.compare_outputs(reference, got)["rel_error"] < 1e-3
    # Second load: no new export (cached file keyed by the weights' fingerprint).
    monkeypatch.setattr(onnx_mod, "_export", lambda *a: pytest.fail("exported twice"))
    again = onnx_mod.load_onnx_encoder(encoder, tmp_path, "vit_t", precision="fp32")
    assert again.path == onnx.path
    assert onnx_mod.fingerprint_module(encoder) in onnx.path.name
    # int8: quantised from the cached fp32 export, approximate but close.
    int8 = onnx_mod.load_onnx_encoder(encoder, tmp_path, "vit_t", precision="int8", threads=2)
    assert int8.path.name.endswith("-int8.onnx")
    assert onnx_mod.compare_outputs(reference, int8(x).numpy())["cosine"] > 0.98


def test_disagreeing_export_is_deleted_and_refused(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    encoder = torch.nn.Conv2d(3, 1, 1)  # stands in for the encoder: the check is faked below
    bad = {"rel_error": 0.5, "cosine": 0.2, "max_abs": 9.0}
    monkeypatch.setattr(onnx_mod, "_export", lambda enc, path: path.write_bytes(b"onnx"))
    monkeypatch.setattr(onnx_mod, "OnnxEncoder", _FakeEncoder)
    monkeypatch.setattr(onnx_mod, "compare_outputs", lambda ref, out: dict(bad))
    with pytest.raises(RuntimeError, match="disagrees with PyTorch"):
        onnx_mod.load_onnx_encoder(encoder, tmp_path, "vit_t")
    assert not list(tmp_path.glob("*-fp32.onnx"))


class _FakeEncoder:
    def __init__(self, path, threads=None):
        self.path = path

    def run(self, x):
        return np.zeros((1, 256, 64, 64), np.float32)


def test_engine_choice(monkeypatch):
    vit_t, vit_b = get_backend("vit_t"), get_backend("vit_b")
    has_ort = importlib.util.find_spec("onnxruntime") is not None
    assert resolve_engine(SamConfig(), vit_t, "cpu") == ("onnx" if has_ort else "torch", "fp32")
    assert resolve_engine(SamConfig(model_type="vit_b"), vit_b, "cpu") == ("torch", "fp32")
    assert resolve_engine(SamConfig(precision="bf16"), vit_t, "cpu") == ("torch", "bf16")
    assert resolve_engine(SamConfig(encoder_engine="torch"), vit_t, "cpu") == ("torch", "fp32")
    if has_ort:
        assert resolve_engine(SamConfig(precision="int8"), vit_b, "cpu") == ("onnx", "int8")
    import torch

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_engine(SamConfig(), vit_t, "cuda") == ("torch", "bf16")
    with pytest.raises(ValueError, match="runs on the CPU"):
        resolve_engine(SamConfig(encoder_engine="onnx"), vit_t, "cuda")
    with pytest.raises(ValueError, match="fp16 autocast is not supported on CPU"):
        resolve_engine(SamConfig(precision="fp16", encoder_engine="torch"), vit_t, "cpu")
