"""Text, tables and small HTML pieces the UI shows (formatting only, no computation)."""

from __future__ import annotations

import html
import time
from typing import Any, Sequence

from cellsparse_app.data.annotations import AnnotationSummary
from cellsparse_app.session.results import Comparison, Prediction, Skipped
from cellsparse_app.storage.project import ImageRecord, RoundRecord
from cellsparse_app.ui.choices import EXPORT_FORMAT_LABELS

LEGEND_HTML = (
    '<div class="cs-legend">'
    '<span><i style="background:linear-gradient(90deg,#ff6347,#f5c542,#3cb44b,#a05cff)">'
    '</i>Foreground cells (one colour each)</span>'
    '<span><i style="background:#286eff"></i>Background</span>'
    '<span><i style="background:#444;border:1px solid #999"></i>Unlabelled (ignored)</span>'
    '<span><i style="background:#ffdd00"></i>SAM mask / outline</span>'
    '<span><i style="background:#00e6ff"></i>Predicted</span>'
    '<span><i style="background:#ff3ce6"></i>Auto-mask candidate</span>'
    "</div>"
)
ERRORS_LEGEND = (
    '<div class="cs-legend"><span><i style="background:#32d25a"></i>Correct (TP)</span>'
    '<span><i style="background:#ff3cdc"></i>False positive</span>'
    '<span><i style="background:#ffd700"></i>Missed (FN)</span>'
    '<span><i style="background:#a0a0a0"></i>On unlabelled area (not scored)</span></div>'
)
CHANGES_LEGEND = (
    '<div class="cs-legend"><span><i style="background:#32d25a"></i>New this round</span>'
    '<span><i style="background:#ff3cdc"></i>Gone this round</span>'
    '<span><i style="background:#a0a0a0"></i>Unchanged</span></div>'
)
#: What a comparison's errors were scored against, in words.
REFERENCES = {"truth": "ground truth", "annotations": "your annotations"}
ROUND_COLUMNS = ["round", "family", "from", "steps", "time s", "loss", "cells", "BG px",
                 "AP50 annot.", "AP50 GT", "status"]
CELL_COLUMNS = ["cell", "area px", "row", "col"]


def summary_markdown(summary: AnnotationSummary, totals: dict[str, int] | None = None) -> str:
    """Counts line for the annotation tools."""
    text = (
        f"**{summary.n_objects}** Foreground cell{'s' if summary.n_objects != 1 else ''} · "
        f"**{100 * summary.background_fraction:.1f}%** Background · "
        f"{100 * (1 - summary.labelled_fraction):.1f}% unlabelled"
    )
    if totals and totals.get("annotated_images", 0) > 1:
        text += (f"  \nProject: {totals['n_objects']} cells on "
                 f"{totals['annotated_images']} images")
    return text


def sam_markdown(headline: str, notice: str | None) -> str:
    """The header line naming the SAM backend; the fallback's explanation folds away."""
    text = f"**Segment Anything:** {html.escape(headline)}"
    if notice:
        text += (f" <details><summary>Why not SAM, and how to get it</summary>"
                 f"{html.escape(notice)}</details>")
    return text


def status_markdown(message: str) -> str:
    return f"→ {html.escape(message)}" if message else ""


def image_choices(records: Sequence[ImageRecord]) -> list[tuple[str, str]]:
    return [(r.name, r.id) for r in records]


def image_info(record: ImageRecord, has_example_truth: bool = False) -> str:
    channels = f", {record.n_channels} channels" if record.n_channels > 1 else ""
    note = " · has ground truth (AP vs full annotation shown)" if has_example_truth else ""
    size = f"{record.shape[1]}×{record.shape[0]} px"
    return f"`{record.name}` · {size} · {record.dtype}{channels}{note}"


def cells_rows(objects: list[dict[str, int]]) -> list[list[int]]:
    return [[o["id"], o["area"], o["row"], o["col"]] for o in objects]


def progress_html(fraction: float | None, text: str, state: str = "running") -> str:
    """A progress bar (``state``: running, done, stopped, failed, idle)."""
    pct = 0.0 if fraction is None else max(0.0, min(1.0, fraction)) * 100
    return (
        f'<div class="cs-progress cs-{state}" data-state="{state}">'
        f'<div class="cs-bar" style="width:{pct:.1f}%"></div>'
        f'<span class="cs-progress-text">{html.escape(text)}</span></div>'
    )


