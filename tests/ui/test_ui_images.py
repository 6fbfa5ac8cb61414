"""Step 1 (images): upload, example, switch, channels/contrast, bad files, per-user isolation."""

from __future__ import annotations

import subprocess
import sys

import gradio as gr
import numpy as np
import pytest
import tifffile

from cellsparse_app.ui import handlers_images as img

# image_outputs order: dropdown, info, channels, low, high, tabs, canvas, status, summary, cells
DROPDOWN, INFO, CHANNELS, LOW, HIGH, TABS, CANVAS, STATUS, SUMMARY, CELLS = range(10)


def test_session_start_says_which_sam(ctx):
    ws, sam = img.start_session(ctx)
    assert "Segment Anything" in sam and "fallback" in sam.lower()
    assert ws.directory.parent == ctx.settings.session_root and ws.current is None


def test_example_loads_with_truth_and_switches_tab(ctx, ws, example_truth, pixels):
    out = img.load_example(ctx)(ws)
    canvas = pixels(out[CANVAS])
    assert out[DROPDOWN]["choices"] == [("example_nuclei", ws.current)]
    assert "360×360 px" in out[INFO]
    assert "ground truth" in out[INFO]
    assert canvas.shape == (360, 360, 3) and canvas.dtype == np.uint8
    assert canvas.max() == 255  # the dim raw image (4..48) is contrast-stretched
    assert out[TABS]["selected"] == img.ANNOTATE_TAB
    assert out[SUMMARY].startswith("**0** Foreground cells")
    np.testing.assert_array_equal(ws.project.truth(ws.current), example_truth)


def test_upload_16bit_multichannel_and_choose_channel(ws, tmp_path, dsb_fluo, pixels):
    base = dsb_fluo[0].image.astype(np.uint16) * 200
    stack = np.stack([base, np.flipud(base)], axis=-1)  # two channels, 16-bit
    path = tmp_path / "two_channels.tif"
    tifffile.imwrite(path, stack, photometric="minisblack")
    out = img.upload(ws, [str(path)])
    assert out[CHANNELS]["visible"] is True and len(out[CHANNELS]["choices"]) == 2
    assert "2 channels" in out[INFO] and "uint16" in out[INFO]
    both = pixels(out[CANVAS])
    one = pixels(img.apply_display(ws, [1], 1.0, 99.8)[CANVAS])
    assert (one[..., 0] == one[..., 1]).all()  # one channel shows grey
    np.testing.assert_array_equal(one[..., 0] > 127, np.flipud(both[..., 1]) > 127)
    with pytest.raises(gr.Error, match="at least one channel"):
        img.apply_display(ws, [], 1.0, 99.8)
    with pytest.raises(gr.Error, match="0 <= low < high <= 100"):
        img.apply_display(ws, [0], 99.9, 99.8)


def test_several_images_and_switching(ctx, ws, tmp_path, dsb_fluo):
    paths = []
    for k in (0, 1):
        paths.append(tmp_path / f"img{k}.png")
        from PIL import Image

        Image.fromarray(dsb_fluo[k].image).save(paths[-1])
    out = img.upload(ws, [str(p) for p in paths])
    ids = [v for _, v in out[DROPDOWN]["choices"]]
    assert len(ids) == 2 and out[DROPDOWN]["value"] == ids[0]
    out = img.select_image(ws, ids[1])
    assert ws.current == ids[1] and "img1" in out[INFO]
    out = img.remove_image(ws)
    assert [v for _, v in out[DROPDOWN]["choices"]] == [ids[0]]


