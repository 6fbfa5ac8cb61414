"""``cellsparse annotate`` end to end (subprocess, offline: the fallback answers), and imports."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import tifffile

ROOT = Path(__file__).resolve().parents[2]


def _run(args, tmp_path, **env):
    environ = {**os.environ, "CELLSPARSE_CACHE_DIR": str(tmp_path / "cache"), **env}
    return subprocess.run([sys.executable, "-m", "cellsparse_app.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, env=environ, timeout=300)


def test_annotate_offline_writes_labels_and_says_what_to_download(tmp_path, nuclei_image):
    image, truth = nuclei_image
    tifffile.imwrite(tmp_path / "nuclei.tif", image)
    done = _run(["annotate", str(tmp_path / "nuclei.tif"), "--out", str(tmp_path / "out"),
                 "--offline", "--min-area", "10"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "fallback" in done.stdout and "mobile_sam.pt" in done.stdout
    labels = tifffile.imread(tmp_path / "out" / "nuclei.tif")
    assert labels.shape == image.shape
    assert 0.5 * truth.max() <= labels.max() <= 1.5 * truth.max()


def test_annotate_with_a_missing_checkpoint_fails_clearly(tmp_path, nuclei_image):
    tifffile.imwrite(tmp_path / "nuclei.tif", nuclei_image[0])
    done = _run(["annotate", str(tmp_path / "nuclei.tif"), "--out", str(tmp_path / "out"),
                 "--sam-checkpoint", str(tmp_path / "missing.pth")], tmp_path)
    assert done.returncode == 2
    assert "missing.pth does not exist" in done.stderr
    assert not (tmp_path / "out").exists()


def test_importing_the_engine_loads_no_framework_and_no_torch():
    code = ("import sys, cellsparse_app.sam; "
            "bad = [m for m in ('torch', 'gradio', 'fastapi', 'onnxruntime') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_annotate_refuses_a_bad_encoder_side_before_reading_images(tmp_path):
    done = _run(["annotate", str(tmp_path / "absent.tif"), "--out", str(tmp_path / "out"),
                 "--sam-encoder-side", "500"], tmp_path)
    assert done.returncode == 2
    assert "encoder_side must be a multiple of 64" in done.stderr and "500" in done.stderr
    assert not (tmp_path / "out").exists()
