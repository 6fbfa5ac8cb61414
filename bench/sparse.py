"""Sparse vs dense vs naive partial training on real annotated images (Sugawara 2023).

``python -m bench sparse [--quick] [--families cellpose,stardist] [--seconds S] [--seeds 0,1,2]``

For each data set (fluorescence nuclei ``dsb2018_fluo_dev``, phase-contrast whole cells
``usiigaci_phase_dev``) a fixed split gives training images and held-out test images. Every
condition of :mod:`bench.conditions` (k objects per image x annotation mode) is trained from scratch
with ``cellsparse_app.train.train`` under the same time budget, for several seeds (which objects are
annotated changes with the seed), and evaluated with ``predict_instances`` + ``evaluate_many``
against the dense ground truth of the test images (AP pooled over test images).

Reported per condition: AP@0.5 and AP@0.75 (mean ± std over seeds), training wall time, steps,
patches/s (from the progress reports, warm-up step excluded), and the ratio of that throughput to a
plain fp32 PyTorch loop of the same network measured in the same run (:mod:`bench.throughput`).
Prediction speed (Mpx/s of test images through ``predict_instances``) is reported beside AP.

Variants (``--variants``, compared in one run): ``dN`` rescales the cells to N pixels across
(:mod:`cellsparse_app.data.object_scale`), ``native`` trains at the images' own scale (the behaviour
before object rescaling); ``+out`` resamples the network output instead of the labels back to the
image grid; ``+up`` also enlarges cells smaller than N; ``+nostain`` ignores the stain suggestion
that ``--stain auto`` (the default) applies (:func:`cellsparse_app.data.stains.suggest_stain` on the
training images).

The markdown table is printed and written with the raw JSON to ``bench/results/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bench.conditions import (
    DEFAULT_KS,
    MODES,
    Condition,
    build_grid,
    split_samples,
    training_labels,
)
from bench.report import markdown_report
from cellsparse_app.data.object_scale import CANONICAL_DIAMETER

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DATASETS = ("dsb2018_fluo_dev", "usiigaci_phase_dev")
#: ``--variants`` of the default run: the library's default canonical diameter.
DEFAULT_VARIANTS = (f"d{CANONICAL_DIAMETER:g}",)


@dataclasses.dataclass(frozen=True)
class BenchSettings:
    """What one run covers; ``quick()`` is the smoke-test size."""

    datasets: tuple[str, ...] = DATASETS
    families: tuple[str, ...] = ("cellpose",)
    ks: tuple[str, ...] = DEFAULT_KS
    modes: tuple[str, ...] = tuple(MODES)
    seeds: tuple[int, ...] = (0, 1, 2)
    seconds: float = 30.0  # training budget per run
    steps: int | None = None  # fixed step count instead (AP independent of machine load)
    n_train: int = 8
    n_test: int = 16
    reference_seconds: float = 15.0
    device: str = "auto"
    variants: tuple[str, ...] = DEFAULT_VARIANTS
    stain: str = "auto"

    @classmethod
    def quick(cls, **overrides: Any) -> "BenchSettings":
        base = cls(ks=("4", "100%"), modes=("bg", "naive"), seeds=(0,), seconds=8.0, n_train=3,
                   n_test=3, reference_seconds=3.0)
        return dataclasses.replace(base, **overrides)

    def runs(self) -> int:
        return (len(self.datasets) * len(self.families) * len(self.conditions()) * len(self.seeds)
                * len(self.variants))

    def conditions(self) -> list[Condition]:
        return build_grid(self.ks, self.modes)


def parse_args(argv: Sequence[str] | None = None) -> BenchSettings:
    p = argparse.ArgumentParser(prog="python -m bench sparse", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny grid to smoke-test the harness")
    p.add_argument("--datasets", help=f"comma-separated (default {','.join(DATASETS)})")
    p.add_argument("--families", help="comma-separated model families (default cellpose)")
    p.add_argument("--ks", help="comma-separated k values, e.g. 1,4,16,5%%,100%%")
    p.add_argument("--modes", help=f"comma-separated from {','.join(MODES)}")
    p.add_argument("--seeds", help="comma-separated seeds")
    p.add_argument("--seconds", type=float, help="training time budget per run")
    p.add_argument("--steps", type=int,
                   help="train a fixed number of steps instead of --seconds (AP then does not "
                        "depend on how busy the machine is)")
    p.add_argument("--n-train", type=int, help="training images per data set")
    p.add_argument("--n-test", type=int, help="held-out test images per data set")
    p.add_argument("--reference-seconds", type=float, help="timed part of the fp32 reference loop")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--variants", help="comma-separated: dN (cells rescaled to N px), native; "
                   f"suffixes +out, +up, +nostain (default {DEFAULT_VARIANTS[0]})")
    p.add_argument("--stain", choices=["auto", "none"], help="apply suggest_stain (default auto)")
    a = p.parse_args(argv)
    overrides: dict[str, Any] = {}
    for key in ("datasets", "families", "ks", "modes", "variants"):
        if getattr(a, key):
            overrides[key] = tuple(v.strip() for v in getattr(a, key).split(",") if v.strip())
    if a.seeds:
        overrides["seeds"] = tuple(int(s) for s in a.seeds.split(","))
    for key in ("seconds", "steps", "n_train", "n_test", "reference_seconds", "device", "stain"):
        if getattr(a, key) is not None:
            overrides[key] = getattr(a, key)
    settings = BenchSettings.quick(**overrides) if a.quick else BenchSettings(**overrides)
    settings.conditions()  # validates ks and modes early
    for v in settings.variants:
        parse_variant(v)
    return settings


def check_families(names: Sequence[str]) -> None:
    """Raise ``ValueError`` naming unknown families (registry of ``cellsparse_app.models``)."""
    from cellsparse_app.models import list_families

    known = list_families()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown model famil(ies) {unknown}; registered: {known}")


def parse_variant(text: str) -> dict[str, Any]:
    """``"d30+out"`` -> ``{"object_diameter": 30.0, "resample": "output", "stain": True, ...}``."""
    head, *flags = [t.strip() for t in str(text).split("+")]
    unknown = [f for f in flags if f not in ("out", "nostain", "up")]
    try:
        if unknown:
            raise ValueError
        diameter = None if head == "native" else float(head[1:]) if head.startswith("d") else None
        if head != "native" and not (diameter and diameter > 0):
            raise ValueError
    except ValueError:
        raise ValueError(
            f"variant must be dN or native with optional +out/+up/+nostain, got {text!r}"
        )
    return {"object_diameter": diameter, "resample": "output" if "out" in flags else "labels",
            "stain": "nostain" not in flags, "upscale": "up" in flags}


def run_one(train_images, labels, test, cfg, image_config=None, predict_cfg=None) -> dict[str, Any]:
    """Train once under ``cfg`` and evaluate on ``test`` samples; one result row."""
    from cellsparse_app.data.metrics import evaluate_many
    from cellsparse_app.predict import PredictConfig, predict_instances
    from cellsparse_app.train import train

    reports: list[Any] = []
    t0 = time.perf_counter()
    model = train(train_images, labels, cfg, image_config=image_config, progress=reports.append)
    train_s = time.perf_counter() - t0
    predict_cfg = predict_cfg or PredictConfig(device=cfg.device)
    t0 = time.perf_counter()
    preds = [predict_instances(model, s.image, predict_cfg) for s in test]
    pred_s = time.perf_counter() - t0
    mpx = sum(int(np.prod(s.mask.shape)) for s in test) / 1e6
    ev = evaluate_many([s.mask for s in test], preds, (0.5, 0.75))
    steps, rate = training_rate(reports, cfg.batch_size)
    return {
        "ap50": ev["ap50"], "ap75": ev["ap75"], "train_s": train_s, "steps": steps,
        "patches_per_s": rate, "n_pred": ev["n_pred"], "n_true": ev["n_true"],
        "pred_s": pred_s, "pred_mpx_per_s": mpx / pred_s if pred_s > 0 else float("nan"),
        "diameter": model.config.diameter, "scale": model.config.scale,
        "stain": model.image.stain,
        "model_config": model.config, "image_config": model.image,
    }


def training_rate(reports: Sequence[Any], batch_size: int) -> tuple[int, float]:
    """(steps, patches/s) from a training run's progress reports.

    The rate is taken between the first and the last intermediate report, so start-up (targets,
    first steps) is excluded; NaN (shown as n/a) with fewer than two intermediate reports, where
    it would mostly measure start-up.
    """
    if not reports:
        return 0, float("nan")
    steps = int(reports[-1].step)
    live = [r for r in reports if not r.done and r.step > 0]
    if len(live) >= 2 and live[-1].elapsed > live[0].elapsed:
        rate = (live[-1].step - live[0].step) * batch_size / (live[-1].elapsed - live[0].elapsed)
        return steps, float(rate)
    return steps, float("nan")


def run(settings: BenchSettings, log=print) -> dict[str, Any]:
    """Run the whole grid; returns ``{"settings", "rows", "reference"}`` (JSON-serialisable)."""
    from bench.datasets import load_dataset
    from cellsparse_app.data.images import ImageConfig
    from cellsparse_app.data.stains import suggest_stain
    from cellsparse_app.predict import PredictConfig
    from cellsparse_app.train import TrainConfig

    check_families(settings.families)
    rows: list[dict[str, Any]] = []
    reference: dict[str, Any] = {}
    done, total, t_start, load_start = 0, settings.runs(), time.perf_counter(), _load()
    for ds in settings.datasets:
        samples, _ = load_dataset(ds)
        train_s, test = split_samples(samples, settings.n_train, settings.n_test)
        images, masks = [s.image for s in train_s], [s.mask for s in train_s]
        suggestion = suggest_stain(images)
        log(f"{ds}: {len(train_s)} training image(s), {len(test)} test image(s) "
            f"({sum(int(s.mask.max()) for s in test)} test objects); stain: {suggestion.reason}")
        for family, variant in [(f, v) for f in settings.families for v in settings.variants]:
            last = None
            opts = parse_variant(variant)
            stain = suggestion.stain if settings.stain == "auto" and opts["stain"] else None
            label = family if variant == DEFAULT_VARIANTS[0] and len(settings.variants) == 1 \
                else f"{family} {variant}"
            for cond in settings.conditions():
                for seed in settings.seeds:
                    labels = training_labels(masks, cond, seed)
                    cfg = TrainConfig(
                        family=family, steps=settings.steps,
                        max_seconds=None if settings.steps else settings.seconds,
                        seed=seed, device=settings.device, object_diameter=opts["object_diameter"],
                        upscale=opts["upscale"],
                    )
                    row = {"dataset": ds, "family": label, "k": cond.k, "mode": cond.mode,
                           "condition": cond.name, "seed": seed, "variant": variant,
                           "annotated": int(sum(int(lab.max()) for lab in labels))}
                    try:
                        res = run_one(images, labels, test, cfg, ImageConfig(stain=stain),
                                      PredictConfig(device=settings.device,
                                                    resample=opts["resample"]))
                        last = (res.pop("model_config"), res.pop("image_config"), labels, cfg)
                        row.update(res)
                    except (ValueError, RuntimeError) as exc:
                        row["error"] = f"{type(exc).__name__}: {exc}"
                    rows.append(row)
                    done += 1
                    eta = (time.perf_counter() - t_start) / done * (total - done)
                    log(f"  [{done}/{total}] {label} {cond.name} seed {seed}: "
                        + (row.get("error") or f"AP50 {row['ap50']:.3f} AP75 {row['ap75']:.3f} "
                           f"{row['steps']} steps {row['train_s']:.0f} s "
                           f"{row['patches_per_s']:.1f} patches/s "
                           f"pred {row['pred_mpx_per_s']:.3f} Mpx/s scale {row['scale']:g}")
                        + f"  (eta {eta / 60:.1f} min)")
            if last is not None and settings.reference_seconds > 0:
                reference[f"{ds}/{family}"] = _reference(family, images, last, settings)
                log(f"  plain fp32 loop ({family}): "
                    f"{reference[f'{ds}/{family}']['patches_per_s']:.1f} patches/s")
    return {"settings": dataclasses.asdict(settings), "rows": rows, "reference": reference,
            "load_average": {"start": load_start, "end": _load()}}


def _load() -> list[float] | None:
    """1/5/15-minute load averages: timings taken on a busy machine are not comparable."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _reference(family, images, last, settings) -> dict[str, float]:
    from bench.throughput import plain_fp32_throughput

    model_config, image_config, labels, cfg = last
    return plain_fp32_throughput(
        family, model_config, images, labels, batch_size=cfg.batch_size,
        patch_size=cfg.patch_size, learning_rate=cfg.peak_learning_rate(),
        seconds=settings.reference_seconds, image_config=image_config, seed=0,
    )


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING)
    settings = parse_args(argv)
    budget = f"{settings.steps} steps" if settings.steps else f"{settings.seconds:g} s"
    minutes = settings.runs() * (settings.seconds + 5) / 60
    estimate = "" if settings.steps else f" (~{minutes:.0f} min)"
    print(f"sparse benchmark: {settings.runs()} training runs of {budget}{estimate}", flush=True)
    result = run(settings, log=lambda m: print(m, flush=True))
    report = markdown_report(result)
    print("\n" + report)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    tag = "quick" if argv and "--quick" in argv else "full"
    (RESULTS_DIR / f"sparse-{tag}-{stamp}.md").write_text(report)
    raw = json.dumps(result, indent=1, default=str)
    (RESULTS_DIR / f"sparse-{tag}-{stamp}.json").write_text(raw)
    print(f"written to {RESULTS_DIR}/sparse-{tag}-{stamp}.md")
    return 1 if any("error" in r for r in result["rows"]) else 0