def test_bad_files_give_readable_errors_and_lose_nothing(ctx, ws, tmp_path):
    img.load_example(ctx)(ws)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    good = tmp_path / "good.png"
    from PIL import Image

    Image.fromarray(np.zeros((32, 32), np.uint8)).save(good)
    with pytest.warns(UserWarning, match="Skipped 1 file.*broken.png: cannot decode"):
        out = img.upload(ws, [str(bad), str(good)])  # the bad file is skipped, not fatal
    assert [r.name for r in ws.project.images][1:] == ["good"]
    assert ws.project.record(ws.current).name == "good"
    assert "skipped 1 unreadable file" in out[STATUS]
    with pytest.raises(gr.Error, match="broken.png: cannot decode"):
        img.upload(ws, [str(bad)])  # nothing readable: an error, nothing changes
    with pytest.raises(gr.Error, match="no file given"):
        img.upload(ws, [])
    assert len(ws.project.images) == 2  # the example and good.png are still there
    out = img.upload(ws, [str(good)])  # the next upload works
    assert len(ws.project.images) == 3


def test_two_users_do_not_see_each_other(ctx):
    a, _ = img.start_session(ctx)
    b, _ = img.start_session(ctx)
    img.load_example(ctx)(a)
    assert a.directory != b.directory and b.project.images == []
    assert not (b.directory / "project" / "images").exists()
    a.close()
    assert not a.directory.exists() and b.directory.exists()


def test_handlers_before_the_session_exists_explain():
    with pytest.raises(gr.Error, match="still starting"):
        img.upload(None, [])


def test_core_never_imports_gradio():
    code = ("import sys, cellsparse_app.session.workspace, cellsparse_app.storage.project, "
            "cellsparse_app.session.rounds, cellsparse_app.session.results, "
            "cellsparse_app.session.overlays; print('gradio' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_opening_a_project_while_auto_mask_candidates_are_shown(ctx, ws, tmp_path, pixels):
    """The candidates of the shown image belong to it: opening a project with images of another
    size used to raise 'boolean index did not match' on the next view."""
    from PIL import Image

    from cellsparse_app.ui import handlers_annotate as ann
    from cellsparse_app.ui import handlers_results as res

    other, _ = img.start_session(ctx)
    tall = tmp_path / "tall.png"
    Image.fromarray((np.arange(488 * 256).reshape(488, 256) % 251).astype(np.uint8)).save(tall)
    img.upload(other, [str(tall)])
    saved = res.save_project(other)
    img.load_example(ctx)(ws)
    ann.auto_masks(ws)
    assert ws.canvas.candidates is not None and ws.canvas.candidates.shape == (360, 360)
    out = res.load_project(ws, saved)
    assert ws.canvas.candidates is None
    assert pixels(out[CANVAS]).shape[:2] == (488, 256)
    ann.show_prediction(ws, True)  # any later view works too
    other.close()


def test_he_image_gets_a_stain_suggestion_and_the_chosen_stain_is_kept(ctx, ws, tmp_path):
    """An H&E-looking upload suggests the haematoxylin channel; choosing it (Apply) sets the
    project's stain, the info line says so, and contrast changes keep it."""
    from PIL import Image

    rr, cc = np.mgrid[:96, :96]
    nuclei = ((rr - 30) ** 2 + (cc - 30) ** 2 <= 100) | ((rr - 65) ** 2 + (cc - 60) ** 2 <= 120)
    rgb = np.empty((96, 96, 3), np.uint8)
    rgb[:] = (235, 200, 220)  # pink eosin background
    rgb[nuclei] = (110, 60, 160)  # purple haematoxylin nuclei
    path = tmp_path / "he.png"
    Image.fromarray(rgb).save(path)
    out = img.upload(ws, [str(path)])
    assert "Suggested stain: **haematoxylin channel (H&E)**" in out[INFO]
    out = img.apply_display(ws, [0, 1, 2], 1.0, 99.8, "hematoxylin")
    assert ws.project.image_config.stain == "hematoxylin"
    assert "stain: **haematoxylin channel (H&E)**" in out[INFO] and "Suggested" not in out[INFO]
    canvas = np.asarray(Image.open(out[CANVAS]).convert("L")).astype(float)
    assert canvas[nuclei].mean() > canvas[~nuclei].mean() + 50  # nuclei now bright
    img.apply_display(ws, [0, 1, 2], 2.0, 99.0, "none")
    assert ws.project.image_config.stain is None
