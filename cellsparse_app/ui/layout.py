"""The Gradio Blocks of the web app: components and event wiring, nothing else.

Steps: images (sidebar) -> ① Annotate -> ② Train -> ③ Predict & compare -> ④ Export. Per-user
state is one :class:`~cellsparse_app.session.workspace.Workspace` in ``gr.State``, found again
after a reload through the session token in ``gr.BrowserState``. Trainings and predictions share
the ``"gpu"`` concurrency group; SAM embeddings and automatic masks have their own group and
clicks bypass the queue, so clicks stay fast while someone trains.
"""

from __future__ import annotations

import logging

import gradio as gr
import pandas as pd

from cellsparse_app.data.margins import DEFAULT_MARGIN_PX
from cellsparse_app.predict import PredictConfig
from cellsparse_app.session.sam_bridge import (
    BACKGROUND_BOX,
    BOX,
    CENTRE,
    ERASE,
    NEGATIVE,
    OUTLINE,
    POSITIVE,
    SELECT,
)
from cellsparse_app.session.viewport import ZOOM_FACTORS
from cellsparse_app.train import DEFAULT_SECONDS, TrainConfig
from cellsparse_app.ui import formatting as fmt
from cellsparse_app.ui import handlers_annotate as ann
from cellsparse_app.ui import handlers_images as img
from cellsparse_app.ui import handlers_results as res
from cellsparse_app.ui import handlers_session as ses
from cellsparse_app.ui import handlers_train as trn
from cellsparse_app.ui.choices import (
    default_device,
    describe_device,
    export_format_choices,
    family_advice,
    family_choices,
)
from cellsparse_app.ui.context import AppContext

logger = logging.getLogger(__name__)

CLICK_CHOICES = [
    ("+ Cell point (SAM)", POSITIVE), ("− Exclude point", NEGATIVE),
    ("▭ Box around a cell (2 clicks)", BOX), ("▦ Background box (2 clicks)", BACKGROUND_BOX),
    ("Select object", SELECT), ("✎ Outline a cell (click its border points)", OUTLINE),
    ("⌫ Erase the cell / Background region clicked", ERASE),
    ("⌖ Centre the zoomed view here", CENTRE),
]
ZOOM_CHOICES = [(f"{z}×", z) for z in ZOOM_FACTORS]
PAN_ARROWS = {"left": "←", "up": "↑", "down": "↓", "right": "→"}
LOGO_SVG = (
    '<svg class="cs-logo" viewBox="0 0 32 32" width="28" height="28" aria-hidden="true">'
    '<circle cx="12" cy="13" r="9" fill="#14b8a6" opacity=".85"/>'
    '<circle cx="22" cy="20" r="7" fill="#286eff" opacity=".75"/>'
    '<circle cx="12" cy="13" r="3" fill="#fff"/></svg>'
)
HELP = {
    "annotate": "Click a cell: SAM proposes its mask (yellow). **Accept as Foreground**, or refine "
                "with more points. Mark **Background** with boxes, SAM masks or the brush. "
                "Where SAM fails, ✎ outline the cell or paint it with the brush; zoom in for small "
                "cells. "
                "Unmarked pixels stay *unlabelled* and are ignored by training: a handful of "
                "cells plus some background is enough.",
    "train": "Trains a network from scratch on your sparse annotations of all images. "
             "Stop keeps the model trained so far; every run is kept as a round.",
    "predict": "Segment with the active round's model. Slide to compare with the input; "
               "switch the right side to see errors or what changed since the previous round. "
               "Then **Correct**: accept good predicted cells, delete bad ones, retrain.",
    "export": "Download masks for napari/Fiji (label TIFF), QuPath (GeoJSON), ImageJ (ROI zip), "
              "COCO or a CSV of measurements; the model as a zip for `cellsparse predict`; or the "
              "whole project to continue later.",
}


