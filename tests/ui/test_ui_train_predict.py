"""Steps 3-6: train (progress, loss curve, stop, continue, rollback), predict and compare,
correct, export (files readable by tifffile/roifile/json), model zip, project save/load.

One short real training on the bundled example (5 of its 23 nuclei + background annotated from
its ground truth) is shared by the tests of this module, which run in file order (the stop test
adds round 2, which the save/load test expects).
"""

from __future__ import annotations

import csv
import json
import zipfile

import gradio as gr
import numpy as np
import pandas as pd
import pytest
import roifile
import tifffile

from cellsparse_app.data.labels import select_sparse
from cellsparse_app.ui import handlers_images as img
from cellsparse_app.ui import handlers_results as res
from cellsparse_app.ui import handlers_train as trn
from cellsparse_app.ui.context import AppContext, AppSettings

STEPS = 60
#: Small patches and batches and a short warm-up: a usable model in ~60 steps on 2 CPU cores.
FAST = {"batch_size": 4, "patch_size": 64, "warmup_steps": 10}
PROGRESS, LOSS, ROUNDS, ROUND_DD = range(4)


def _annotate_from_truth(ws, truth, ids=(1, 5, 9, 14, 20)):
    editor = ws.project.editor(ws.current)
    editor.replace(select_sparse(truth, ids, background=True))
    ws.project.edited(ws.current)


def _run(gen):
    outputs = list(gen)
    return outputs, outputs[-1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, example_truth):
    """A workspace with the annotated example and one complete training round."""
    ctx = AppContext(AppSettings(session_root=tmp_path_factory.mktemp("sessions"),
                                 sam_model="fallback"))
    ws, _ = img.start_session(ctx)
    img.load_example(ctx)(ws)
    _annotate_from_truth(ws, example_truth)
    outputs, last = _run(trn.train(ws, "cellpose", trn.SCRATCH, 0, STEPS, **FAST))
    yield ws, outputs, last
    ws.close()


def test_training_reports_progress_loss_and_round(trained):
    ws, outputs, last = trained
    assert "Done: round 1" in last[PROGRESS] and 'data-state="done"' in last[PROGRESS]
    curve = last[LOSS]
    assert isinstance(curve, pd.DataFrame) and curve["step"].iloc[-1] == STEPS
    assert np.isfinite(curve["loss"]).all()
    assert curve["loss"].iloc[-5:].mean() < curve["loss"].iloc[:5].mean()  # it learns
    assert len(last[ROUNDS]) == 1 and last[ROUNDS][0][0] == 1 and "active" in last[ROUNDS][0][-1]
    assert last[ROUND_DD]["value"] == 1
    assert (ws.project.model_dir() / "config.json").is_file()


def test_predict_compare_and_correct(trained, example_truth, pixels):
    ws, _, _ = trained
    slider, text, legend, compare = res.predict(ws, "current", None, 15, res.PREDICTION,
                                                progress=lambda *a, **k: None)
    n = int(text.split("**")[3])
    assert n >= 5 and "AP50 vs ground truth" in text and "AP50 on your annotations" in text
    assert slider[0].shape == slider[1].shape == (360, 360, 3)
    pred = ws.project.prediction(ws.current)
    assert len(np.unique(pred)) - 1 == n
    ap = ws.project.round().metrics[ws.current]["truth"]["ap"][0]
    assert 0.0 < ap <= 1.0
    # The flow quality check only removes masks: off (0) keeps at least as many, a very strict
    # one (0.01: almost no flow is that exact after minutes of training) fewer.
    counts = {}
    for qc in (0.0, 0.01):
        _, text_qc, _, _ = res.predict(ws, "current", None, 15, res.PREDICTION, qc,
                                       progress=lambda *a, **k: None)
        counts[qc] = int(text_qc.split("**")[3])
    assert counts[0.0] >= n > counts[0.01]
    # Empty: the model's own threshold again (calibrated in training; >= Cellpose's 0.4).
    saved = json.loads((ws.project.model_dir() / "config.json").read_text())
    assert 0.4 <= saved["model"]["flow_threshold"] <= 1.0
    slider, text, legend, compare = res.predict(ws, "current", None, 15, res.PREDICTION, None,
                                                progress=lambda *a, **k: None)
    assert int(text.split("**")[3]) == n
    value, legend, compare = res.show_comparison(ws, res.ERRORS)
    assert "Errors vs ground truth" in compare and "False positive" in legend
    assert not np.array_equal(value[1], slider[1])
    value, legend, compare = res.show_comparison(ws, res.CHANGES)
    assert "No earlier round" in compare
    tabs, mode, show, canvas, *_ = res.correct(ws)
    canvas = pixels(canvas)
    assert tabs["selected"] == img.ANNOTATE_TAB and mode == "select" and show is True
    cyan = (canvas[..., 0] < 60) & (canvas[..., 1] > 200) & (canvas[..., 2] > 200)
    assert cyan.sum() > 50  # predicted outlines drawn on unannotated nuclei


