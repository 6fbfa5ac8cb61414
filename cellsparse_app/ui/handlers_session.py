"""Page load: restore the browser's session after a reload, or start a new one.

The browser keeps a secret session token in ``gr.BrowserState`` (its local storage); the
server keeps the session's folder (images, annotations, rounds) after the page goes away, so a
reload, a crash of the tab or a closed and reopened tab comes back to the same work.
"""

from __future__ import annotations

import logging
from typing import Callable

from cellsparse_app.ui.context import AppContext
from cellsparse_app.ui.handlers_images import image_outputs, sam_line
from cellsparse_app.ui.handlers_train import rounds_outputs

logger = logging.getLogger(__name__)


def restore_session(ctx: AppContext) -> Callable[[str | None], tuple]:
    """Handler factory for ``demo.load``. Outputs: workspace state, SAM line, session token,
    image outputs, rounds outputs, margin slider, zoom."""

    def handler(token: str | None) -> tuple:
        ws, token, restored = ctx.open_workspace(token or None)
        view = None
        if ws.current is not None:
            n = ws.project.totals()["n_objects"]
            welcome = (f"Welcome back: your session was restored ({len(ws.project.images)} "
                       f"image(s), {n} annotated cell(s))")
            view = ws.canvas.view(welcome if restored else "")
        return (ws, sam_line(ctx), token, *image_outputs(ws, view, go_annotate=view is not None),
                *rounds_outputs(ws), ws.tools.margin, ws.canvas.zoom)

    return handler
