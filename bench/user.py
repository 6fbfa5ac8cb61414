"""Simulated-user benchmark: annotate the way a person would in the web app, train, predict.

``python -m bench user [--data NAME|FILE.npz] [--cells 10] [--images 4] [--test 8] [--seeds 0,1,2]
[--seconds S | --steps N] [--json]``

Drives the same core calls as the web UI's handlers (a
:class:`cellsparse_app.session.workspace.Workspace`, not the CLI). On each of K training images
(the split of :mod:`bench.sparse`), N cells chosen at random per seed (the objects
``bench.conditions.select_objects`` picks) are annotated like this:

* ``sam``: one positive click at the cell's deepest interior point (distance-transform maximum of
  the true mask), the prompt engine's mask accepted if its IoU with the true cell is >= 0.5;
* ``box``: otherwise prompts cleared and a box prompt at the cell's slightly padded bounding box;
* ``outline``: if that is still below 0.5, a hand-drawn outline (points along the true cell's edge,
  simplified by 1 px) through ``Workspace.tools.outline``;
* ``skipped``: Accept raised ``ValueError`` twice (pressed once more after the first failure).

Then two Background boxes per image (BACKGROUND_BOX mode): the largest rectangles holding no true
cell, kept a few pixels off the cells. Annotation defaults are left alone (e.g. any automatic
background margin around accepted cells). Training uses ``TrainConfig()`` untouched (the UI's
defaults: cellpose family, the device's default time budget) through ``Workspace.rounds``; the
held-out test images are added to the same project with their ground truth and predicted with
``PredictConfig()`` as the UI's Predict does; AP is pooled over them.

Beside it, the ``band`` reference on the same cells: their true masks plus a 6-px Background ring
(true background only), trained and predicted the same way in a second workspace.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import ndimage as ndi

from bench.conditions import select_objects, split_samples

DEFAULT_DATA = "dsb2018_fluo_dev"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: IoU below which the simulated user does not accept a mask and tries the next tool.
ACCEPT_IOU = 0.5
#: Width of the reference protocol's Background ring around each annotated cell.
BAND_PX = 6
#: Pixels a Background box keeps away from any true cell (a person does not hug cells).
BOX_CLEARANCE = 4
BACKGROUND_BOXES = 2
PATHS = ("sam", "box", "outline", "skipped")


@dataclasses.dataclass(frozen=True)
class UserSettings:
    data: str = DEFAULT_DATA
    cells: int = 10
    images: int = 4
    test: int = 8
    seeds: tuple[int, ...] = (0, 1, 2)
    seconds: float | None = None  # None: TrainConfig()'s default budget
    steps: int | None = None
    crop: int | None = None
    sam_model: str = "vit_t"  # the app's default (AppSettings.sam_model)
    out: Path | None = RESULTS_DIR


def parse_args(argv: Sequence[str] | None = None) -> tuple[UserSettings, bool]:
    p = argparse.ArgumentParser(prog="python -m bench user", description=__doc__.splitlines()[0])
    p.add_argument("--data", default=DEFAULT_DATA,
                   help="data set name in ../shared/data or a path to an .npz file")
    p.add_argument("--cells", type=int, default=10, help="cells annotated per training image")
    p.add_argument("--images", type=int, default=4, help="training images")
    p.add_argument("--test", type=int, default=8, help="held-out test images")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (which cells)")
    p.add_argument("--seconds", type=float, help="training budget instead of the default")
    p.add_argument("--steps", type=int, help="fixed step count instead of the time budget")
    p.add_argument("--crop", type=int, help="centre-crop every image to this side (quick checks)")
    p.add_argument("--sam-model", default="vit_t", help="prompt engine backend (app default)")
    p.add_argument("--out", default=str(RESULTS_DIR), help="folder for the report ('' = none)")
    p.add_argument("--json", action="store_true", help="one JSON line per seed on stdout")
    a = p.parse_args(argv)
    if min(a.cells, a.images, a.test) < 1:
        p.error("--cells, --images and --test must be >= 1")
    settings = UserSettings(
        data=a.data, cells=a.cells, images=a.images, test=a.test,
        seeds=tuple(int(s) for s in a.seeds.split(",") if s.strip()), seconds=a.seconds,
        steps=a.steps, crop=a.crop, sam_model=a.sam_model, out=Path(a.out) if a.out else None,
    )
    return settings, a.json


def load_samples(data: str, crop: int | None = None) -> list[Any]:
    """Samples of a data set name (in ``../shared/data``) or an ``.npz`` path, optionally
    centre-cropped to ``crop`` x ``crop``."""
    from bench.datasets import Sample, load_dataset
    from cellsparse_app.data.labels import relabel_sequential

    path = Path(data)
    if path.suffix == ".npz":
        samples, _ = load_dataset(path.stem, data_dir=path.parent)
    else:
        samples, _ = load_dataset(data)
    if crop:
        out = []
        for s in samples:
            h, w = s.mask.shape
            r0, c0 = max(0, (h - crop) // 2), max(0, (w - crop) // 2)
            sl = (slice(r0, r0 + crop), slice(c0, c0 + crop))
            out.append(Sample(s.image[sl], relabel_sequential(s.mask[sl]).astype(np.int32),
                              s.name))
        samples = out
    return samples


# -- what the simulated person sees and does ------------------------------------------------------
def iou(a: np.ndarray | None, b: np.ndarray) -> float:
    if a is None:
        return 0.0
    union = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b) / union) if union else 0.0


def deepest_point(cell: np.ndarray) -> tuple[int, int]:
    """Where a person clicks a cell: the interior point farthest from its border."""
    dist = ndi.distance_transform_edt(np.pad(cell, 1))[1:-1, 1:-1]
    ties = np.argwhere(dist == dist.max())  # a ridge of equal depth: its middle
    row, col = ties[np.argmin(((ties - ties.mean(axis=0)) ** 2).sum(axis=1))]
    return int(row), int(col)


def padded_box(cell: np.ndarray) -> tuple[int, int, int, int]:
    """The cell's bounding box, padded by 2 px + 5 % of its size, inside the image."""
    rows, cols = np.nonzero(cell)
    pad = 2 + int(round(0.05 * max(np.ptp(rows), np.ptp(cols))))
    h, w = cell.shape
    return (max(rows.min() - pad, 0), max(cols.min() - pad, 0),
            min(rows.max() + pad, h - 1), min(cols.max() + pad, w - 1))