def test_exports_are_readable_and_agree(trained, tmp_path):
    ws, _, _ = trained
    n = len(np.unique(ws.project.prediction(ws.current))) - 1
    files = res.export(ws, "prediction", "current", ["tiff", "geojson", "imagej", "coco", "csv"])
    by_end = {f.rsplit("_", 1)[-1]: f for f in files}
    labels = tifffile.imread(by_end["prediction.tif"])
    assert len(np.unique(labels[labels > 0])) == n
    assert len(json.load(open(by_end["prediction.geojson"]))["features"]) == n
    assert len(roifile.roiread(by_end["rois.zip"])) == n
    assert len(json.load(open(by_end["coco.json"]))["annotations"]) == n
    assert len(list(csv.DictReader(open(by_end["objects.csv"])))) == n
    sparse = res.export(ws, "annotations", "current", ["sparse"])
    ann = tifffile.imread(sparse[0])
    assert ann.dtype == np.int32 and ann.min() == -1 and ann.max() == 5
    # Every format ticked: all that apply are written, the sparse TIFF is skipped with why.
    from cellsparse_app.session.results import EXPORT_SUFFIXES

    with pytest.warns(UserWarning, match="Skipped: Sparse annotation TIFF.*only for annotations"):
        every = res.export(ws, "prediction", "current", list(EXPORT_SUFFIXES))
    assert len(every) == len(EXPORT_SUFFIXES) - 1
    with pytest.raises(gr.Error, match="nothing exported: Sparse annotation TIFF"):
        res.export(ws, "prediction", "current", ["sparse"])
    with pytest.raises(gr.Error, match="choose export formats"):
        res.export(ws, "prediction", "current", [])


def test_model_zip_loads_and_predicts_the_same(trained, tmp_path):
    from cellsparse_app.predict import predict_instances
    from cellsparse_app.storage.model_zip import unzip_model
    from cellsparse_app.train import TrainedModel

    ws, _, _ = trained
    path = res.export_model(ws)
    with zipfile.ZipFile(path) as zf:
        assert any(name.endswith("config.json") for name in zf.namelist())
    model_dir = unzip_model(open(path, "rb").read(), tmp_path / "model")
    model = TrainedModel.load(model_dir)
    again = predict_instances(model, ws.project.image(ws.current))
    np.testing.assert_array_equal(again > 0, ws.project.prediction(ws.current) > 0)

    # The untouched Predict tab ("" thresholds, min size 15) and `cellsparse predict` on the
    # exported model agree (they once gave 38 objects vs 0: the UI skipped the flow check).
    from cellsparse_app.cli import main as cli_main
    from cellsparse_app.ui.context import ASSETS_DIR

    _, text, _, _ = res.predict(ws, "current", "", 15, res.PREDICTION, "",
                                progress=lambda *a, **k: None)
    in_app = ws.project.prediction(ws.current)
    assert cli_main(["predict", "--model", str(model_dir), str(ASSETS_DIR / "example_nuclei.png"),
                     "--out", str(tmp_path / "cli")]) == 0
    from_cli = tifffile.imread(tmp_path / "cli" / "example_nuclei.tif")
    assert len(np.unique(from_cli)) == len(np.unique(in_app)) == int(text.split("**")[3]) + 1
    assert np.mean((from_cli > 0) == (in_app > 0)) > 0.999  # same masks, up to rounding


