"""Handlers of the Train tab: a queued training run with progress, live loss curve and stop.

The run is a generator handler in the ``"gpu"`` concurrency group: it yields the progress bar
and the loss curve about twice a second. Stop sets the workspace's stop flag; the engine then
ends after its current step and the model trained so far is saved as a round, so nothing is lost.
While other trainings of the process (REST jobs, other users) hold the training slot, the bar
says how many are ahead; Stop then leaves the queue without training.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Generator

import gradio as gr
import pandas as pd

from cellsparse_app.session.rounds import Notice, Waiting
from cellsparse_app.session.workspace import Workspace
from cellsparse_app.ui import formatting as fmt
from cellsparse_app.ui.errors import friendly, require, to_gr_error
from cellsparse_app.ui.fields import optional_float, optional_int
from cellsparse_app.ui.handlers_images import canvas_outputs

logger = logging.getLogger(__name__)

#: Seconds between two UI updates while training.
UPDATE_EVERY = 0.5
#: Most points sent to the loss plot per update.
PLOT_POINTS = 400
SCRATCH, CONTINUE = "scratch", "continue"


def loss_frame(curve: list[tuple[int, float]]) -> pd.DataFrame:
    """The loss curve as the LinePlot's data frame (thinned to :data:`PLOT_POINTS`)."""
    step = max(1, len(curve) // PLOT_POINTS)
    kept = curve[::step] + ([curve[-1]] if curve and (len(curve) - 1) % step else [])
    # 4 significant digits: the plot's axis then reads 1.283, not 1.283109.
    return pd.DataFrame([(s, float(f"{loss:.4g}")) for s, loss in kept], columns=["step", "loss"])


def rounds_outputs(ws: Workspace) -> tuple:
    """(rounds table, round chooser) for the current project."""
    project = ws.project
    rounds = project.rounds
    return (
        fmt.rounds_rows(rounds, project.active_round),
        gr.update(choices=fmt.round_choices(rounds), value=project.active_round),
    )


@friendly
def arm(ws: Workspace | None) -> tuple:
    """Train was clicked: reset the stop flag, disable Train, enable Stop."""
    require(ws).rounds.arm_training()
    return (gr.update(interactive=False), gr.update(interactive=True),
            fmt.progress_html(0.0, "waiting for a free training slot…", "idle"))


def disarm() -> tuple:
    """The run ended (any way): enable Train, disable Stop."""
    return gr.update(interactive=True), gr.update(interactive=False)


@friendly
def stop(ws: Workspace | None) -> str:
    require(ws).rounds.request_stop()
    return fmt.status_markdown("Stopping after the current step; the model so far is kept…")


def train_config(
    family: str, seconds: Any, steps: Any, batch_size: Any = None, patch_size: Any = None,
    learning_rate: Any = None, warmup_steps: Any = None, seed: Any = None, diameter: Any = None,
) -> Any:
    """A ``TrainConfig`` from the Train tab's fields: every empty field keeps its default (the
    same ``TrainConfig()`` the CLI and API start from); exact steps win over the time budget.
    ``diameter`` (px): the cells' size in these images; empty: measured from the annotated cells."""
    from cellsparse_app.models.base import get_family
    from cellsparse_app.train import TrainConfig

    get_family(family)  # unknown names fail here, naming the known ones
    n_steps = optional_int(steps, "Exact steps", low=1)
    budget = None if n_steps else optional_float(seconds, "Time budget (s)", low=0,
                                                 low_inclusive=False)
    changes: dict[str, Any] = {
        "family": family, "steps": n_steps, "max_seconds": None if n_steps else budget,
    }
    for name, value, low in (("batch_size", batch_size, 1), ("patch_size", patch_size, 16),
                             ("warmup_steps", warmup_steps, 0), ("seed", seed, 0)):
        number = optional_int(value, name.replace("_", " ").capitalize(), low=low)
        if number is not None:
            changes[name] = number
    rate = optional_float(learning_rate, "Learning rate", low=0, low_inclusive=False)
    if rate is not None:
        changes["learning_rate"] = rate
    size = optional_float(diameter, "Cell diameter (px)", low=0, low_inclusive=False)
    if size is not None:
        changes["diameter"] = size
    return TrainConfig().replace(**changes)


def _buttons(training: bool) -> tuple:
    """(Train, Stop) button updates."""
    return gr.update(interactive=not training), gr.update(interactive=training)


def train(
    ws: Workspace | None, family: str, start: str, seconds: Any, steps: Any,
    batch_size: Any = None, patch_size: Any = None, learning_rate: Any = None,
    warmup_steps: Any = None, seed: Any = None, diameter: Any = None,
) -> Generator[tuple, None, None]:
    """Run one training round. Outputs: progress bar, loss plot, rounds table, round chooser,
    Train button, Stop button.

    Whatever happens -- settings refused, nothing annotated, a failure mid-run -- the last
    update gives Train back and says why in the progress bar; the error is then shown as a
    message (annotations and earlier rounds are never touched).
    """
    curve: list[tuple[int, float]] = []
    try:
        yield from _train(ws, family, start, seconds, steps, batch_size, patch_size,
                          learning_rate, warmup_steps, seed, diameter, curve)
    except Exception as exc:  # the edge of the app: every failure becomes a message
        error = to_gr_error(exc)
        yield (fmt.progress_html(None, f"not trained: {error.message} — annotations and earlier "
                                 "rounds are kept", "failed"),
               loss_frame(curve), gr.skip(), gr.skip(), *_buttons(False))
        raise error from exc


def _train(
    ws: Workspace | None, family: str, start: str, seconds: Any, steps: Any, batch_size: Any,
    patch_size: Any, learning_rate: Any, warmup_steps: Any, seed: Any, diameter: Any,
    curve: list[tuple[int, float]],
) -> Generator[tuple, None, None]:
    ws = require(ws)
    cfg = train_config(family, seconds, steps, batch_size, patch_size, learning_rate,
                       warmup_steps, seed, diameter)
    budget = cfg.max_seconds
    run = ws.rounds.train(cfg, continue_training=start == CONTINUE)
    last, waiting = 0.0, ""
    running = _buttons(True)
    yield fmt.progress_html(0.0, "preparing data…"), loss_frame(curve), gr.skip(), gr.skip(), \
        *running
    try:
        while True:
            try:
                item: Any = next(run)
            except StopIteration as finished:
                record = finished.value
                break
            if isinstance(item, Notice):
                gr.Warning(item.text)
                continue
            if isinstance(item, Waiting):
                if item.text != waiting:
                    waiting = item.text
                    yield fmt.progress_html(0.0, item.text, "idle"), loss_frame(curve), \
                        gr.skip(), gr.skip(), *running
                continue
            curve.append((int(item.step), float(item.loss)))
            if time.monotonic() - last >= UPDATE_EVERY:
                last = time.monotonic()
                fraction, text = fmt.progress_text(item, budget)
                yield fmt.progress_html(fraction, text), loss_frame(curve), gr.skip(), \
                    gr.skip(), *running
    finally:
        run.close()  # a closed page stops the engine cleanly and still saves its model
    if record is None:
        text, state = "Stopped before the first step: nothing changed", "stopped"
    elif record.cancelled:
        text, state = (f"Stopped at step {record.steps}: saved as round {record.index} "
                       "(earlier rounds kept)", "stopped")
    else:
        text = (f"Done: round {record.index}, {record.steps} steps in {record.seconds:.0f} s, "
                f"loss {record.final_loss:.4f}{fmt.round_notes(record)} — now Predict")
        state = "done"
    yield fmt.progress_html(1.0 if state == "done" else None, text, state), loss_frame(curve), \
        *rounds_outputs(ws), *_buttons(False)


@friendly
def rollback(ws: Workspace | None, index: int | None) -> tuple:
    """Make a round active again (its model and annotations). Outputs: rounds outputs +
    canvas outputs."""
    ws = require(ws)
    if index is None:
        raise ValueError("choose a round first")
    view = ws.rounds.rollback(int(index))
    return (*rounds_outputs(ws), *canvas_outputs(view))


@friendly
def refresh_rounds(ws: Workspace | None) -> tuple:
    return rounds_outputs(require(ws))
