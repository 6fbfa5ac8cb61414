"""Empty fields mean the defaults (never 0), the untouched UI predicts as the CLI does, and a
refused training always gives Train back."""

from __future__ import annotations

import html

import gradio as gr
import pytest

from cellsparse_app.predict import PredictConfig
from cellsparse_app.train import DEFAULT_SECONDS, TrainConfig
from cellsparse_app.ui import build_demo
from cellsparse_app.ui import handlers_images as img
from cellsparse_app.ui import handlers_results as res
from cellsparse_app.ui import handlers_train as trn
from cellsparse_app.ui.context import AppContext, AppSettings
from cellsparse_app.ui.fields import optional_float, optional_int

TRAIN_FIELDS = ("cs-seconds", "cs-steps", "cs-batch", "cs-patch", "cs-lr", "cs-warmup",
                "cs-train-diameter")
PREDICT_FIELDS = ("cs-prob", "cs-min-size", "cs-flow-threshold", "cs-diameter")


@pytest.fixture(scope="module")
def defaults(tmp_path_factory):
    """The value every Train / Predict field has when the page opens."""
    demo = build_demo(AppContext(AppSettings(session_root=tmp_path_factory.mktemp("s"),
                                             sam_model="fallback")))
    by_id = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    seed = next(b for b in demo.blocks.values() if getattr(b, "label", None) == "Seed")
    values = {k: by_id[k].value for k in TRAIN_FIELDS + PREDICT_FIELDS}
    values["seed"] = seed.value
    return values


def test_optional_fields_start_empty_not_zero(defaults):
    for key in ("cs-steps", "cs-lr", "cs-prob", "cs-flow-threshold", "cs-diameter",
                "cs-train-diameter"):
        assert defaults[key] == "", key  # gr.Number(None) would show and send 0


def test_untouched_train_tab_trains_with_the_engine_defaults(defaults):
    """Only the time budget is set, to the device's default: the run is ``TrainConfig()``."""
    from cellsparse_app.ui.choices import default_device

    d = defaults
    cfg = trn.train_config("cellpose", d["cs-seconds"], d["cs-steps"], d["cs-batch"],
                           d["cs-patch"], d["cs-lr"], d["cs-warmup"], d["seed"],
                           d["cs-train-diameter"])
    device = default_device()
    assert cfg == TrainConfig(max_seconds=DEFAULT_SECONDS[device])
    assert cfg.budget(device) == TrainConfig().budget(device)


def test_untouched_predict_tab_is_the_cli_default(defaults):
    """The same PredictConfig as ``cellsparse predict --model M img`` with no options: the model's
    calibrated thresholds (None here), the same minimum size."""
    from cellsparse_app.cli import build_parser

    cfg = res.predict_config(defaults["cs-prob"], defaults["cs-min-size"],
                             defaults["cs-flow-threshold"], defaults["cs-diameter"])
    args = build_parser().parse_args(["predict", "--model", "m", "x.tif", "--out", "o"])
    cli = PredictConfig(device=args.device)
    for name, value in (("prob_threshold", args.prob_threshold), ("min_size", args.min_size),
                        ("flow_threshold", args.flow_threshold)):
        if value is not None:
            cli = cli.replace(**{name: value})
    assert cfg == cli
    assert cfg.flow_threshold is None and cfg.prob_threshold is None and cfg.diameter is None
    assert res.predict_config("", 15, "", "42").diameter == 42.0  # another magnification
    with pytest.raises(ValueError, match="Object diameter .* must be > 0"):
        res.predict_config("", 15, "", "0")


def test_fields_parse_text_and_numbers_and_name_bad_values():
    assert optional_float("", "x") is None and optional_float("  ", "x") is None
    assert optional_float(None, "x") is None and optional_float("0.25", "x") == 0.25
    assert optional_float(0.5, "x", low=0, high=1) == 0.5
    assert optional_int("12", "Steps", low=1) == 12 and optional_int(8.0, "Batch") == 8
    with pytest.raises(ValueError, match="Steps must be >= 1 .*got 0"):
        optional_int(0, "Steps", low=1)
    with pytest.raises(ValueError, match="Steps must be a whole number, got 2.5"):
        optional_int("2.5", "Steps")
    with pytest.raises(ValueError, match="Rate must be a number .*got 'abc'"):
        optional_float("abc", "Rate")
    with pytest.raises(ValueError, match="finite"):
        optional_float("nan", "Rate")
    with pytest.raises(ValueError, match="Probability threshold must be below 1"):
        res.predict_config("1")


def test_refused_training_gives_train_back(tmp_path, example_truth):
    """Steps 0, or nothing annotated: the last update re-enables Train and says why."""
    ctx = AppContext(AppSettings(session_root=tmp_path, sam_model="fallback"))
    ws, _ = img.start_session(ctx)
    img.load_example(ctx)(ws)
    for steps, reason in (("0", "Exact steps must be >= 1"), ("", "nothing to train on")):
        trn.arm(ws)
        run = trn.train(ws, "cellpose", trn.SCRATCH, 150, steps)
        outputs = []
        with pytest.raises(gr.Error, match=reason):
            for out in run:
                outputs.append(out)
        progress, _, _, _, train_btn, stop_btn = outputs[-1]
        assert 'data-state="failed"' in progress and html.escape(reason) in progress
        assert train_btn["interactive"] is True and stop_btn["interactive"] is False
    ws.close()
