"""The Blocks: per-user state, queues (training in the "gpu" group), error mapping, app.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gradio as gr
import pytest

from cellsparse_app.ui import build_demo, launch_options
from cellsparse_app.ui.context import AppContext, AppSettings
from cellsparse_app.ui.errors import friendly, to_gr_error

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    settings = AppSettings(session_root=tmp_path_factory.mktemp("s"), sam_model="fallback",
                           gpu_slots=2)
    return build_demo(AppContext(settings))


def _fns(demo):
    return {fn.name: fn for fn in demo.fns.values()}


def test_state_is_per_session_not_global(demo):
    states = [b for b in demo.blocks.values() if isinstance(b, gr.State)]
    assert len(states) == 1 and states[0].value is None  # filled per session by demo.load
    # A closed page releases its workspace; the folder stays for a reload (test_ui_session).
    assert states[0].delete_callback.__func__ is AppContext.release_workspace
    tokens = [b for b in demo.blocks.values() if isinstance(b, gr.BrowserState)]
    assert len(tokens) == 1 and tokens[0].default_value == ""  # set by the server on load


def test_training_and_prediction_share_the_gpu_queue(demo):
    fns = _fns(demo)
    for name in ("train", "predict"):
        assert fns[name].concurrency_id == "gpu" and fns[name].concurrency_limit == 2
    assert fns["click"].queue is False  # clicks never wait behind a training (direct request)
    assert fns["prepare_sam"].concurrency_id == fns["auto_masks"].concurrency_id == "sam"
    assert fns["stop"].concurrency_limit is None  # stop is always answered at once
    assert fns["click"].trigger_mode == "multiple"  # fast double clicks (box corners) all count


def test_components_of_each_step_exist(demo):
    kinds = {type(b).__name__ for b in demo.blocks.values()}
    assert {"ImageSlider", "LinePlot", "ImageEditor", "File", "Dataframe"} <= kinds
    ids = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    for elem in ("canvas", "cs-accept-fg", "cs-train", "cs-stop", "cs-progress", "cs-loss",
                 "cs-predict", "cs-slider", "cs-export", "cs-save", "cs-load-project"):
        assert elem in ids


def test_launch_options_work_offline():
    opts = launch_options()
    fonts = opts["theme"]._font if hasattr(opts["theme"], "_font") else []
    assert all(not isinstance(f, gr.themes.GoogleFont) for f in fonts)
    assert ".cs-progress" in opts["css"]


def test_errors_become_messages_not_tracebacks():
    assert "no such image" in str(to_gr_error(ValueError("no such image")))

    @friendly
    def broken():
        raise ZeroDivisionError("division by zero")

    with pytest.raises(gr.Error, match="Unexpected ZeroDivisionError.*are kept"):
        broken()

    @friendly
    def gen():
        yield 1
        raise KeyError("missing key")

    with pytest.raises(gr.Error, match="missing key"):
        list(gen())


def test_app_py_serves_the_app_with_its_options():
    """``python app.py`` (make run, Docker, the Space) parses its options and builds the demo."""
    out = subprocess.run([sys.executable, str(ROOT / "app.py"), "--help"], capture_output=True,
                         text=True, check=True, cwd=ROOT)
    assert "--host" in out.stdout and "--port" in out.stdout
    bad = subprocess.run([sys.executable, str(ROOT / "app.py"), "--port", "nope"],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "invalid int value: 'nope'" in bad.stderr


def test_make_targets_create_the_environment_then_run(tmp_path):
    """``make run`` / ``make test`` (the README's two commands) refresh .venv before serving the
    app or running pytest: checked with ``make -n`` (prints the commands, runs nothing)."""
    import shutil

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    for target, final in (("run", "app.py --host"), ("test", "-m pytest")):
        out = subprocess.run(["make", "-n", "-B", target], capture_output=True, text=True,
                             cwd=ROOT, check=True).stdout
        assert "-m venv .venv" in out and "pip install -r requirements.txt" in out, target
        assert out.index("pip install -r requirements.txt") < out.index(final), target


def test_family_menu_says_when_to_pick_each_family(demo):
    from cellsparse_app.models import get_family, list_families

    menu = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "cs-family")
    assert [value for _, value in menu.choices] == list_families()
    for name in list_families():
        family = get_family(name)
        assert len(family.advice) > 20, name  # every family states its use, for the menu
        assert f"{family.title} — {family.advice}." in menu.info


def test_every_export_format_has_a_menu_label():
    from cellsparse_app.session.results import EXPORT_SUFFIXES
    from cellsparse_app.ui.choices import EXPORT_FORMAT_LABELS, export_format_choices

    assert set(EXPORT_FORMAT_LABELS) == set(EXPORT_SUFFIXES)
    assert [key for _, key in export_format_choices()] == list(EXPORT_SUFFIXES)