def test_stop_keeps_the_model_and_continue_and_rollback(trained):
    ws, _, _ = trained
    ws.rounds.arm_training()
    run = trn.train(ws, "cellpose", trn.CONTINUE, 120, None, **FAST)
    outputs = [next(run), next(run)]  # "preparing data", then the first report (step 10)
    trn.stop(ws)  # Stop pressed while it runs: it ends after its current step
    outputs += list(run)
    last = outputs[-1]
    assert 'data-state="stopped"' in last[PROGRESS] and "saved as round 2" in last[PROGRESS]
    rec = ws.project.round(2)
    assert rec.cancelled and rec.parent == 1 and 10 <= rec.steps < 30
    rows = last[ROUNDS]
    assert [r[0] for r in rows] == [1, 2] and rows[1][2] == 1 and "stopped early" in rows[1][-1]
    # Roll back to round 1: model and annotations of round 1 are active again.
    ws.project.editor(ws.current).clear()
    ws.project.edited(ws.current)
    rows, dd, canvas, status, summary, cells = trn.rollback(ws, 1)
    assert ws.project.active_round == 1 and "Rolled back to round 1" in status
    assert summary.startswith("**5** Foreground cells") and len(cells) == 5


def test_closing_the_page_mid_run_still_saves_the_model(trained):
    """Gradio closes a generator handler when its page goes away: the run stops cleanly and
    its model becomes a round (nothing lost)."""
    ws, _, _ = trained
    before = [r.index for r in ws.project.rounds]
    ws.rounds.arm_training()
    run = trn.train(ws, "cellpose", trn.SCRATCH, 120, None, **FAST)
    next(run), next(run)  # preparing, first progress report
    run.close()
    new = [r for r in ws.project.rounds if r.index not in before]
    assert len(new) == 1 and new[0].cancelled and new[0].steps >= 1
    assert (ws.project.model_dir(new[0].index) / "config.json").is_file()
    trn.rollback(ws, 1)


def test_train_errors_are_readable(ws, ctx):
    img.load_example(ctx)(ws)
    with pytest.raises(gr.Error, match="nothing to train on"):
        list(trn.train(ws, "cellpose", trn.SCRATCH, 10, None))
    ws.project.editor(ws.current).add_foreground(np.pad(np.ones((10, 10), bool), 175))
    ws.project.edited(ws.current)
    with pytest.raises(gr.Error, match="no model to continue from"), \
            pytest.warns(UserWarning, match="No Background marked"):  # gr.Warning outside a page
        list(trn.train(ws, "cellpose", trn.CONTINUE, 10, None))
    with pytest.raises(gr.Error, match="click Predict first|no model trained yet"):
        res.show_comparison(ws, res.PREDICTION)
    with pytest.raises(gr.Error, match="no model trained yet"):
        res.predict(ws, "current", None, 15, res.PREDICTION, progress=lambda *a, **k: None)


def test_stop_before_start_changes_nothing(ws, ctx, example_truth):
    img.load_example(ctx)(ws)
    _annotate_from_truth(ws, example_truth, ids=(1, 2))
    ws.rounds.arm_training()
    trn.stop(ws)  # pressed while the run still waits in the queue
    _, last = _run(trn.train(ws, "cellpose", trn.SCRATCH, 30, None, **FAST))
    assert "Stopped before the first step" in last[PROGRESS]
    assert ws.project.rounds == [] and ws.project.active_round is None