def progress_text(p: Any, max_seconds: float | None) -> tuple[float | None, str]:
    """Fraction done and a line of text for a ``TrainProgress``."""
    of = f"/{p.total_steps}" if p.total_steps else ""
    fraction = getattr(p, "fraction", None)  # the engine's estimate of the budget used
    if fraction is None and p.total_steps:
        fraction = p.step / p.total_steps
    elif fraction is None and max_seconds:
        fraction = p.elapsed / max_seconds
    return fraction, f"step {p.step}{of} · loss {p.loss:.4f} · {p.elapsed:.0f} s"


def _ap(metrics: dict | None) -> str:
    if not metrics or not metrics.get("ap"):
        return "–"
    return f"{metrics['ap'][0]:.3f}"


def rounds_rows(rounds: Sequence[RoundRecord], active: int | None) -> list[list[Any]]:
    """The rounds table; AP columns average over the images predicted in that round."""
    rows = []
    for r in rounds:
        ann = [m["annotations"]["ap"][0] for m in r.metrics.values() if "annotations" in m]
        gt = [m["truth"]["ap"][0] for m in r.metrics.values() if "truth" in m]
        status = "stopped early" if r.cancelled else "complete"
        status += " · active" if r.index == active else ""
        rows.append([
            r.index, r.family, r.parent if r.parent is not None else "scratch", r.steps,
            round(r.seconds, 1), None if r.final_loss is None else round(r.final_loss, 4),
            r.n_objects, r.background_px,
            round(sum(ann) / len(ann), 3) if ann else None,
            round(sum(gt) / len(gt), 3) if gt else None, status,
        ])
    return rows


def round_notes(record: RoundRecord) -> str:
    """What a user may wonder about a finished round: why it stopped before the time budget,
    and at which scale it saw the cells ("" when neither applies)."""
    notes = []
    if record.step_cap and record.steps >= record.step_cap and not record.cancelled:
        # Short: it ends the one-line progress bar (the README explains the cap).
        notes.append(f"stopped at {record.step_cap} steps (sparse labels: longer over-fits)")
    if record.diameter and abs(record.scale - 1.0) > 1e-3:
        notes.append(f"cells ~{record.diameter:.0f} px seen at "
                     f"{record.diameter * record.scale:.0f} px (×{record.scale:.2f})")
    return "".join(f"; {note}" for note in notes)


def round_choices(rounds: Sequence[RoundRecord]) -> list[tuple[str, int]]:
    return [(f"Round {r.index} ({r.family}, {time.strftime('%H:%M', time.localtime(r.created))})",
             r.index) for r in rounds]


def prediction_markdown(predictions: Sequence[Prediction]) -> str:
    """Lines per predicted image: count, time and AP where annotations/truth exist."""
    lines = []
    for p in predictions:
        parts = [f"**{p.name}**: **{p.n_objects}** objects ({p.seconds:.1f} s, round {p.round})"]
        if p.vs_annotations:
            m = p.vs_annotations
            parts.append(f"AP50 on your annotations {_ap(m)} (TP {m['tp'][0]}, FP {m['fp'][0]}, "
                         f"FN {m['fn'][0]})")
        if p.vs_truth:
            m = p.vs_truth
            parts.append(f"AP50 vs ground truth {_ap(m)} · AP75 {m['ap'][1]:.3f} "
                         f"(TP {m['tp'][0]}, FP {m['fp'][0]}, FN {m['fn'][0]} of {m['n_true']})")
        lines.append(" · ".join(parts))
    return "  \n".join(lines)


def comparison_markdown(c: Comparison) -> str:
    lines = [f"Round {c.round}: **{c.n_objects}** objects"]
    if c.metrics:
        m = c.metrics
        against = REFERENCES.get(c.errors_against or "", c.errors_against)
        lines.append(f"Errors vs {against}: AP50 **{m['ap'][0]:.3f}** · "
                     f"TP {m['tp'][0]} · FP {m['fp'][0]} · missed {m['fn'][0]}")
    if c.previous_round is not None:
        lines.append(f"Since round {c.previous_round}: +{c.n_new} new, −{c.n_removed} gone")
    return "  \n".join(lines)


def skipped_text(skipped: Sequence[Skipped]) -> str:
    """Why exports were left out, one clause each, naming formats as the menu does."""
    clauses = []
    for item in skipped:
        where = [item.image, EXPORT_FORMAT_LABELS.get(item.format, item.format)
                 if item.format else None]
        clauses.append(f"{', '.join(w for w in where if w)}: {item.reason}")
    return "; ".join(clauses)
