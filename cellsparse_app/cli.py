"""Command-line interface: ``cellsparse train|predict|evaluate|annotate|serve``.

A fixed contract other tools call (see README). Heavy imports (torch, SAM, FastAPI) are deferred
into the subcommands so ``cellsparse --help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

from cellsparse_app.data.object_scale import CANONICAL_DIAMETER
from cellsparse_app.errors import CellsparseError
from cellsparse_app.json_config import config_from_values

logger = logging.getLogger("cellsparse_app.cli")


def _train(args: argparse.Namespace) -> int:
    from cellsparse_app.data.images import ImageConfig, read_image, read_labels
    from cellsparse_app.train import TrainConfig, TrainedModel, train

    if len(args.images) != len(args.labels):
        raise ValueError(
            f"{len(args.images)} image(s) but {len(args.labels)} label file(s);"
            " give one --labels per image"
        )
    images = [read_image(p) for p in args.images]
    labels = [read_labels(p) for p in args.labels]
    initial = TrainedModel.load(args.init, device=args.device) if args.init else None
    # Continuing a model keeps its family unless --model names one explicitly.
    family = args.model or (initial.family if initial is not None else TrainConfig().family)
    cfg = config_from_values(TrainConfig, {
        "family": family, "seed": args.seed, "device": args.device, "steps": args.steps,
        "max_seconds": args.max_seconds, "diameter": args.diameter})
    if args.no_rescale:
        cfg = cfg.replace(object_diameter=None)  # None on purpose: no object-size normalisation
    image_config = None
    if args.stain != "none" and initial is None:
        stain = args.stain
        if stain == "auto":
            from cellsparse_app.data.stains import suggest_stain

            suggestion = suggest_stain(images)
            stain = suggestion.stain
            print(f"stain: {suggestion.reason}", flush=True)
        image_config = ImageConfig(stain=stain)

    def report(p) -> None:
        total = f"/{p.total_steps}" if p.total_steps else ""
        print(
            f"step {p.step}{total}  loss {p.loss:.4f}  {p.elapsed:.1f}s  {100 * p.fraction:.0f}%",
            flush=True,
        )

    model = train(images, labels, cfg, image_config=image_config, initial=initial, progress=report)
    out = model.save(args.out)
    calibrated = ", ".join(
        f"{k} {getattr(model.config, k):g}" for k in model.family_impl.calibrated_fields
    )
    scale = f"cell diameter {model.config.diameter} px, scale {model.config.scale:g}"
    print(f"model written to {out} (" + (f"calibrated: {calibrated}; " if calibrated else "")
          + scale + ")", flush=True)
    return 0


def _predict(args: argparse.Namespace) -> int:
    from cellsparse_app.data.images import read_image, write_labels
    from cellsparse_app.predict import PredictConfig, predict_instances
    from cellsparse_app.train import TrainedModel

    model = TrainedModel.load(args.model, device=args.device)
    cfg = config_from_values(PredictConfig, {
        "device": args.device, "prob_threshold": args.prob_threshold, "min_size": args.min_size,
        "flow_threshold": args.flow_threshold, "diameter": args.diameter})
    out_dir = Path(args.out)
    for path in args.images:
        labels = predict_instances(model, read_image(path), cfg)
        dest = write_labels(out_dir / f"{Path(path).stem}.tif", labels)
        print(f"{path}: {int(labels.max())} objects -> {dest}", flush=True)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from cellsparse_app.data.images import read_labels
    from cellsparse_app.data.metrics import evaluate_many

    if len(args.truth) != len(args.pred):
        raise ValueError(f"{len(args.truth)} truth file(s) but {len(args.pred)} prediction file(s)")
    truths = [read_labels(p) for p in args.truth]
    preds = [read_labels(p) for p in args.pred]
    print(json.dumps(evaluate_many(truths, preds), indent=2))
    return 0


def _annotate(args: argparse.Namespace) -> int:
    from cellsparse_app.data.images import read_image, write_labels
    from cellsparse_app.sam import AutoMaskConfig, RenderConfig, SamAnnotator, SamConfig

    cfg = config_from_values(SamConfig, {
        "device": args.device, "model_type": args.sam_model or None,
        "checkpoint": args.sam_checkpoint or None, "download": False if args.offline else None,
        "encoder_side": args.sam_encoder_side or None}, base=SamConfig.from_env())
    auto = AutoMaskConfig(points_per_side=args.points_per_side,
                          pred_iou_thresh=args.pred_iou_thresh,
                          stability_score_thresh=args.stability_score_thresh,
                          min_mask_region_area=args.min_area)
    channels = tuple(int(c) for c in args.channels.split(",")) if args.channels else None
    annotator = SamAnnotator(cfg, render=RenderConfig(channels=channels)).load()
    print(f"masks from {annotator.describe()}", flush=True)
    out_dir = Path(args.out)
    for path in args.images:
        labels = annotator.generate_masks(read_image(path), auto)
        dest = write_labels(out_dir / f"{Path(path).stem}.tif", labels)
        print(f"{path}: {int(labels.max())} objects -> {dest}", flush=True)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from cellsparse_app.api.server import serve

    serve(host=args.host, port=args.port, data_dir=args.data_dir,
          allow_sam_fallback=True if args.allow_sam_fallback else None)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cellsparse", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model from scratch on sparse labels")
    p.add_argument("images", nargs="+", help="image files (PNG/JPEG/TIFF)")
    p.add_argument("--labels", nargs="+", required=True,
                   help="integer label TIFFs: -1 unlabelled, 0 background, 1..N cells")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--model", default=None,
                   help="model family: cellpose (default), stardist, elephant; with --init, that "
                        "model's family")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: time budget)")
    p.add_argument("--max-seconds", type=float, default=None, help="time budget in seconds")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", default=None,
                   help="continue training this model directory (its scale and stain are kept)")
    p.add_argument("--diameter", type=float, default=None,
                   help="cell diameter in the training images, pixels (default: the median of "
                        "the annotated cells); images of larger cells are resized so cells are "
                        f"{CANONICAL_DIAMETER:g} px across")
    p.add_argument("--no-rescale", action="store_true",
                   help="train at the images' own scale (no object-size normalisation)")
    p.add_argument("--stain", default="none", choices=["none", "auto", "invert", "hematoxylin"],
                   help="input option for brightfield/H&E: invert, the haematoxylin channel, or "
                        "auto (suggested from the images); default none")
    p.set_defaults(func=_train)

    p = sub.add_parser("predict", help="segment images with a trained model")
    p.add_argument("images", nargs="+")
    p.add_argument("--model", required=True, help="model directory (config.json + weights.pt)")
    p.add_argument("--out", required=True, help="output directory for <stem>.tif label images")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--prob-threshold", type=float, default=None)
    p.add_argument("--min-size", type=int, default=None)
    p.add_argument("--flow-threshold", type=float, default=None,
                   help="Cellpose-style quality check: masks whose flows disagree with their "
                        "shape by more than this are dropped (default: the model's own, calibrated "
                        "in training on the annotated objects, 0.4 to 1; higher keeps more, "
                        "0 keeps all)")
    p.add_argument("--diameter", type=float, default=None,
                   help="cell diameter in these images, pixels (default: the model's training "
                        "diameter); for images of another magnification")
    p.set_defaults(func=_predict)

    p = sub.add_parser("evaluate", help="AP at IoU 0.5/0.75/0.9 of predictions against truth")
    p.add_argument("--truth", nargs="+", required=True)
    p.add_argument("--pred", nargs="+", required=True)
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("annotate", help="automatic SAM masks -> instance label TIFFs")
    p.add_argument("images", nargs="+")
    p.add_argument("--out", required=True, help="output directory for <stem>.tif label images")
    p.add_argument("--sam-model", default=None,
                   help="vit_t (MobileSAM, default), vit_b, vit_l, vit_h or fallback "
                        "(env CELLSPARSE_SAM_MODEL)")
    p.add_argument("--sam-checkpoint", default=None,
                   help="local SAM checkpoint file (env CELLSPARSE_SAM_CHECKPOINT)")
    p.add_argument("--sam-encoder-side", type=int, default=None,
                   help="vit_t encoder input side: 1024 (SAM's, default) or e.g. 512: ~4x "
                        "faster, coarser for small objects (env CELLSPARSE_SAM_ENCODER_SIDE)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--offline", action="store_true", help="never download weights")
    p.add_argument("--channels", default=None, help="channels shown to SAM, e.g. 0 or 1,0")
    p.add_argument("--points-per-side", type=int, default=32)
    p.add_argument("--pred-iou-thresh", type=float, default=0.88)
    p.add_argument("--stability-score-thresh", type=float, default=0.95)
    p.add_argument("--min-area", type=int, default=0, help="smallest object kept (pixels)")
    p.set_defaults(func=_annotate)

    p = sub.add_parser("serve", help="REST API + web UI in one process")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--data-dir", default=None, help="where models and uploads are kept")
    p.add_argument("--allow-sam-fallback", action="store_true",
                   help="answer SAM requests whose weights are missing with the classical "
                   "fallback segmenter (default: a 503 error; CELLSPARSE_ALLOW_SAM_FALLBACK=1)")
    p.set_defaults(func=_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except (CellsparseError, ValueError, TypeError, FileNotFoundError, RuntimeError) as exc:
        print(f"cellsparse {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
