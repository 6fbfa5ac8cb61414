"""The training loop: sparse labels in, :class:`~cellsparse_app.models.trained.TrainedModel` out.

Design (why it is fast and safe on a 2-core CPU):

* Inputs are validated *before* anything heavy runs (:func:`train_iter` raises at once).
* Families whose targets can be warped (``target_kinds``) get them computed once per image; a
  background thread cuts, augments and stacks the next batches while the network trains, so the
  network never waits for data.
* The network runs channels-last; bf16/fp16 autocast only where it pays (see
  :mod:`cellsparse_app.runtime.device`).
* The learning rate warms up over the model's *whole life* (``meta["steps_done"]``), so continued
  training does not warm up again, then follows a cosine decay over each round's budget
  (steps or seconds, whichever is tighter).
* After training, the family fits its prediction settings to the network's outputs on the
  annotated objects (:mod:`cellsparse_app.train.calibration`; e.g. the Cellpose-style flow
  threshold), outside the time budget (well under a second for typical annotations).
"""

from __future__ import annotations

import copy
import datetime
import logging
import math
import queue
import threading
import time
from typing import Callable, Generator, Sequence

import numpy as np
import torch

from cellsparse_app.data.images import ImageConfig
from cellsparse_app.models.base import ModelConfig, get_family
from cellsparse_app.models.trained import TrainedModel
from cellsparse_app.runtime import device as devices
from cellsparse_app.runtime.threads import omp_threads
from cellsparse_app.train.augment import Batch, Source, random_transform, warp_patches
from cellsparse_app.train.calibration import calibrate_config
from cellsparse_app.train.config import TrainConfig, TrainProgress, labelled_fraction
from cellsparse_app.train.inputs import check_inputs
from cellsparse_app.train.sampler import PatchSampler
from cellsparse_app.train.scaling import choose_scale, rescale_training

logger = logging.getLogger(__name__)

#: Consecutive non-finite losses after which training is declared diverged.
MAX_BAD_STEPS = 20
#: Training batches whose statistics replace BatchNorm's running averages at the end.
BN_BATCHES = 8


