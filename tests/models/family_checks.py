"""Checks shared by the model-family tests: a real train -> predict -> evaluate CLI round trip.

Imported by ``test_stardist.py`` and ``test_elephant.py`` (``from family_checks import ...``, as
``tests/api/api_helpers.py``), so every family is trained and judged the same way.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import tifffile
import torch

from cellsparse_app.data.labels import select_sparse

#: Training steps of the CLI round trip (short: the whole ``tests/models`` must stay fast).
TRAIN_STEPS = 120


def cli(*args: str) -> subprocess.CompletedProcess:
    """``cellsparse ARGS`` in a fresh interpreter (as a user runs it)."""
    return subprocess.run(
        [sys.executable, "-m", "cellsparse_app.cli", *args], capture_output=True, text=True,
        timeout=600,
    )


def cli_round_trip(samples, root: Path, family: str, steps: int = TRAIN_STEPS) -> dict:
    """``cellsparse train --model FAMILY`` on 4 images (a quarter of the objects annotated +
    background), ``predict`` on 6 other images and ``evaluate``.

    Returns ``{"model", "preds", "truths", "scores"}`` (paths and the evaluation JSON).
    """
    from bench.conditions import split_samples

    train_set, test_set = split_samples(samples, 4, 6)
    rng = np.random.default_rng(0)
    images, labels, tests, truths = [], [], [], []
    for i, s in enumerate(train_set):
        ids = np.arange(1, s.mask.max() + 1)
        picked = rng.choice(ids, max(1, len(ids) // 4), replace=False)
        tifffile.imwrite(root / f"img{i}.tif", s.image)
        tifffile.imwrite(root / f"lab{i}.tif", select_sparse(s.mask, picked).astype(np.int32))
        images.append(str(root / f"img{i}.tif"))
        labels.append(str(root / f"lab{i}.tif"))
    for i, s in enumerate(test_set):
        tifffile.imwrite(root / f"test{i}.tif", s.image)
        tifffile.imwrite(root / f"truth{i}.tif", s.mask.astype(np.uint16))
        tests.append(str(root / f"test{i}.tif"))
        truths.append(str(root / f"truth{i}.tif"))
    model = root / "model"
    train = cli("train", *images, "--labels", *labels, "--out", str(model), "--model", family,
                "--steps", str(steps), "--device", "cpu", "--seed", "0")
    assert train.returncode == 0, train.stderr
    predict = cli("predict", "--model", str(model), *tests, "--out", str(root / "pred"))
    assert predict.returncode == 0, predict.stderr
    preds = [str(root / "pred" / f"test{i}.tif") for i in range(len(tests))]
    evaluate = cli("evaluate", "--truth", *truths, "--pred", *preds)
    assert evaluate.returncode == 0, evaluate.stderr
    return {"model": model, "preds": preds, "truths": truths, "scores": json.loads(evaluate.stdout)}


def check_saved_model(run: dict, family: str, config_cls, n_outputs: int,
                      steps: int = TRAIN_STEPS) -> None:
    """The CLI's model folder holds ``family`` with default config (apart from the prediction
    settings training calibrates and the measured object scale), loads, and predicts in shape."""
    from cellsparse_app.train import TrainedModel

    config = json.loads((run["model"] / "config.json").read_text())
    assert config["family"] == family
    saved = config_cls.from_dict(config["model"])
    from cellsparse_app.models import get_family

    calibrated = get_family(family).calibrated_fields + ("diameter", "scale")
    assert saved.diameter > 0 and saved.scale > 0
    assert saved.replace(**{k: getattr(config_cls(), k) for k in calibrated}) == config_cls()
    assert config["meta"]["steps_done"] == steps
    model = TrainedModel.load(run["model"])
    assert model.network(torch.zeros(1, 1, 64, 64)).shape == (1, n_outputs, 64, 64)
    for pred, truth in zip(run["preds"], run["truths"]):
        assert tifffile.imread(pred).shape == tifffile.imread(truth).shape
