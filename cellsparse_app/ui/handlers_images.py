"""Handlers of the image sidebar: start a session, upload, example, switch, channels/contrast.

Each handler parses its inputs, calls one method of the ``Workspace`` or of one of its
parts (``canvas``, ``tools``, ``rounds``) and formats the outputs. The output order of
:func:`image_outputs` is the ``IMAGE_OUTPUTS`` list built in ``layout.py``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import gradio as gr

from cellsparse_app.data.images import ImageConfig
from cellsparse_app.session.canvas import CanvasView
from cellsparse_app.session.workspace import Workspace
from cellsparse_app.ui import formatting as fmt
from cellsparse_app.ui.context import AppContext
from cellsparse_app.ui.errors import friendly, require
from cellsparse_app.ui.imagefile import png_file

logger = logging.getLogger(__name__)

ANNOTATE_TAB = "annotate"
#: The stain choices of the Channels & contrast panel (``ImageConfig.stain``; none: as it is).
NO_STAIN = "none"
STAIN_LABELS = {NO_STAIN: "as it is", "invert": "invert (brightfield)",
                "hematoxylin": "haematoxylin channel (H&E)"}


def canvas_outputs(view: CanvasView) -> tuple:
    """(canvas PNG path, status, counts, cells table) of a :class:`CanvasView`."""
    return (
        png_file(view.image),
        fmt.status_markdown(view.message),
        fmt.summary_markdown(view.summary, view.totals),
        fmt.cells_rows(view.objects),
    )


def image_outputs(ws: Workspace, view: CanvasView | None, *, go_annotate: bool = False) -> tuple:
    """(image dropdown, image info, channels, low %, high %, tabs) + :func:`canvas_outputs`."""
    records = ws.project.images
    if view is None or ws.current is None:
        empty = (None, fmt.status_markdown("Upload an image or load the example to start."),
                 "", [])
        return (gr.update(choices=[], value=None), "No image yet.", gr.update(choices=[], value=[]),
                gr.skip(), gr.skip(), gr.skip(), *empty)
    record = ws.project.record(ws.current)
    cfg = ws.project.image_config
    channel_choices = [(f"channel {c}", c) for c in range(record.n_channels)]
    channels = list(cfg.channels) if cfg.channels is not None else list(range(record.n_channels))
    return (
        gr.update(choices=fmt.image_choices(records), value=ws.current),
        fmt.image_info(record, record.has_truth) + stain_note(ws),
        gr.update(choices=channel_choices, value=channels, visible=record.n_channels > 1),
        cfg.lower,
        cfg.upper,
        gr.update(selected=ANNOTATE_TAB) if go_annotate else gr.skip(),
        *canvas_outputs(view),
    )


def start_session(ctx: AppContext) -> tuple[Workspace, str]:
    """A new browser session: its workspace and the SAM backend line."""
    return ctx.new_workspace(), sam_line(ctx)


def sam_line(ctx: AppContext) -> str:
    """The header line naming the SAM backend (loads it on first use)."""
    try:
        headline, notice = ctx.sam_description()
    except Exception as exc:  # SAM is optional for everything but clicking; say why it is off
        logger.exception("SAM engine unavailable")
        headline = f"unavailable ({type(exc).__name__}: {exc}); use boxes and the brush"
        notice = None
    return fmt.sam_markdown(headline, notice)


@friendly
def upload(ws: Workspace | None, files: list[Any] | None) -> tuple:
    """Add uploaded files (PNG/JPEG/TIFF) to the project and show the first one added.

    Files that cannot be read are reported (a warning naming each) and skipped; the rest are
    added. The upload box is emptied by the event chain in ``layout.py`` either way, so a bad
    file never blocks the next upload.
    """
    ws = require(ws)
    paths = [Path(f if isinstance(f, str) else f.name) for f in (files or [])]
    ids, problems = ws.add_images(paths, names=[_original_name(p) for p in paths])
    message = f"Added {len(ids)} image(s): click a cell to start"
    if problems:
        skipped = "; ".join(problems)
        gr.Warning(f"Skipped {len(problems)} file(s) that could not be read: {skipped}")
        message += f" · skipped {len(problems)} unreadable file(s): {skipped}"
    return image_outputs(ws, ws.canvas.view(message), go_annotate=True)


def load_example(ctx: AppContext):
    """Handler factory: add the bundled example image (with its ground truth)."""

    @friendly
    def handler(ws: Workspace | None) -> tuple:
        ws = require(ws)
        s = ctx.settings
        ws.add_example(s.example_image, s.example_truth if s.example_truth.is_file() else None)
        view = ws.canvas.view("Example loaded: click a nucleus to get its SAM mask")
        return image_outputs(ws, view, go_annotate=True)

    return handler


@friendly
def select_image(ws: Workspace | None, image_id: str | None) -> tuple:
    ws = require(ws)
    if not image_id or image_id == ws.current:
        return image_outputs(ws, ws.canvas.view() if ws.current else None)
    return image_outputs(ws, ws.select_image(image_id))


@friendly
def apply_display(
    ws: Workspace | None, channels: list[int] | None, low: float, high: float,
    stain: str | None = NO_STAIN,
) -> tuple:
    """Channels, contrast percentiles and stain handling (used for display, SAM and training)."""
    ws = require(ws)
    record = ws.project.record(ws.current) if ws.current else None
    chosen = None
    if record is not None and record.n_channels > 1:
        if not channels:
            raise ValueError("choose at least one channel")
        chosen = tuple(sorted(int(c) for c in channels))
        if len(chosen) == record.n_channels and record.n_channels in (1, 3):
            chosen = None
    chosen_stain = None if stain in (None, "", NO_STAIN) else str(stain)
    view = ws.set_display(ImageConfig(channels=chosen, lower=float(low), upper=float(high),
                                      stain=chosen_stain))
    return image_outputs(ws, view)


def stain_note(ws: Workspace) -> str:
    """What the image info says about stains: the one in use, or the one suggested for the
    current image when it differs (H&E, brightfield)."""
    from cellsparse_app.data.stains import suggest_stain

    used = ws.project.image_config.stain
    suggestion = suggest_stain(ws.project.image(ws.current))
    text = f" · stain: **{STAIN_LABELS[used or NO_STAIN]}**" if used else ""
    if suggestion.stain != used and suggestion.stain is not None:
        text += (f"  \n💡 Suggested stain: **{STAIN_LABELS[suggestion.stain]}** "
                 f"(*Channels & contrast*) — {suggestion.reason}")
    return text


@friendly
def remove_image(ws: Workspace | None) -> tuple:
    ws = require(ws)
    current = ws.remove_current()
    return image_outputs(ws, ws.canvas.view("Image removed") if current else None)


@friendly
def prepare_sam(ws: Workspace | None) -> str:
    """Compute the SAM embedding of the shown image so the first click answers at once."""
    ws = require(ws)
    if ws.current is None:
        return ""
    start = time.monotonic()
    backend = ws.tools.prepare_sam()
    return fmt.status_markdown(f"SAM ready ({backend}, {time.monotonic() - start:.1f} s): "
                               "click a cell")


def _original_name(path: Path) -> str:
    # Gradio keeps the uploaded file's name as the last path component.
    return path.name
