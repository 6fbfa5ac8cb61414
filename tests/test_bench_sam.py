"""The SAM latency benchmark's harness (tiny sizes; timings themselves are not asserted)."""

from __future__ import annotations

import importlib.util

import pytest

from bench import sam as bench_sam


def test_encoder_paths_parse_with_optional_side():
    assert bench_sam._parse_path("onnx:fp32") == ("onnx", "fp32", 1024)
    assert bench_sam._parse_path(" onnx:int8:512") == ("onnx", "int8", 512)
    with pytest.raises(SystemExit, match="engine:precision"):
        bench_sam._parse_path("onnx:fp32:half")


@pytest.mark.skipif(importlib.util.find_spec("mobile_sam") is None,
                    reason="mobilesam-mirror is not installed")
def test_latency_rows_cover_the_512_path_of_vit_t():
    rows = bench_sam.latency_rows("vit_t", 128, repeats=1, clicks=1,
                                  paths=[("torch", "fp32", 1024), ("torch", "fp32", 512)],
                                  decoder_threads=1)
    assert [r["encoder"] for r in rows] == ["torch fp32", "torch fp32 @512px"]
    assert all("error" not in r and r["embed_s"] > 0 and r["click_ms"] > 0 for r in rows)
    assert "rel_error" in rows[0] and "rel_error" not in rows[1]  # another grid: not compared
