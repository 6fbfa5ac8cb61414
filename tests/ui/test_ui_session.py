"""A reload comes back to the same session: the browser keeps a token, the server the folder."""

from __future__ import annotations

import numpy as np

from cellsparse_app.ui import handlers_session as ses
from cellsparse_app.ui.context import AppContext, AppSettings

STATE, SAM, TOKEN, DROPDOWN, INFO = range(5)
STATUS, SUMMARY = 10, 11  # after the image outputs: dropdown .. tabs, canvas


def test_reload_restores_images_annotations_and_current_image(ctx, tmp_path):
    from cellsparse_app.ui import handlers_images as img

    first = ses.restore_session(ctx)("")  # a new browser: no token yet
    ws, token = first[STATE], first[TOKEN]
    assert token and ws.project.images == []
    img.load_example(ctx)(ws)
    mask = np.zeros(ws.project.record(ws.current).shape[:2], bool)
    mask[10:20, 10:20] = True
    ws.project.editor(ws.current).add_foreground(mask)
    ws.project.edited(ws.current)
    ws.tools.set_margin(6)
    ctx.release_workspace(ws)  # the page is reloaded: Gradio drops the old session

    again = ses.restore_session(ctx)(token)
    restored = again[STATE]
    assert restored is not ws and again[TOKEN] == token
    assert restored.current == ws.current
    assert (restored.project.labels(ws.current) == 1).sum() == 100
    assert "Welcome back" in again[STATUS] and "1 annotated cell" in again[STATUS]
    assert again[DROPDOWN]["value"] == ws.current
    assert restored.tools.margin == 6 and again[-2:] == (6, 1)  # margin slider and zoom follow

    # Another server process (same session root) restores it from disk alone.
    other = AppContext(AppSettings(session_root=ctx.settings.session_root, sam_model="fallback"))
    third = ses.restore_session(other)(token)
    assert (third[STATE].project.labels(ws.current) == 1).sum() == 100


def test_open_tabs_share_the_session_until_the_last_closes(ctx):
    ws, token, restored = ctx.open_workspace(None)
    assert not restored
    ws2, token2, restored2 = ctx.open_workspace(token)
    assert ws2 is ws and token2 == token and restored2
    ctx.release_workspace(ws)
    assert ctx.open_workspace(token)[0] is ws  # one tab still open: the same object
    ctx.release_workspace(ws)
    ctx.release_workspace(ws)
    assert ws.directory.is_dir()  # released, not deleted


def test_bad_or_unknown_tokens_get_a_fresh_session(ctx):
    root = ctx.settings.session_root
    for token in ("../../etc", "x" * 10, "A" * 30, None):
        ws, new_token, restored = ctx.open_workspace(token)
        assert not restored and new_token != token
        assert ws.directory.parent == root and ws.directory.name.endswith(new_token)
    assert not (root.parent / "etc").exists()


def test_sweep_keeps_open_sessions(ctx):
    import os
    import time

    ws, token, _ = ctx.open_workspace(None)
    gone, gone_token, _ = ctx.open_workspace(None)
    ctx.release_workspace(gone)
    stamp = time.time() - 48 * 3600
    for folder in (ws.directory, gone.directory):
        for sub in [folder, *folder.rglob("*")]:
            os.utime(sub, (stamp, stamp))
    ctx._last_sweep = -1e9  # due now
    ctx.open_workspace(None)
    assert ws.directory.is_dir() and not gone.directory.exists()