def build_demo(ctx: AppContext | None = None) -> gr.Blocks:
    """The cellsparse web app (launch it with ``ui.style.launch_options()``)."""
    ctx = ctx or AppContext()
    s = ctx.settings
    gpu = {"concurrency_id": "gpu", "concurrency_limit": s.gpu_slots}
    sam = {"concurrency_id": "sam", "concurrency_limit": s.sam_slots}
    with gr.Blocks(title="cellsparse — sparse-annotation cell segmentation",
                   delete_cache=(3600, 7200)) as demo:
        state = gr.State(None, delete_callback=ctx.release_workspace)
        # The browser's key to its session folder: a reload comes back to the same work.
        session_token = gr.BrowserState("", storage_key="cellsparse-session")
        with gr.Row(elem_classes="cs-header"):
            gr.HTML(f"<h1>{LOGO_SVG}cellsparse</h1><span class='cs-tagline'>a cell-segmentation "
                    "model for your images, from a handful of clicks</span>")
        sam_md = gr.Markdown("**Segment Anything:** loading…", elem_id="cs-sam-status")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=250):
                gr.Markdown("### Images")
                files = gr.File(label="Upload images",
                                file_count="multiple", type="filepath", height=120,
                                file_types=[".png", ".jpg", ".jpeg", ".tif", ".tiff"],
                                elem_id="cs-upload")
                gr.Markdown("PNG, JPEG or TIFF; 8/16-bit, grey or multichannel.",
                            elem_classes="cs-step-help")
                example_btn = gr.Button("Load example: nuclei (CC0)", size="sm",
                                        elem_id="cs-example")
                image_dd = gr.Dropdown(label="Current image", choices=[], interactive=True,
                                       elem_id="cs-image")
                image_info = gr.Markdown("No image yet.", elem_id="cs-image-info")
                with gr.Accordion("Channels & contrast", open=False):
                    channels = gr.CheckboxGroup(label="Channels", choices=[], visible=False)
                    low = gr.Slider(0, 20, value=1.0, step=0.1, label="Black point (percentile)")
                    high = gr.Slider(80, 100, value=99.8, step=0.1,
                                     label="White point (percentile)")
                    stain = gr.Radio([(label, key) for key, label in img.STAIN_LABELS.items()],
                                     value=img.NO_STAIN, label="Stain (H&E, brightfield)",
                                     elem_id="cs-stain")
                    apply_btn = gr.Button("Apply (display, SAM and training)", size="sm")
                remove_btn = gr.Button("Remove this image", size="sm", variant="secondary")
            with gr.Column(scale=4):
                with gr.Tabs(elem_id="cs-tabs") as tabs:
                    with gr.Tab("① Annotate", id=img.ANNOTATE_TAB, elem_id="cs-tab-annotate"):
                        gr.Markdown(HELP["annotate"], elem_classes="cs-step-help")
                        with gr.Row(equal_height=False):
                            with gr.Column(scale=3):
                                canvas = gr.Image(
                                    label="Annotation", interactive=False, format="png",
                                    show_label=False, elem_id="canvas", height=600,
                                    buttons=["fullscreen", "download"],
                                    placeholder="Upload an image or load the example (left)",
                                )
                                with gr.Row(equal_height=True):
                                    zoom = gr.Radio(ZOOM_CHOICES, value=1, scale=3,
                                                    label="Zoom (full resolution)",
                                                    elem_id="cs-zoom")
                                    pan_btns = {
                                        d: gr.Button(arrow, size="sm", scale=0, min_width=44,
                                                     elem_id=f"cs-pan-{d}")
                                        for d, arrow in PAN_ARROWS.items()
                                    }
                                gr.HTML(fmt.LEGEND_HTML)
                            with gr.Column(scale=2, min_width=280):
                                mode = gr.Radio(CLICK_CHOICES, value=POSITIVE,
                                                label="Click on the image to…", elem_id="cs-mode")
                                with gr.Row():
                                    fg_btn = gr.Button("Accept as Foreground", variant="primary",
                                                       elem_id="cs-accept-fg")
                                    bg_btn = gr.Button("Mark as Background", elem_id="cs-accept-bg")
                                with gr.Row():
                                    clear_btn = gr.Button("Clear prompts", size="sm")
                                    undo_btn = gr.Button("↶ Undo", size="sm", elem_id="cs-undo")
                                    delete_btn = gr.Button("Delete selected", size="sm",
                                                           variant="stop", elem_id="cs-delete")
                                status = gr.Markdown("", elem_id="cs-status")
                                summary = gr.Markdown("", elem_id="cs-summary")
                                margin = gr.Slider(0, 12, value=DEFAULT_MARGIN_PX, step=1,
                                                   label="Background margin around accepted "
                                                   "cells (px, 0 = off)", elem_id="cs-margin",
                                                   info="Shows the model where cells end")
                                with gr.Accordion("More: automatic masks, predictions", open=False):
                                    auto_btn = gr.Button("Segment everything (SAM auto masks)",
                                                         size="sm")
                                    auto_all_btn = gr.Button("Accept all candidates", size="sm")
                                    pred_all_btn = gr.Button("Accept all predicted objects",
                                                             size="sm")
                                    show_pred = gr.Checkbox(True, label="Show prediction outlines")
                                with gr.Accordion("Brush: paint Background, a cell, or erase",
                                                  open=False) as brush_acc:
                                    editor = gr.ImageEditor(
                                        label="Paint (a cell: fill it or draw its outline), then "
                                              "apply", type="numpy", height=420,
                                        brush=gr.Brush(colors=["#286eff"], color_mode="fixed"),
                                        layers=False, transforms=(), sources=(),
                                    )
                                    with gr.Row():
                                        paint_bg_btn = gr.Button("Painted → Background", size="sm")
                                        paint_fg_btn = gr.Button("Painted → one Foreground cell",
                                                                 size="sm", elem_id="cs-paint-fg")
                                        paint_erase_btn = gr.Button("Painted → unlabelled",
                                                                    size="sm")
                                cells = gr.Dataframe(headers=fmt.CELL_COLUMNS, label="Annotated "
                                                     "cells (click a row to select)",
                                                     interactive=False, max_height=220,
                                                     elem_id="cs-cells")
                    with gr.Tab("② Train", id="train", elem_id="cs-tab-train"):
                        gr.Markdown(HELP["train"], elem_classes="cs-step-help")
                        with gr.Row():
                            family = gr.Dropdown(family_choices(), value="cellpose",
                                                 label="Model family", info=family_advice(),
                                                 elem_id="cs-family")
                            start = gr.Radio([("From scratch", trn.SCRATCH),
                                              ("Continue active round", trn.CONTINUE)],
                                             value=trn.SCRATCH, label="Start")
                        with gr.Row():
                            seconds = gr.Slider(5, s.max_train_seconds, step=5,
                                                value=DEFAULT_SECONDS[default_device()],
                                                label="Time budget (s)", elem_id="cs-seconds")
                            steps = gr.Textbox("", label="or exact steps",
                                               placeholder="empty: train for the time budget",
                                               elem_id="cs-steps")
                        with gr.Accordion("Advanced training settings", open=False):
                            defaults = TrainConfig()
                            with gr.Row():
                                # No ``minimum=``: Gradio would refuse the event before the
                                # handler runs; ui.fields checks and names the field instead.
                                batch = gr.Number(defaults.batch_size, label="Batch size",
                                                  precision=0, elem_id="cs-batch")
                                patch = gr.Number(defaults.patch_size, label="Patch size (px)",
                                                  precision=0, elem_id="cs-patch")
                                lr = gr.Textbox("", label="Learning rate",
                                                placeholder="empty: the model's default",
                                                elem_id="cs-lr")
                                warmup = gr.Number(defaults.warmup_steps, label="Warm-up steps",
                                                   precision=0, elem_id="cs-warmup")
                                seed = gr.Number(defaults.seed, label="Seed", precision=0)
                                train_diameter = gr.Textbox(
                                    "", label="Cell diameter (px)",
                                    placeholder="empty: measured from your cells",
                                    elem_id="cs-train-diameter")
                        gr.Markdown(describe_device(), elem_id="cs-device")
                        with gr.Row():
                            train_btn = gr.Button("Train", variant="primary", elem_id="cs-train")
                            stop_btn = gr.Button("Stop (keep model so far)", variant="stop",
                                                 interactive=False, elem_id="cs-stop")
                        progress = gr.HTML(fmt.progress_html(0.0, "not started", "idle"),
                                           elem_id="cs-progress")
                        stop_md = gr.Markdown("")
                        loss_plot = gr.LinePlot(pd.DataFrame({"step": [], "loss": []}), x="step",
                                                y="loss", title="Training loss", height=260,
                                                elem_id="cs-loss")
                        rounds = gr.Dataframe(headers=fmt.ROUND_COLUMNS, label="Rounds",
                                              interactive=False, elem_id="cs-rounds")
                        with gr.Row():
                            round_dd = gr.Dropdown(choices=[], label="Round", scale=2,
                                                   elem_id="cs-round")
                            rollback_btn = gr.Button("Roll back to this round (model + "
                                                     "annotations)", scale=1,
                                                     elem_id="cs-rollback")
                    with gr.Tab("③ Predict & compare", id="predict", elem_id="cs-tab-predict"):
                        gr.Markdown(HELP["predict"], elem_classes="cs-step-help")
                        with gr.Row():
                            scope = gr.Radio([("This image", "current"), ("All images", "all")],
                                             value="current", label="Predict")
                            prob = gr.Textbox("", label="Probability threshold",
                                              placeholder="empty: the model's calibrated value",
                                              elem_id="cs-prob")
                            min_size = gr.Number(PredictConfig().min_size,
                                                 label="Min object size (px)", precision=0,
                                                 elem_id="cs-min-size")
                            flow_qc = gr.Textbox("", label="Flow error threshold (Cellpose-style "
                                                 "check: higher keeps more masks, 0 keeps all)",
                                                 placeholder="empty: the model's calibrated value",
                                                 elem_id="cs-flow-threshold")
                            diameter = gr.Textbox("", label="Object diameter (px), for images of "
                                                  "another magnification",
                                                  placeholder="empty: the training images' scale",
                                                  elem_id="cs-diameter")
                        with gr.Row():
                            predict_btn = gr.Button("Predict", variant="primary",
                                                    elem_id="cs-predict")
                            correct_btn = gr.Button("Correct in Annotate →", elem_id="cs-correct")
                        right = gr.Radio([("Prediction", res.PREDICTION),
                                          ("Errors (TP / FP / missed)", res.ERRORS),
                                          ("Changes since previous round", res.CHANGES)],
                                         value=res.PREDICTION, label="Right side shows",
                                         elem_id="cs-right")
                        slider = gr.ImageSlider(label="Input | result", format="png",
                                                max_height=640, elem_id="cs-slider")
                        legend = gr.HTML("")
                        pred_md = gr.Markdown("", elem_id="cs-pred-summary")
                        cmp_md = gr.Markdown("", elem_id="cs-compare")
                    with gr.Tab("④ Export", id="export", elem_id="cs-tab-export"):
                        gr.Markdown(HELP["export"], elem_classes="cs-step-help")
                        with gr.Row():
                            source = gr.Radio([("Prediction", "prediction"),
                                               ("My annotations", "annotations")],
                                              value="prediction", label="Export")
                            ex_scope = gr.Radio([("This image", "current"),
                                                 ("All images", "all")], value="current",
                                                label="Images")
                        formats = gr.CheckboxGroup(
                            export_format_choices(),
                            value=["tiff", "geojson", "imagej", "coco", "csv"], label="Formats",
                            elem_id="cs-formats")
                        export_btn = gr.Button("Export masks", variant="primary",
                                               elem_id="cs-export")
                        export_files = gr.File(label="Exported files", file_count="multiple",
                                               interactive=False, elem_id="cs-export-files")
                        with gr.Row():
                            model_btn = gr.Button("Download model (.zip)", elem_id="cs-model")
                            save_btn = gr.Button("Save project (.zip)", elem_id="cs-save")
                        with gr.Row():
                            model_file = gr.File(label="Model", interactive=False,
                                                 elem_id="cs-model-file")
                            project_file = gr.File(label="Project", interactive=False,
                                                   elem_id="cs-project-file")
                        load_file = gr.File(label="Open a saved project (.zip)",
                                            file_types=[".zip"], type="filepath",
                                            elem_id="cs-load-project")

        canvas_out = [canvas, status, summary, cells]
        image_out = [image_dd, image_info, channels, low, high, tabs, *canvas_out]
        rounds_out = [rounds, round_dd]

        # Gradio's "processing | 0.1s" text and its "Error" badge go on the canvas only, never
        # into the status and counts lines (even with show_progress="hidden" it shows them there).
        on_canvas = {"show_progress_on": [canvas]}
        demo.load(ses.restore_session(ctx), [session_token],
                  [state, sam_md, session_token, *image_out, *rounds_out, margin, zoom],
                  **on_canvas)
        warm = dict(fn=img.prepare_sam, inputs=[state], outputs=[status], show_progress="minimal",
                    **on_canvas, **sam)
        # Clear the upload box afterwards: the next upload then adds only the new files.
        files.upload(img.upload, [state, files], image_out, **on_canvas).then(
            lambda: None, None, [files]).success(**warm)
        example_btn.click(img.load_example(ctx), [state], image_out, **on_canvas).success(**warm)
        image_dd.input(img.select_image, [state, image_dd], image_out, **on_canvas).success(**warm)
        apply_btn.click(img.apply_display, [state, channels, low, high, stain], image_out,
                        **on_canvas).success(**warm)
        remove_btn.click(img.remove_image, [state], image_out, **on_canvas)

        # Clicks skip the queue: one direct request instead of join + event stream halves the
        # click -> overlay time (measured in the browser test); SamAnnotator is thread-safe and
        # a click only decodes (the embedding is computed beforehand in the "sam" group).
        canvas.select(ann.click, [state, mode], [*canvas_out, editor], trigger_mode="multiple",
                      show_progress="hidden", queue=False, **on_canvas)
        # Zooming and panning also put the new crop under the brush: strokes map to the image.
        zoom.input(ann.zoom, [state, zoom], [*canvas_out, editor], show_progress="hidden",
                   **on_canvas)
        for direction, pan_btn in pan_btns.items():
            pan_btn.click(ann.pan_handler(direction), [state], [*canvas_out, editor],
                          show_progress="hidden", **on_canvas)
        for button, handler in ((fg_btn, ann.accept_foreground), (bg_btn, ann.accept_background),
                                (clear_btn, ann.clear_prompts), (undo_btn, ann.undo),
                                (delete_btn, ann.delete_selected),
                                (auto_all_btn, ann.accept_all_candidates),
                                (pred_all_btn, ann.accept_all_predicted)):
            button.click(handler, [state], canvas_out, show_progress="hidden", **on_canvas)
        auto_btn.click(ann.auto_masks, [state], canvas_out, **sam, **on_canvas)
        show_pred.input(ann.show_prediction, [state, show_pred], canvas_out, **on_canvas)
        margin.input(ann.set_margin, [state, margin], [status], show_progress="hidden",
                     show_progress_on=[margin],
                     queue=False)
        cells.select(ann.select_cell_row, [state], canvas_out, **on_canvas)
        brush_acc.expand(ann.load_brush_editor, [state], [editor])
        for button, handler in ((paint_bg_btn, ann.paint_background),
                                (paint_fg_btn, ann.paint_foreground),
                                (paint_erase_btn, ann.paint_erase)):
            button.click(handler, [state, editor], [*canvas_out, editor], **on_canvas)

        # The run itself gives Train back in its last update (done, stopped or refused); the
        # trailing disarm covers a run that never started (e.g. the queue was full).
        train_btn.click(trn.arm, [state], [train_btn, stop_btn, progress]).success(
            trn.train, [state, family, start, seconds, steps, batch, patch, lr, warmup, seed,
                        train_diameter],
            [progress, loss_plot, *rounds_out, train_btn, stop_btn], show_progress="hidden",
            **gpu,
        ).then(trn.disarm, None, [train_btn, stop_btn])
        stop_btn.click(trn.stop, [state], [stop_md], concurrency_limit=None)
        rollback_btn.click(trn.rollback, [state, round_dd], [*rounds_out, *canvas_out],
                           **on_canvas)

        predict_btn.click(res.predict, [state, scope, prob, min_size, right, flow_qc, diameter],
                          [slider, pred_md, legend, cmp_md], **gpu).success(
            trn.refresh_rounds, [state], rounds_out)
        right.input(res.show_comparison, [state, right], [slider, legend, cmp_md])
        correct_btn.click(res.correct, [state], [tabs, mode, show_pred, *canvas_out],
                          **on_canvas)
        export_btn.click(res.export, [state, source, ex_scope, formats], [export_files])
        model_btn.click(res.export_model, [state], [model_file])
        save_btn.click(res.save_project, [state], [project_file])
        load_file.upload(res.load_project, [state, load_file], [*image_out, *rounds_out],
                         **on_canvas)
    demo.queue(default_concurrency_limit=8, max_size=128)
    return demo
