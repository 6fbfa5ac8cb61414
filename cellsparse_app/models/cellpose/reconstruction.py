"""Masks from a Cellpose-style output: follow the flows, group the pixels, check the flows.

Cellpose's dynamics (``follow_flows``, ``get_masks_torch`` of the ``cellpose`` 4 package, which
run on a CPU as well) group the pixels; :func:`recover_unseeded_objects` adds the small objects
that Cellpose's seeding misses depending on float rounding; the flow quality control
(:mod:`.quality`) drops masks whose flows disagree with their shape.
"""

from __future__ import annotations

import numpy as np

from cellsparse_app.models.cellpose.flows import FLOW_SCALE
from cellsparse_app.models.cellpose.quality import remove_bad_flow_masks
from cellsparse_app.models.common import probability_logit

#: Masks larger than this fraction of the image are dropped (Cellpose's ``max_size_fraction``).
MAX_SIZE_FRACTION = 0.4


def _dynamics():
    from cellsparse_app.runtime.compat import ensure_torchvision

    ensure_torchvision()  # cellpose imports torchvision
    from cellpose import dynamics

    return dynamics



def reconstruct_instances(
    output: np.ndarray,
    *,
    prob_threshold: float = 0.5,
    flow_threshold: float | None = 0.4,
    min_size: int = 15,
    niter: int = 200,
) -> np.ndarray:
    """Instance labels (``uint32``) from ``(3, H, W)`` flows x5 + probability logits.

    Cellpose's dynamics (``follow_flows`` + ``get_masks_torch``) group the pixels; the flow
    quality control and hole filling follow ``cellpose.dynamics.compute_masks`` but use
    :func:`instance_flows` (Cellpose's own flow computation takes seconds per image on a CPU).

    Args:
        output: network output (or targets converted to it) of one image.
        prob_threshold: cell probability (0..1) above which pixels are followed.
        flow_threshold: drop masks whose flows disagree with their shape's flows by more than
            this (mean squared error of unit flows); ``None`` or 0 keeps all.
        min_size: masks with fewer pixels are removed (holes are filled).
        niter: steps of the flow dynamics.
    """
    import warnings

    import torch

    output = np.asarray(output, dtype=np.float32)
    if output.ndim != 3 or output.shape[0] < 3:
        raise ValueError(f"expected a (3, H, W) Cellpose output, got shape {output.shape}")
    if not 0.0 < prob_threshold < 1.0:
        raise ValueError(f"prob_threshold must be in (0, 1), got {prob_threshold}")
    shape = output.shape[1:]
    inside = output[2] > probability_logit(prob_threshold)
    if not inside.any():
        return np.zeros(shape, np.uint32)
    dynamics = _dynamics()
    flows = output[:2] * inside / FLOW_SCALE
    inds = np.nonzero(inside)
    cpu = torch.device("cpu")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse invariant checks")
        final = dynamics.follow_flows(flows, inds=inds, niter=niter, device=cpu)
        masks = dynamics.get_masks_torch(
            final.int(), inds, shape, max_size_fraction=MAX_SIZE_FRACTION
        )
    masks = recover_unseeded_objects(np.asarray(masks).astype(np.int64), final.numpy(), inds)
    if flow_threshold and masks.max() > 0:
        masks = remove_bad_flow_masks(masks, output[:2] / FLOW_SCALE, flow_threshold)
    if masks.max() > 0:
        from cellpose.utils import fill_holes_and_remove_small_masks

        masks = fill_holes_and_remove_small_masks(masks.astype(np.uint32), min_size=min_size or -1)
    return np.asarray(masks).astype(np.uint32)



#: Cellpose's seed rule: a histogram peak of converged pixels needs more than this many pixels.
SEED_PIXELS = 10
#: Smallest group of converged pixels that :func:`recover_unseeded_objects` turns into a mask.
MIN_CLUSTER_PIXELS = 3
#: Side of the window Cellpose looks for a peak in (its max-pool kernel); a recovered group's
#: end points must fit in it.
PEAK_WINDOW = 5
#: Side of the window in which Cellpose grows a mask around its seed.
SEED_WINDOW = 11


def recover_unseeded_objects(
    masks: np.ndarray, final: np.ndarray, inds: tuple[np.ndarray, np.ndarray]
) -> np.ndarray:
    """Add the objects that Cellpose's seeding misses because their pixels converge to 2+ pixels.

    Cellpose (``get_masks_torch``) starts a mask only where more than :data:`SEED_PIXELS`
    followed pixels end in *one* histogram bin. A small object's pixels (a 13-pixel nucleus, say)
    may end split over two neighbouring bins -- which of them depends on float rounding of the
    flows, so the object survived on one CPU and vanished on another. Here the followed pixels that
    got no mask are grouped by where they ended (end points within one pixel of each other join);
    a group becomes a new mask when its end points fit Cellpose's :data:`PEAK_WINDOW`, it has at
    least :data:`MIN_CLUSTER_PIXELS` pixels, and no Cellpose seed claims its end points (pixels
    that Cellpose dropped next to a seed, or in a mask it removed as too large, stay dropped).

    Args:
        masks: ``(H, W)`` labels from ``get_masks_torch`` (0 = none).
        final: ``(2, n)`` end points (row, column) of the followed pixels.
        inds: the followed pixels' ``(rows, cols)``.
    """
    from scipy import ndimage

    shape = masks.shape
    left = masks[inds] == 0
    if not left.any():
        return masks
    # Cellpose bins the end points by truncation; they lie inside the image.
    ends = np.clip(np.asarray(final).astype(np.int64), 0, np.array(shape)[:, None] - 1)
    flat = ends[0] * shape[1] + ends[1]
    hist = np.bincount(flat, minlength=masks.size).reshape(shape)
    seeds = (hist == ndimage.maximum_filter(hist, PEAK_WINDOW)) & (hist > SEED_PIXELS)
    claimed = ndimage.maximum_filter(seeds, SEED_WINDOW)
    ends_left = np.zeros(masks.size, bool)
    ends_left[flat[left]] = True
    groups, n_groups = ndimage.label(
        ndimage.binary_dilation(ends_left.reshape(shape)), structure=np.ones((3, 3))
    )
    if n_groups == 0:
        return masks
    group_of = groups.ravel()[flat[left]]
    counts = np.bincount(group_of, minlength=n_groups + 1)
    rejected = np.zeros(n_groups + 1, bool)
    rejected[np.unique(groups[claimed])] = True
    for k, box in enumerate(ndimage.find_objects(groups), start=1):
        # The dilation widened each group by one pixel on every side.
        if box is None or any(sl.stop - sl.start > PEAK_WINDOW + 2 for sl in box):
            rejected[k] = True
    keep = (counts >= MIN_CLUSTER_PIXELS) & ~rejected
    keep[0] = False
    if not keep.any():
        return masks
    new_ids = np.zeros(n_groups + 1, np.int64)
    new_ids[keep] = masks.max() + np.arange(1, int(keep.sum()) + 1)
    out = masks.copy()
    rows, cols = inds[0][left], inds[1][left]
    out[rows, cols] = new_ids[group_of]
    return out