def outline_points(cell: np.ndarray) -> list[tuple[float, float]]:
    """A hand-drawn outline: ``(row, col)`` points along the true cell's edge (its longest
    contour between inside and outside pixel centres, simplified by 1 px)."""
    from skimage.measure import approximate_polygon, find_contours

    contour = max(find_contours(np.pad(cell, 1).astype(np.float32), 0.5), key=len) - 1
    return [(float(r), float(c)) for r, c in approximate_polygon(contour, 1.0)[:-1]]


def largest_empty_rectangle(free: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(row0, col0, row1, col1)`` (inclusive) of the largest all-True rectangle, or None."""
    h, w = free.shape
    heights = np.zeros(w, dtype=np.int64)
    best, best_box = 0, None
    for r in range(h):
        heights = np.where(free[r], heights + 1, 0)
        stack: list[int] = []  # histogram method: column indices with increasing heights
        hs = heights.tolist() + [0]
        for c, height in enumerate(hs):
            while stack and hs[stack[-1]] >= height:
                top = stack.pop()
                left = stack[-1] + 1 if stack else 0
                area = hs[top] * (c - left)
                if area > best:
                    best, best_box = area, (r - hs[top] + 1, left, r, c - 1)
            stack.append(c)
    return best_box


def background_boxes(dense: np.ndarray, n: int = BACKGROUND_BOXES) -> list[tuple[int, ...]]:
    """The ``n`` largest cell-free rectangles, ``BOX_CLEARANCE`` px off any true cell."""
    near_cell = ndi.distance_transform_edt(dense == 0) <= BOX_CLEARANCE
    free = ~near_cell
    boxes = []
    for _ in range(n):
        box = largest_empty_rectangle(free)
        if box is None:
            break
        boxes.append(box)
        free[box[0]:box[2] + 1, box[1]:box[3] + 1] = False
    return boxes


def annotate_cell(ws: Any, cell: np.ndarray) -> tuple[str, tuple[int, int], float | None, int]:
    """Click, fall back to a box, then an outline; accept. Returns (path, click, IoU, presses)."""
    from cellsparse_app.session.sam_bridge import BOX, POSITIVE

    click = deepest_point(cell)
    ws.tools.click(row=click[0], col=click[1], mode=POSITIVE)
    path = "sam"
    if iou(ws.canvas.prompts.preview, cell) < ACCEPT_IOU:
        ws.tools.clear_prompts()
        r0, c0, r1, c1 = padded_box(cell)
        ws.tools.click(row=r0, col=c0, mode=BOX)
        ws.tools.click(row=r1, col=c1, mode=BOX)
        path = "box"
        if iou(ws.canvas.prompts.preview, cell) < ACCEPT_IOU:
            ws.tools.clear_prompts()
            ws.tools.outline(outline_points(cell))
            path = "outline"
    for presses in (1, 2):  # a refused Accept is pressed once more, then the cell is skipped
        try:
            ws.tools.accept_foreground()
        except ValueError:
            continue
        labels = ws.project.labels(ws.current)
        return path, click, iou(labels == labels.max(), cell), presses
    ws.tools.clear_prompts()
    return "skipped", click, None, 2


def annotate_image(ws: Any, image_id: str, dense: np.ndarray, ids: Sequence[int],
                   row: dict[str, Any], index: int) -> None:
    from cellsparse_app.session.sam_bridge import BACKGROUND_BOX

    ws.select_image(image_id)
    for cell_id in ids:
        path, click, mask_iou, presses = annotate_cell(ws, dense == cell_id)
        row["paths"][path] += 1
        row["second_press"] += presses == 2 and path != "skipped"
        row["clicks"].append([index, int(cell_id), *click])
        if mask_iou is not None:
            row["mask_ious"].append(mask_iou)
    for r0, c0, r1, c1 in background_boxes(dense):
        ws.tools.click(row=r0, col=c0, mode=BACKGROUND_BOX)
        ws.tools.click(row=r1, col=c1, mode=BACKGROUND_BOX)
        row["bg_boxes"] += 1


def band_labels(dense: np.ndarray, ids: Sequence[int], width: int = BAND_PX) -> np.ndarray:
    """Reference labels: the chosen cells' true masks plus a ``width``-px Background ring."""
    from cellsparse_app.data.labels import select_sparse

    labels = select_sparse(dense, ids, background=False)
    ring = (ndi.distance_transform_edt(labels <= 0) <= width) & (dense == 0)
    labels[ring] = 0
    return labels


# -- one seed -------------------------------------------------------------------------------------
def train_and_score(ws: Any, cfg: Any, test_ids: Sequence[str], truths: Sequence[np.ndarray]):
    """Drain ``ws.rounds.train(cfg)``, predict ``test_ids`` as the UI's Predict does, pool AP."""
    from cellsparse_app.data.metrics import evaluate_many
    from cellsparse_app.predict import PredictConfig
    from cellsparse_app.session import results, rounds

    run, notices, t0 = ws.rounds.train(cfg), [], time.perf_counter()
    try:
        while True:
            item = next(run)
            if isinstance(item, rounds.Notice):
                notices.append(item.text)
    except StopIteration as finished:
        record = finished.value
    train_s = time.perf_counter() - t0
    load = round(os.getloadavg()[0], 2)  # training under time budget: fewer steps on a busy box
    if record is None:
        raise RuntimeError("training stopped before its first step")
    results.predict_images(ws.project, list(test_ids), PredictConfig())
    preds = [ws.project.prediction(i) for i in test_ids]
    ev = evaluate_many(truths, preds, (0.5, 0.75))
    return {"ap50": ev["ap50"], "ap75": ev["ap75"], "train_s": round(train_s, 1),
            "steps": record.steps, "n_pred": ev["n_pred"], "load": load, "notices": notices}


def run_seed(train: Sequence[Any], test: Sequence[Any], settings: UserSettings, seed: int,
             annotator: Any, root: Path, log=print) -> dict[str, Any]:
    from cellsparse_app.session.workspace import Workspace
    from cellsparse_app.train import TrainConfig

    cfg = TrainConfig()  # the UI's defaults, untouched ...
    if settings.steps:  # ... unless a quick check asks for a shorter run
        cfg = cfg.replace(steps=settings.steps, max_seconds=None)
    elif settings.seconds:
        cfg = cfg.replace(max_seconds=settings.seconds)
    chosen = [select_objects(s.mask, str(settings.cells), seed, i) for i, s in enumerate(train)]
    row: dict[str, Any] = {
        "dataset": Path(settings.data).stem, "seed": seed, "prompt_engine": annotator.model_name,
        "outline_api": None, "cells_requested": int(sum(len(c) for c in chosen)),
        "paths": dict.fromkeys(PATHS, 0), "second_press": 0, "bg_boxes": 0, "clicks": [],
        "mask_ious": [],
    }
    truths = [s.mask for s in test]
    results = {}
    for kind in ("user", "band"):
        ws = Workspace.create(root, sam=lambda: annotator)
        try:
            train_ids = [ws.project.add_image(s.image, f"train{i}_{s.name}")
                         for i, s in enumerate(train)]
            test_ids = [ws.project.add_image(s.image, f"test{i}_{s.name}", truth=s.mask)
                        for i, s in enumerate(test)]
            t0 = time.perf_counter()
            for i, (image_id, s, ids) in enumerate(zip(train_ids, train, chosen)):
                if kind == "user":
                    annotate_image(ws, image_id, s.mask, ids, row, i)
                else:
                    ws.project.editor(image_id).replace(band_labels(s.mask, ids))
                    ws.project.edited(image_id)
            if kind == "user":
                row["outline_api"] = hasattr(ws.tools, "outline")
                row["margin_px"] = getattr(ws, "margin", None)  # the app's default, untouched
                row["annotate_s"] = round(time.perf_counter() - t0, 1)
                totals = ws.project.totals()
                row["cells"], row["background_px"] = totals["n_objects"], totals["background_px"]
            else:
                row["band_background_px"] = ws.project.totals()["background_px"]
            results[kind] = train_and_score(ws, cfg, test_ids, truths)
        finally:
            ws.close()
        log(f"  seed {seed} {kind}: AP50 {results[kind]['ap50']:.3f} "
            f"AP75 {results[kind]['ap75']:.3f} ({results[kind]['steps']} steps, "
            f"{results[kind]['train_s']:.0f} s)")
    row.update(results["user"])
    row.update({f"band_{k}": v for k, v in results["band"].items()})
    ious = row.pop("mask_ious")
    row["mask_iou_median"] = float(np.median(ious)) if ious else float("nan")
    row["mask_iou_min"] = float(np.min(ious)) if ious else float("nan")
    row["n_test_objects"] = int(sum(int(t.max()) for t in truths))
    return row


# -- report ---------------------------------------------------------------------------------------
def _mean_std(rows: Sequence[dict], key: str, digits: int = 3) -> str:
    vals = np.array([r[key] for r in rows], dtype=float)
    return f"{np.mean(vals):.{digits}f} ± {np.std(vals):.{digits}f}"


def _ratio(rows: Sequence[dict], key: str) -> str:
    user, band = np.mean([r[key] for r in rows]), np.mean([r[f"band_{key}"] for r in rows])
    return f"{user / band:.2f}" if band > 0 else "n/a"


def report(rows: Sequence[dict[str, Any]], settings: UserSettings) -> str:
    ratio = [r["ap50"] / r["band_ap50"] if r["band_ap50"] else np.nan for r in rows]
    paths = {p: sum(r["paths"][p] for r in rows) for p in PATHS}
    budget = (f"{settings.steps} steps" if settings.steps else
              f"{settings.seconds:g} s" if settings.seconds else "TrainConfig() default budget")
    lines = [
        f"# Simulated user vs band reference: {rows[0]['dataset']}", "",
        f"{len(rows)} seed(s) {list(settings.seeds)}; {settings.images} training image(s) x "
        f"{settings.cells} cells, {rows[0]['n_test_objects']} test objects in up to "
        f"{settings.test} test image(s); {budget}; prompt engine {rows[0]['prompt_engine']}; "
        f"mean ± std over seeds.", "",
        "| protocol | AP@0.5 | AP@0.75 | train s | steps |", "|---|---|---|---|---|",
        f"| simulated user | {_mean_std(rows, 'ap50')} | {_mean_std(rows, 'ap75')} | "
        f"{_mean_std(rows, 'train_s', 0)} | {_mean_std(rows, 'steps', 0)} |",
        f"| band ({BAND_PX} px ring) | {_mean_std(rows, 'band_ap50')} | "
        f"{_mean_std(rows, 'band_ap75')} | {_mean_std(rows, 'band_train_s', 0)} | "
        f"{_mean_std(rows, 'band_steps', 0)} |", "",
        f"user / band AP@0.5: {_ratio(rows, 'ap50')} (ratio of the means; per seed "
        f"{', '.join(f'{x:.2f}' for x in ratio)}); AP@0.75: {_ratio(rows, 'ap75')}", "",
        f"cells annotated {sum(r['cells'] for r in rows)} of "
        f"{sum(r['cells_requested'] for r in rows)} requested; paths: "
        + ", ".join(f"{p} {n}" for p, n in paths.items())
        + f"; Accept pressed twice {sum(r['second_press'] for r in rows)}x; accepted-mask IoU "
        f"median {_mean_std(rows, 'mask_iou_median')}; Workspace.outline "
        f"{'used' if rows[0]['outline_api'] else 'MISSING (true mask set as preview)'}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING)
    settings, as_json = parse_args(argv)
    from cellsparse_app.session.sam_bridge import create_annotator

    log = (lambda m: print(m, file=sys.stderr, flush=True)) if as_json else (
        lambda m: print(m, flush=True))
    train, test = split_samples(load_samples(settings.data, settings.crop), settings.images,
                                settings.test)
    annotator = create_annotator(settings.sam_model)
    log(f"user benchmark on {settings.data}: {len(train)} training / {len(test)} test image(s), "
        f"{settings.cells} cells per image, seeds {list(settings.seeds)}, prompt engine "
        f"{annotator.model_name}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-user-") as root:
        for seed in settings.seeds:
            row = run_seed(train, test, settings, seed, annotator, Path(root), log)
            rows.append(row)
            if as_json:
                print(json.dumps(row), flush=True)
    text = report(rows, settings)
    print("\n" + text, flush=True)
    if settings.out is not None:
        settings.out.mkdir(parents=True, exist_ok=True)
        stem = settings.out / f"user-{rows[0]['dataset']}-{time.strftime('%Y%m%d-%H%M%S')}"
        Path(f"{stem}.md").write_text(text)
        Path(f"{stem}.json").write_text(json.dumps(rows, indent=1))
        log(f"written to {stem}.md")
    return 0
