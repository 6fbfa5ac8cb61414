"""Reference training throughput: a plain fp32 PyTorch loop of the same network and loss.

The reference is deliberately simple and favourable to itself: patches and their targets are
cropped and computed once beforehand (no augmentation, no sampling cost inside the timed loop),
the network runs in fp32, contiguous memory format, no autocast, AdamW. What it measures is what
"just write the training loop" gives on this machine, so ``ours / reference`` says what the
engine's data pipeline, channels-last and bf16/AMP choices are worth end to end.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from cellsparse_app.data.images import ImageConfig
from cellsparse_app.data.labels import UNLABELLED


def random_patches(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    patch: int,
    count: int,
    seed: int = 0,
    image_config: ImageConfig | None = None,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """``count`` random ``patch``-sized crops: ``float32 (N, C, P, P)`` images and label crops.

    Images smaller than the patch are padded (image with zeros, labels with -1, unlabelled).
    """
    rng = np.random.default_rng(seed)
    image_config = image_config or ImageConfig()
    prepared = [image_config.prepare(im) for im in images]
    xs, ys = [], []
    for _ in range(count):
        i = int(rng.integers(len(prepared)))
        x, y = prepared[i], labels[i]
        ph, pw = max(0, patch - x.shape[1]), max(0, patch - x.shape[2])
        if ph or pw:
            x = np.pad(x, ((0, 0), (0, ph), (0, pw)))
            y = np.pad(y, ((0, ph), (0, pw)), constant_values=UNLABELLED)
        r = int(rng.integers(x.shape[1] - patch + 1))
        c = int(rng.integers(x.shape[2] - patch + 1))
        xs.append(x[:, r:r + patch, c:c + patch])
        ys.append(y[r:r + patch, c:c + patch])
    return np.stack(xs).astype(np.float32), ys


def plain_fp32_throughput(
    family_name: str,
    model_config,
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    *,
    batch_size: int,
    patch_size: int,
    learning_rate: float,
    seconds: float,
    image_config: ImageConfig | None = None,
    seed: int = 0,
    warmup_steps: int = 2,
) -> dict[str, float]:
    """Patches per second of the plain loop, timed after ``warmup_steps`` steps.

    Returns:
        ``{"patches_per_s", "steps", "seconds"}`` (timed part only).
    """
    import torch

    from cellsparse_app.models import get_family

    family = get_family(family_name)
    torch.manual_seed(seed)
    net = family.build(model_config).train()
    opt = torch.optim.AdamW(net.parameters(), lr=learning_rate)
    pool = max(4 * batch_size, 16)
    x_all, y_crops = random_patches(images, labels, patch_size, pool, seed, image_config)
    targets = np.stack([family.targets(y, model_config) for y in y_crops]).astype(np.float32)
    x_all_t, targets_t = torch.from_numpy(x_all), torch.from_numpy(targets)
    rng = np.random.default_rng(seed)
    steps, start, deadline = 0, None, None
    while True:
        idx = torch.from_numpy(rng.choice(pool, batch_size, replace=False))
        out = net(x_all_t[idx])
        loss = family.loss(out, targets_t[idx], model_config)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += 1
        now = time.perf_counter()
        if steps == warmup_steps:
            start, deadline = now, now + seconds
        elif start is not None and now >= deadline:
            break
    timed = steps - warmup_steps
    elapsed = time.perf_counter() - start
    return {"patches_per_s": timed * batch_size / elapsed, "steps": timed, "seconds": elapsed}