def test_a_run_waits_for_the_training_slot_shows_its_place_and_stop_leaves(ws, ctx,
                                                                          example_truth):
    """Another training of the process (a REST job) holds the slot: the bar says how many are
    ahead, and Stop takes the run out of the queue without training."""
    from cellsparse_app.jobs.slot import process_slot

    img.load_example(ctx)(ws)
    _annotate_from_truth(ws, example_truth, ids=(1, 2))
    with process_slot().enter("REST job (test)") as rest_job:
        assert rest_job.wait(5)
        ws.rounds.arm_training()
        run = trn.train(ws, "cellpose", trn.SCRATCH, 30, None, **FAST)
        updates = [next(run) for _ in range(2)]
        assert "preparing data" in updates[0][PROGRESS]
        assert "waiting for a free training slot: 1 ahead" in updates[1][PROGRESS]
        assert len(process_slot().status()["waiting"]) == 1
        trn.stop(ws)
        last = list(run)[-1]
        assert "Stopped before the first step" in last[PROGRESS]
        assert process_slot().status()["waiting"] == []  # left the queue
    assert ws.project.rounds == [] and ws.project.active_round is None


def test_project_save_and_load_in_another_session(trained, ctx):
    ws, _, _ = trained
    path = res.save_project(ws)
    other, _ = img.start_session(ctx)
    out = res.load_project(other, path)
    assert out[0]["value"] == ws.current and out[-1]["value"] == ws.project.active_round
    np.testing.assert_array_equal(other.project.labels(ws.current), ws.project.labels(ws.current))
    assert [r.index for r in other.project.rounds] == [r.index for r in ws.project.rounds]
    assert len(other.project.rounds) >= 2
    bad = ctx.settings.session_root / "bad.zip"
    bad.write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(gr.Error, match="not a valid zip"):
        res.load_project(other, str(bad))
    assert len(other.project.rounds) >= 2  # nothing lost
    other.close()


def test_train_settings_are_parsed_and_checked():
    cfg = trn.train_config("cellpose", 90, None, 4, 64, 0.001, 10, 3)
    assert (cfg.steps, cfg.max_seconds, cfg.batch_size, cfg.patch_size) == (None, 90.0, 4, 64)
    assert (cfg.learning_rate, cfg.warmup_steps, cfg.seed) == (0.001, 10, 3)
    assert trn.train_config("cellpose", 90, 25).max_seconds is None  # exact steps win
    with pytest.raises(ValueError, match="Patch size must be >= 16"):
        trn.train_config("cellpose", 90, None, 4, 8)
    with pytest.raises(ValueError, match="Exact steps must be a whole number"):
        trn.train_config("cellpose", 90, 2.5)
    with pytest.raises(ValueError, match="Exact steps must be >= 1 .*got 0"):
        trn.train_config("cellpose", 90, "0")
    with pytest.raises(ValueError, match="Learning rate must be a number .*got 'fast'"):
        trn.train_config("cellpose", 90, None, learning_rate="fast")
    with pytest.raises(ValueError, match="unknown model family 'nope'"):
        trn.train_config("nope", 90, 10)
    # The cells' diameter (issue 19): empty = measured; a number reaches the engine.
    assert trn.train_config("cellpose", 90, None, diameter="").diameter is None
    assert trn.train_config("cellpose", 90, None, diameter="48").diameter == 48.0
    with pytest.raises(ValueError, match="Cell diameter"):
        trn.train_config("cellpose", 90, None, diameter="-5")


def test_round_notes_say_why_a_round_stopped_early_and_at_which_scale():
    from cellsparse_app.storage.manifest import RoundRecord
    from cellsparse_app.ui.formatting import round_notes

    plain = RoundRecord(index=1, family="cellpose", steps=900, step_cap=None, diameter=20.0)
    assert round_notes(plain) == ""
    capped = RoundRecord(index=2, family="cellpose", steps=400, step_cap=400, diameter=60.0,
                         scale=0.75)
    text = round_notes(capped)
    assert "stopped at 400 steps" in text and "over-fits" in text
    assert "~60 px" in text and "45 px" in text and "0.75" in text
    stopped = RoundRecord(index=3, family="cellpose", steps=400, step_cap=400, cancelled=True)
    assert "stopped at" not in round_notes(stopped)  # the user stopped it, not the cap
