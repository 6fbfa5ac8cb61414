"""SAM prompt engine benchmark: embedding and click->mask latency, mask quality of a click.

``python -m bench sam [--quick] [--models vit_t,vit_b] [--size 512] [--repeats 3]``

Latency uses randomly initialised networks of the real architectures (same cost as trained
weights): for each model, the image encoder on a ``size x size`` image through every encoder
path (PyTorch fp32 = the reference, PyTorch bf16 autocast, ONNX Runtime fp32 and int8, and for
vit_t the opt-in 512-pixel encoder input, ONNX fp32/int8), with its ratio to the reference
measured in the same run and its relative error against the reference embedding (n/a at 512: a
32x32 grid, not comparable); then the click->mask time of one positive click on an already
embedded image through ``SamAnnotator.segment_from_points`` (cache lookup, prompt encoding, mask
decoding, upscaling). The classical ``fallback`` backend is timed too.

Quality: IoU of a click's mask with the annotated nucleus on real images (dsb2018 fluorescence),
for the fallback and for every SAM model whose real weights are in the cache.

Targets on 2 CPU cores: click->mask <= 50 ms; vit_t embedding <= 0.5 s for 512x512.
Timings are only meaningful on an otherwise idle machine (load average printed).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import platform
import statistics
import time
import warnings
from typing import Any, Callable, Sequence

import numpy as np

logger = logging.getLogger("bench.sam")

#: (engine, precision, encoder input side); sides below 1024 run for vit_t only (see
#: :mod:`cellsparse_app.sam.input_side`: faster, coarser, opt-in).
ENCODER_PATHS = (("torch", "fp32", 1024), ("torch", "bf16", 1024), ("onnx", "fp32", 1024),
                 ("onnx", "int8", 1024), ("onnx", "fp32", 512), ("onnx", "int8", 512))


def _times(fn: Callable[[], Any], repeats: int, warmup: int = 1,
           cpu: list[float] | None = None) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls (CPU seconds of the process appended to ``cpu``)."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        out.append(time.perf_counter() - start)
        if cpu is not None:
            cpu.append(time.process_time() - start_cpu)
    return out


def _load() -> str:
    try:
        return " ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def _test_image(size: int) -> np.ndarray:
    """A real nuclei image cropped/tiled to ``size x size`` (falls back to synthetic blobs)."""
    try:
        from bench.datasets import load_dataset

        samples, _ = load_dataset("dsb2018_fluo_dev")
        image = max(samples, key=lambda s: s.image.size).image
        reps = (-(-size // image.shape[0]), -(-size // image.shape[1]))
        return np.tile(image, reps + (1,) * (image.ndim - 2))[:size, :size]
    except FileNotFoundError:
        rng = np.random.default_rng(0)
        return (rng.random((size, size)) * 255).astype(np.uint8)


def latency_rows(model_type: str, size: int, repeats: int, clicks: int,
                 paths: Sequence[tuple[str, str, int]],
                 decoder_threads: int | None = None) -> list[dict[str, Any]]:
    """Embedding and click timings of ``model_type`` through each encoder path."""
    import torch

    from cellsparse_app.sam import SamAnnotator, WeightsManager
    from cellsparse_app.sam.engine import SamEngine, resolve_device
    from cellsparse_app.sam.input_side import STANDARD_SIDE, with_encoder_side
    from cellsparse_app.sam.onnx_encoder import compare_outputs
    from cellsparse_app.sam.registry import build_network, get_backend
    from cellsparse_app.sam.render import render_rgb

    spec = get_backend(model_type)
    model = build_network(spec, seed=0)
    image = _test_image(size)
    rgb = render_rgb(image)
    onnx_dir = WeightsManager().directory.parent / "onnx"
    device = resolve_device("auto")
    if device == "cuda":
        paths = [("torch", "fp32", STANDARD_SIDE),
                 ("torch", "bf16" if torch.cuda.is_bf16_supported() else "fp16", STANDARD_SIDE)]
    rows, reference, ref_time = [], None, None
    rng = np.random.default_rng(0)
    points = [(int(r), int(c)) for r, c in rng.integers(0, size, size=(max(clicks, 1), 2))]
    for engine_name, precision, side in paths:
        label = f"{engine_name} {precision}" + (f" @{side}px" if side != STANDARD_SIDE else "")
        row: dict[str, Any] = {"model": model_type, "encoder": label, "device": device}
        if side != STANDARD_SIDE and spec.family != "mobile_sam":
            continue  # the SAM ViTs only run at 1024
        try:
            net = with_encoder_side(model, spec.family, side)
            engine = SamEngine(net, spec, device=device, encoder_engine=engine_name,
                               precision=precision, onnx_dir=onnx_dir, name=model_type,
                               decoder_threads=decoder_threads)
            start = time.perf_counter()
            engine.prepare_encoder()  # ONNX: export + check once (cached on disk)
            row["prepare_s"] = time.perf_counter() - start
            embed_cpu: list[float] = []
            embed = _times(lambda: engine.encode(rgb), repeats, cpu=embed_cpu)
            features = engine.encode(rgb).features.float().cpu().numpy()
        except (RuntimeError, ValueError) as exc:
            row["error"] = str(exc)[:120]
            rows.append(row)
            continue
        row["embed_s"] = statistics.median(embed)
        row["embed_min_s"] = min(embed)
        row["embed_cpu_s"] = statistics.median(embed_cpu)
        if reference is None:
            reference, ref_time = features, row["embed_s"]
        row["speedup"] = ref_time / row["embed_s"]
        if features.shape == reference.shape:  # another side: another grid, no comparison
            row["rel_error"] = compare_outputs(reference, features)["rel_error"]
        annotator = SamAnnotator.from_engine(engine)
        annotator.set_image(image)
        it = iter(points * (repeats + 2))
        click_cpu: list[float] = []
        click = _times(lambda: annotator.segment_from_points(image, [next(it)], [1]), clicks,
                       cpu=click_cpu)
        row["click_ms"] = 1000 * statistics.median(click)
        row["click_cpu_ms"] = 1000 * statistics.median(click_cpu)
        rows.append(row)
        engine = annotator = None  # free the ONNX sessions before the next path (vit_b: GBs)
        gc.collect()
    return rows


def fallback_row(size: int, clicks: int) -> dict[str, Any]:
    from cellsparse_app.sam import SamAnnotator, SamConfig

    annotator = SamAnnotator(SamConfig(model_type="fallback")).load()
    image = _test_image(size)
    start = time.perf_counter()
    annotator.set_image(image)
    embed = time.perf_counter() - start
    rng = np.random.default_rng(0)
    points = [(int(r), int(c)) for r, c in rng.integers(0, size, size=(clicks + 1, 2))]
    it = iter(points)
    click = _times(lambda: annotator.segment_from_points(image, [next(it)], [1]), clicks)
    return {"model": "fallback", "encoder": "classical", "device": "cpu", "embed_s": embed,
            "click_ms": 1000 * statistics.median(click)}


def quality_rows(n_nuclei: int) -> list[dict[str, Any]]:
    """Click IoU against annotated nuclei for the fallback and SAM models with real weights."""
    from scipy import ndimage as ndi

    from bench.datasets import load_dataset
    from cellsparse_app.sam import SamAnnotator, SamConfig, WeightsManager

    try:
        samples, _ = load_dataset("dsb2018_fluo_dev")
    except FileNotFoundError:
        return []
    rng = np.random.default_rng(0)
    picks = []
    for sample in rng.permutation(len(samples)):
        s = samples[sample]
        ids = np.unique(s.mask)[1:]
        for k in rng.choice(ids, size=min(3, len(ids)), replace=False):
            picks.append((s.image, s.mask == k))
    picks = picks[:n_nuclei]
    manager = WeightsManager()
    models = ["fallback"] + [m for m in ("vit_t", "vit_b", "vit_l", "vit_h")
                             if manager.is_available(m)]
    rows = []
    for model in models:
        annotator = SamAnnotator(SamConfig(model_type=model, download=False,
                                           fallback_if_unavailable=False)).load()
        ious = []
        for image, truth in picks:
            depth = ndi.distance_transform_edt(np.pad(truth, 1))[1:-1, 1:-1]
            point = np.unravel_index(np.argmax(depth), depth.shape)
            mask = annotator.segment_from_points(image, [point], [1]).mask
            ious.append((mask & truth).sum() / max((mask | truth).sum(), 1))
        ious = np.array(ious)
        rows.append({"model": annotator.model_name, "nuclei": len(ious),
                     "median_iou": float(np.median(ious)), "rate_07": float(np.mean(ious >= 0.7))})
    return rows


def format_tables(latency: list[dict[str, Any]], quality: list[dict[str, Any]],
                  settings: dict[str, Any]) -> str:
    lines = [
        "# SAM prompt engine: latency (random-init weights, real architectures) and quality",
        "",
        f"{settings['size']}x{settings['size']} image, median of {settings['repeats']} "
        f"embeddings and {settings['clicks']} clicks; torch threads {settings['threads']}, "
        f"click threads {settings['click_threads']}; "
        f"{platform.machine()}, {os.cpu_count()} CPU(s); load average at start "
        f"{settings['load_start']}, at end {settings['load_end']} (compare only on an idle "
        "machine). Targets (2 CPU cores): click->mask <= 50 ms, vit_t embedding <= 0.5 s.",
        "",
        "CPU s/ms: processor time of the process (all threads), less sensitive to other load.",
        "",
        "| model | encoder | device | embedding s | (CPU s) | vs torch fp32 | rel. error |"
        " click->mask ms | (CPU ms) | first use s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in latency:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['encoder']} | {r['device']} | failed: {r['error']} "
                         "| | | | | | |")
            continue
        speed = f"{r['speedup']:.2f}x" if "speedup" in r else "n/a"
        err = f"{r['rel_error']:.1e}" if "rel_error" in r else "n/a"
        prep = f"{r['prepare_s']:.1f}" if r.get("prepare_s", 0) > 0.05 else ""
        cpu = f"{r['embed_cpu_s']:.2f}" if "embed_cpu_s" in r else ""
        click_cpu = f"{r['click_cpu_ms']:.0f}" if "click_cpu_ms" in r else ""
        lines.append(f"| {r['model']} | {r['encoder']} | {r['device']} | {r['embed_s']:.3f} | "
                     f"{cpu} | {speed} | {err} | {r['click_ms']:.1f} | {click_cpu} | {prep} |")
    if quality:
        lines += ["", "Click quality on annotated nuclei (click at the deepest interior pixel):",
                  "",
                  "| model | nuclei | median IoU | IoU >= 0.7 |", "|---|---|---|---|"]
        for q in quality:
            lines.append(f"| {q['model']} | {q['nuclei']} | {q['median_iou']:.2f} | "
                         f"{q['rate_07']:.0%} |")
    return "\n".join(lines)


def _parse_path(text: str) -> tuple[str, str, int]:
    """``"onnx:fp32"`` -> ``("onnx", "fp32", 1024)``; ``"onnx:int8:512"`` -> side 512."""
    parts = text.strip().split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and not parts[2].isdigit()):
        raise SystemExit(f"bad encoder path {text!r}: use engine:precision[:side]")
    return parts[0], parts[1], int(parts[2]) if len(parts) == 3 else 1024


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench sam",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="vit_t only, fewer repeats")
    parser.add_argument("--models", default=None, help="comma list (default vit_t,vit_b)")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--repeats", type=int, default=None, help="embeddings timed per path")
    parser.add_argument("--clicks", type=int, default=20, help="clicks timed per path")
    parser.add_argument("--threads", type=int, default=None, help="torch/ORT threads")
    parser.add_argument("--nuclei", type=int, default=60, help="nuclei for the quality table")
    parser.add_argument("--decoder-threads", type=int, default=None,
                        help="OpenMP threads per click (default: automatic, 1 when busy)")
    parser.add_argument("--paths", default=None,
                        help="encoder paths engine:precision[:side], e.g. "
                             "'torch:fp32,onnx:fp32,onnx:fp32:512' (default: all six)")
    args = parser.parse_args(argv)
    import torch

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message="Overwriting tiny_vit")
    if args.threads:
        torch.set_num_threads(args.threads)
    models = (args.models or ("vit_t" if args.quick else "vit_t,vit_b")).split(",")
    repeats = args.repeats or (2 if args.quick else 3)
    clicks = 10 if args.quick and args.clicks == 20 else args.clicks
    paths = [_parse_path(p) for p in args.paths.split(",")] if args.paths else list(ENCODER_PATHS)
    from cellsparse_app.runtime.threads import machine_is_busy

    click_threads = (args.decoder_threads if args.decoder_threads is not None
                     else f"auto: {'1 (busy machine)' if machine_is_busy() else 'all'}")
    settings = {"size": args.size, "repeats": repeats, "clicks": clicks,
                "threads": torch.get_num_threads(), "load_start": _load(),
                "click_threads": click_threads}
    latency: list[dict[str, Any]] = []
    for model in models:
        latency += latency_rows(model.strip(), args.size, repeats, clicks, paths,
                                args.decoder_threads)
    latency.append(fallback_row(args.size, clicks))
    quality = quality_rows(20 if args.quick else args.nuclei)
    settings["load_end"] = _load()
    print(format_tables(latency, quality, settings), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
