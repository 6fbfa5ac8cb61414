"""A workspace's rounds without a front end (no gradio): a few real training steps on a small
synthetic image annotated with the tools, then predict, compare, export and the model zip; a
stop before the start trains nothing; refusals name the problem."""

from __future__ import annotations

import numpy as np
import pytest
from session_images import CENTRES, synthetic_image

from cellsparse_app.session.results import EXPORT_SUFFIXES, NothingExported, Skipped
from cellsparse_app.session.rounds import Rounds
from cellsparse_app.session.workspace import Workspace
from cellsparse_app.train import TrainConfig

#: A few fixed steps on tiny patches: seconds on 2 CPU cores (the model is not meant to be good).
CFG = TrainConfig(family="cellpose", steps=3, batch_size=2, patch_size=32, warmup_steps=1,
                  seed=0, device="cpu")


def _drain(run):
    items = []
    try:
        while True:
            items.append(next(run))
    except StopIteration as finished:
        return items, finished.value


def _annotated(tmp_path) -> Workspace:
    ws = Workspace.create(tmp_path)
    ws.select_image(ws.project.add_image(synthetic_image(), "disks.png"))
    for r, c in CENTRES:
        ws.tools.outline([(r - 7, c - 7), (r - 7, c + 7), (r + 7, c + 7), (r + 7, c - 7)])
        ws.tools.accept_foreground()  # each with a Background ring (the default margin)
    return ws


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    ws = _annotated(tmp_path_factory.mktemp("session"))
    ws.rounds.arm_training()
    items, record = _drain(ws.rounds.train(CFG))
    yield ws, items, record
    ws.close()


def test_a_round_trains_the_fixed_steps_and_is_saved(trained):
    ws, items, record = trained
    assert isinstance(ws.rounds, Rounds) and ws.rounds.project is ws.project
    assert record is not None and record.index == 1 and record.steps == CFG.steps
    assert not record.cancelled and record.n_objects == 3 and record.background_px > 0
    assert [p.step for p in items if hasattr(p, "step")][-1] == CFG.steps
    assert ws.project.active_round == 1 and [r.index for r in ws.project.rounds] == [1]
    # Exact steps: no sparse step cap; the 14-px squares are below the canonical diameter.
    assert record.step_cap is None and record.scale == 1.0
    assert record.diameter is not None and 10 < record.diameter < 20
    reopened = Workspace.reopen(ws.directory)  # the round's new fields survive project.json
    assert reopened.project.rounds[0].diameter == record.diameter


def test_predict_compare_and_export(trained, tmp_path):
    ws, _, _ = trained
    predictions, comparison = ws.rounds.predict("current")
    (p,) = predictions
    labels = ws.project.prediction(ws.current)
    assert labels.shape == (96, 96) and np.issubdtype(labels.dtype, np.integer)
    assert p.n_objects == len(np.unique(labels[labels > 0])) and p.round == 1
    assert p.vs_annotations is not None and p.vs_truth is None  # no ground truth here
    assert comparison.errors_against == "annotations" and comparison.round == 1
    assert comparison.prediction.shape == (96, 96, 3) and comparison.errors is not None
    assert comparison.previous_round is None and comparison.changes is None

    result = ws.rounds.export("annotations", "current", ["tiff", "csv", "sparse"], tmp_path)
    assert sorted(f.name for f in result.files) == [
        "disks_annotations.tif", "disks_annotations_objects.csv", "disks_annotations_sparse.tif"]
    assert all(f.is_file() and f.stat().st_size > 0 for f in result.files)
    assert result.skipped == []
    result = ws.rounds.export("prediction", "all", ["sparse", "geojson"], tmp_path / "p")
    assert [f.name for f in result.files] == ["disks_prediction.geojson"]
    assert result.skipped == [Skipped(None, "sparse", result.skipped[0].reason)]
    with pytest.raises(NothingExported, match="format 'sparse'") as refused:
        ws.rounds.export("prediction", "current", ["sparse"], tmp_path / "q")
    assert [s.format for s in refused.value.skipped] == ["sparse"]
    with pytest.raises(ValueError, match="'jpeg'"):
        ws.rounds.export("prediction", "current", ["jpeg"], tmp_path)
    assert set(EXPORT_SUFFIXES) >= {"tiff", "geojson", "imagej", "coco", "csv", "sparse"}
    model_zip = ws.rounds.export_model(tmp_path / "model")
    assert model_zip.name == "cellsparse_cellpose_round1.zip" and model_zip.stat().st_size > 0


def test_a_stop_before_the_start_trains_nothing(tmp_path):
    ws = _annotated(tmp_path)
    ws.rounds.arm_training()
    ws.rounds.request_stop()
    items, record = _drain(ws.rounds.train(CFG))
    assert record is None and ws.project.rounds == []
    assert not [i for i in items if getattr(i, "step", 0) >= 1]  # not one step taken
    ws.close()


def test_training_refusals_name_the_problem(tmp_path):
    ws = Workspace.create(tmp_path)
    ws.select_image(ws.project.add_image(synthetic_image(), "disks.png"))
    with pytest.raises(ValueError, match="nothing to train on yet"):
        next(ws.rounds.train(CFG))
    strip = np.zeros((96, 96), bool)
    strip[:, :6] = True
    ws.tools.paint(strip, "background")
    with pytest.raises(ValueError, match="no annotated cells"):  # train.inputs.check_inputs
        next(ws.rounds.train(CFG))
    with pytest.raises(RuntimeError, match="click Predict first"):
        ws.rounds.compare()
    ws.close()
