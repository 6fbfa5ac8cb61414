"""The ``cellsparse`` command line: train -> predict -> evaluate on real image files."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from PIL import Image

from cellsparse_app.data.labels import select_sparse


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cellsparse_app.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def files(dsb_fluo, tmp_path_factory):
    """Two training images (PNG and TIFF) with sparse labels, two test images with truth."""
    root = tmp_path_factory.mktemp("cli")
    train_s, test_s = [dsb_fluo[0], dsb_fluo[20]], [dsb_fluo[2], dsb_fluo[10]]
    paths = {"images": [], "labels": [], "test": [], "truth": []}
    for i, s in enumerate(train_s):
        image = root / (f"train{i}.png" if i == 0 else f"train{i}.tif")
        if i == 0:
            Image.fromarray(s.image).save(image)
        else:
            tifffile.imwrite(image, s.image)
        ids = np.arange(1, s.mask.max() + 1)[::2]  # every other cell + background
        labels = root / f"train{i}_labels.tif"
        tifffile.imwrite(labels, select_sparse(s.mask, ids).astype(np.int32))
        paths["images"].append(str(image))
        paths["labels"].append(str(labels))
    for i, s in enumerate(test_s):
        image, truth = root / f"test{i}.png", root / f"test{i}_truth.tif"
        Image.fromarray(s.image).save(image)
        tifffile.imwrite(truth, s.mask.astype(np.uint16))
        paths["test"].append(str(image))
        paths["truth"].append(str(truth))
    paths["root"] = root
    return paths


def test_train_predict_evaluate_round_trip(files):
    from cellsparse_app.data.images import read_labels
    from cellsparse_app.data.metrics import evaluate_many

    model = files["root"] / "model"
    result = _cli(
        "train", *files["images"], "--labels", *files["labels"], "--out", str(model),
        "--max-seconds", "20", "--device", "cpu", "--seed", "1",
    )
    assert result.returncode == 0, result.stderr
    assert "step " in result.stdout and "model written to" in result.stdout
    assert "(calibrated: flow_threshold " in result.stdout
    assert (model / "config.json").is_file() and (model / "weights.pt").is_file()
    meta = json.loads((model / "config.json").read_text())["meta"]
    assert meta["train"]["seed"] == 1 and meta["train"]["max_seconds"] == 20
    # The budget holds up to one step (slow on a loaded CI machine); unbounded would be minutes.
    assert meta["elapsed"] <= 20 + 30 and meta["steps"] >= 1

    out = files["root"] / "pred"
    result = _cli("predict", "--model", str(model), *files["test"], "--out", str(out))
    assert result.returncode == 0, result.stderr
    preds = [out / "test0.tif", out / "test1.tif"]
    for path, truth in zip(preds, files["truth"]):
        labels = tifffile.imread(path)
        assert labels.dtype in (np.uint16, np.uint32)
        assert labels.shape == tifffile.imread(truth).shape

    result = _cli("evaluate", "--truth", *files["truth"], "--pred", *map(str, preds))
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    expected = evaluate_many(
        [read_labels(p) for p in files["truth"]], [read_labels(p) for p in preds]
    )
    for key in ("ap50", "ap75", "ap90"):
        assert 0.0 <= printed[key] <= 1.0
        assert printed[key] == pytest.approx(expected[key])
    assert printed["n_true"] == sum(int(tifffile.imread(t).max()) for t in files["truth"])
    assert printed["n_pred"] == sum(int(tifffile.imread(p).max()) for p in preds)

    # A very strict flow quality check (0.01) keeps no more masks than the default (0.4); that it
    # removes some is checked in tests/ui/test_ui_train_predict.py with a longer-trained model.
    strict = files["root"] / "strict"
    result = _cli("predict", "--model", str(model), *files["test"], "--out", str(strict),
                  "--flow-threshold", "0.01")
    assert result.returncode == 0, result.stderr
    kept = sum(int(tifffile.imread(strict / p.name).max()) for p in preds)
    assert kept <= printed["n_pred"]

    # Continue training the saved model (family taken from it), a few fixed steps.
    again = files["root"] / "model2"
    result = _cli(
        "train", *files["images"], "--labels", *files["labels"], "--out", str(again),
        "--init", str(model), "--steps", "3", "--device", "cpu",
    )
    assert result.returncode == 0, result.stderr
    meta2 = json.loads((again / "config.json").read_text())["meta"]
    assert meta2["steps_done"] == meta["steps_done"] + 3 and meta2["rounds"] == 2


def test_diameter_and_stain_options(files):
    """--diameter sets the training scale (cells resized to 45 px) and predicts other
    magnifications; --stain auto leaves fluorescence alone; --init keeps the scale."""
    model = files["root"] / "model_d"
    result = _cli(
        "train", *files["images"], "--labels", *files["labels"], "--out", str(model),
        "--steps", "2", "--device", "cpu", "--diameter", "90", "--stain", "auto",
    )
    assert result.returncode == 0, result.stderr
    assert "stain: dark" in result.stdout and "scale 0.5)" in result.stdout
    saved = json.loads((model / "config.json").read_text())
    assert saved["model"]["diameter"] == 90 and saved["model"]["scale"] == 0.5
    assert saved["image"]["stain"] is None
    out = files["root"] / "pred_d"
    result = _cli("predict", "--model", str(model), files["test"][0], "--out", str(out),
                  "--diameter", "30")
    assert result.returncode == 0, result.stderr
    assert tifffile.imread(out / "test0.tif").shape == tifffile.imread(files["truth"][0]).shape
    again = files["root"] / "model_d2"
    result = _cli("train", *files["images"], "--labels", *files["labels"], "--out", str(again),
                  "--init", str(model), "--steps", "1", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert json.loads((again / "config.json").read_text())["model"]["scale"] == 0.5
    result = _cli("predict", "--model", str(model), files["test"][0], "--out", str(out),
                  "--diameter", "-4")
    assert result.returncode == 2 and "-4" in result.stderr


def test_cli_errors_are_reported_not_raised(files):
    result = _cli(
        "train", *files["images"], "--labels", files["labels"][0], "--out",
        str(files["root"] / "bad"), "--steps", "1",
    )
    assert result.returncode == 2
    assert "2 image(s) but 1 label file(s)" in result.stderr
    unlabelled = files["root"] / "empty_labels.tif"
    tifffile.imwrite(unlabelled, np.full((256, 256), -1, np.int32))
    result = _cli(
        "train", files["images"][0], "--labels", str(unlabelled), "--out",
        str(files["root"] / "bad"), "--steps", "1",
    )
    assert result.returncode == 2 and "no annotations" in result.stderr
    result = _cli("predict", "--model", str(files["root"] / "missing"), *files["test"],
                  "--out", str(files["root"] / "p"))
    assert result.returncode == 2 and "does not exist" in result.stderr