def train_iter(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    cfg: TrainConfig = TrainConfig(),
    *,
    model_config: ModelConfig | None = None,
    image_config: ImageConfig | None = None,
    initial: TrainedModel | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Generator[TrainProgress, None, TrainedModel]:
    """Train, yielding a :class:`TrainProgress` every ``cfg.log_every`` steps and at the end.

    The generator's return value (``StopIteration.value``) is the :class:`TrainedModel`; use
    :func:`train` to just get it. Inputs are checked when this function is *called*.

    Args:
        images: ``(H, W)`` or ``(H, W, C)`` arrays, any numeric dtype.
        labels: matching integer label images: -1 unlabelled, 0 background, 1..N cells.
        cfg: training settings.
        model_config: architecture (default: the family's defaults for the images' channels).
        image_config: channels + normalisation (default: all channels, percentiles 1/99.8).
        initial: continue training this model (its family, architecture and image config;
            it is not modified).
        should_stop: polled every step; when it returns true training ends and the model
            trained so far is returned with ``meta["cancelled"] = True``.

    Raises:
        TypeError: non-integer labels or non-numeric images.
        ValueError: mismatched counts/shapes/channels, no labelled pixel, no annotated cell.
    """
    if initial is not None:
        if initial.family != cfg.family:
            raise ValueError(
                f"cannot continue a {initial.family!r} model as family {cfg.family!r}; "
                f"use TrainConfig(family={initial.family!r})"
            )
        if model_config is not None and model_config != initial.config:
            raise ValueError("model_config differs from the architecture of the initial model")
        if image_config is not None and image_config != initial.image:
            raise ValueError("image_config differs from the one the initial model was trained with")
        model_config, image_config = initial.config, initial.image
    family = get_family(cfg.family)
    image_config = image_config or ImageConfig()
    prepared, labels = check_inputs(images, labels, image_config)
    channels = prepared[0].shape[0]
    if model_config is None:
        model_config = family.config_cls(in_channels=channels)
    if not isinstance(model_config, family.config_cls):
        raise TypeError(
            f"model_config must be a {family.config_cls.__name__} for family {family.name!r}, "
            f"got {type(model_config).__name__}"
        )
    if model_config.in_channels != channels:
        raise ValueError(
            f"the model takes {model_config.in_channels} channel(s) but the images give {channels}"
            " (choose channels with ImageConfig(channels=...))"
        )
    model_config = choose_scale(labels, cfg, model_config, initial)
    prepared, labels = rescale_training(prepared, labels, model_config.scale)
    device = devices.resolve_device(cfg.device)
    return _run(family, prepared, labels, cfg, model_config, image_config, initial, should_stop,
                device)


def train(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    cfg: TrainConfig = TrainConfig(),
    *,
    model_config: ModelConfig | None = None,
    image_config: ImageConfig | None = None,
    initial: TrainedModel | None = None,
    progress: Callable[[TrainProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainedModel:
    """Train and return the model; ``progress`` gets every :class:`TrainProgress`.

    See :func:`train_iter` for the arguments and errors.
    """
    steps = train_iter(
        images,
        labels,
        cfg,
        model_config=model_config,
        image_config=image_config,
        initial=initial,
        should_stop=should_stop,
    )
    while True:
        try:
            report = next(steps)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(report)


def _run(family, prepared, labels, cfg, model_config, image_config, initial, should_stop, device):
    start = time.perf_counter()
    cfg = cfg.replace(learning_rate=cfg.peak_learning_rate())  # recorded in meta["train"]
    precision = devices.resolve_precision(cfg.precision, device)
    labelled = labelled_fraction(labels)
    max_steps, max_seconds = cfg.budget(device.type, labelled)
    if max_steps is not None and cfg.steps is None:
        logger.info("sparse annotations (%.1f%% of the pixels labelled): at most %d steps",
                    100 * labelled, max_steps)
    torch.manual_seed(cfg.seed)
    if initial is not None:
        network = copy.deepcopy(initial.network)
    else:
        network = family.build(model_config)
    network = devices.prepare_module(network, device).train()
    done_before = initial.steps_done if initial is not None else 0

    kinds = family.target_kinds(model_config)
    sources = [
        Source(img, lab, family.targets(lab, model_config) if kinds else None)
        for img, lab in zip(prepared, labels)
        if (lab >= 0).any()
    ]
    multiple = family.size_multiple(model_config)
    patch = int(math.ceil(cfg.patch_size / multiple) * multiple)
    rng = np.random.default_rng(cfg.seed)
    sampler = PatchSampler([s.labels for s in sources], rng, cfg.foreground_fraction)

    def make_batch() -> Batch:
        picks = [sampler.sample() for _ in range(cfg.batch_size)]
        transforms = [
            random_transform(
                rng,
                patch,
                rotate=cfg.rotate,
                flip=cfg.flip,
                scale_range=tuple(cfg.scale_range),
                intensity=cfg.intensity,
            )
            for _ in picks
        ]
        batch = warp_patches([sources[i] for i, _ in picks], [c for _, c in picks], transforms,
                             patch, kinds)
        if batch.targets is None:
            targets = [family.targets(lab.numpy(), model_config) for lab in batch.labels]
            batch = batch._replace(targets=torch.from_numpy(np.stack(targets).astype(np.float32)))
        return batch

    optimizer = torch.optim.AdamW(
        network.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay
    )
    scaler = devices.grad_scaler(device, precision)
    history: list[dict] = []
    round_index = int(initial.meta.get("rounds", 0)) + 1 if initial is not None else 1
    step, bad_steps, losses, cancelled = 0, 0, [], False
    lr, fraction, step_time = cfg.learning_rate, 0.0, 0.0
    producer = _Prefetcher(make_batch)
    try:
        while True:
            if max_steps is not None and step >= max_steps:
                break
            elapsed = time.perf_counter() - start
            reserve = step_time * (1 + BN_BATCHES / 3)  # one more step + recalibration
            if max_seconds is not None and elapsed + reserve > max_seconds:
                break
            if should_stop is not None and should_stop():
                cancelled = True
                break
            fraction = _fraction(step, elapsed, max_steps, max_seconds)
            lr = _learning_rate(cfg, done_before + step, fraction)
            for group in optimizer.param_groups:
                group["lr"] = lr
            t0 = time.perf_counter()
            batch = producer.get()
            x = devices.to_device(batch.images, device)
            target = batch.targets.to(device, non_blocking=device.type == "cuda")
            with devices.autocast(device, precision):
                output = network(x)
            loss = family.loss(output, target, model_config)
            optimizer.zero_grad(set_to_none=True)
            if torch.isfinite(loss):
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                losses.append(float(loss.detach()))
                bad_steps = 0
            else:
                bad_steps += 1
                if bad_steps >= MAX_BAD_STEPS:
                    raise RuntimeError(
                        f"training diverged: {bad_steps} non-finite losses in a row "
                        f"(learning_rate={cfg.learning_rate}); try a lower learning rate"
                    )
            step += 1
            dt = time.perf_counter() - t0
            step_time = dt if step == 1 else 0.8 * step_time + 0.2 * dt
            if step % cfg.log_every == 0 and losses:
                report = _record(history, losses, done_before + step, step, start, lr, round_index)
                yield TrainProgress(
                    step, max_steps, report["loss"], report["elapsed"], lr,
                    fraction=_fraction(step, report["elapsed"], max_steps, max_seconds),
                )
                losses = []
        deadline = None if max_seconds is None else start + max_seconds
        _recalibrate_batchnorm(network, producer, device, precision, BN_BATCHES, deadline)
    finally:
        producer.close()
    if losses:
        _record(history, losses, done_before + step, step, start, lr, round_index)
    network.eval()
    if not cancelled:  # a cancelled run stops now; it keeps the settings it started with
        model_config = calibrate_config(
            family, network, model_config, [s.image for s in sources], [s.labels for s in sources],
            device,
        )
    elapsed = time.perf_counter() - start
    model = TrainedModel(
        family=family.name,
        config=model_config,
        image=image_config,
        network=network,
        history=(list(initial.history) if initial is not None else []) + history,
        meta={
            "train": cfg.to_dict(),
            "steps_done": done_before + step,
            "steps": step,
            "rounds": round_index,
            "elapsed": round(elapsed, 3),
            "cancelled": cancelled,
            "device": str(device),
            "precision": precision,
            "n_images": len(sources),
            "n_cells": sampler.n_cells,
            "patch_size": patch,
            "labelled_fraction": round(labelled, 4),
            "step_cap": max_steps if cfg.steps is None else None,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "version": _version(),
        },
    )
    last_loss = history[-1]["loss"] if history else float("nan")
    logger.info(
        "trained %s for %d steps in %.1fs (loss %.4f%s)",
        family.name, step, elapsed, last_loss, ", cancelled" if cancelled else "",
    )
    yield TrainProgress(
        step, max_steps, last_loss, elapsed, lr, done=True, cancelled=cancelled,
        fraction=1.0 if not cancelled else _fraction(step, elapsed, max_steps, max_seconds),
    )
    return model


def _recalibrate_batchnorm(
    network, producer, device, precision, batches: int, deadline: float | None
) -> None:
    """Replace BatchNorm running statistics by exact averages over ``batches`` training batches.

    The running averages lag behind the weights (momentum), which matters after short training:
    eval-mode outputs then differ from what was trained ("precise BN", Wu & Johnson 2021).
    Past ``deadline`` (``perf_counter`` time) it stops after two batches.
    """
    norms = [m for m in network.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms or batches < 1:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    try:
        with torch.no_grad():
            for i in range(batches):
                if i >= 2 and deadline is not None and time.perf_counter() > deadline:
                    break
                x = devices.to_device(producer.get().images, device)
                with devices.autocast(device, precision):
                    network(x)
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum


def _fraction(step: int, elapsed: float, max_steps: int | None, max_seconds: float | None) -> float:
    parts = []
    if max_steps:
        parts.append(step / max_steps)
    if max_seconds:
        parts.append(elapsed / max_seconds)
    return float(min(max(parts, default=0.0), 1.0))


def _learning_rate(cfg: TrainConfig, lifetime_step: int, fraction: float) -> float:
    """Warm-up over the model's lifetime steps, then cosine decay over this round's budget."""
    warm = min(1.0, (lifetime_step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    final = cfg.final_lr_fraction
    decay = final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * fraction))
    return cfg.learning_rate * warm * decay


def _record(history, losses, lifetime_step, step, start, lr, round_index) -> dict:
    entry = {
        "step": lifetime_step,
        "loss": float(np.mean(losses)),
        "elapsed": round(time.perf_counter() - start, 3),
        "lr": lr,
        "round": round_index,
    }
    history.append(entry)
    return entry


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("cellsparse-app")
    except Exception:  # not installed (source checkout): metadata lookup raises various errors
        return "unknown"


class _Prefetcher:
    """Runs ``make`` in a background thread, keeping up to ``depth`` results ready.

    The thread uses one OpenMP thread (:func:`cellsparse_app.runtime.threads.omp_threads`),
    leaving the cores to the network's operations in the training thread.
    """

    def __init__(self, make: Callable[[], Batch], depth: int = 2) -> None:
        self._make = make
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="cellsparse-batches", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        with omp_threads(1):
            self._produce()

    def _produce(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._make()
            except BaseException as exc:  # handed to the training thread, which re-raises it
                item = exc
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return

    def get(self) -> Batch:
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
