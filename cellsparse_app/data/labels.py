"""The one label convention used everywhere in cellsparse app.

A *label image* is a 2-D ``int32`` array with:

* ``UNLABELLED = -1``: nobody said what this pixel is; it is ignored by every loss and metric.
* ``BACKGROUND = 0``: annotated background.
* ``1..N``: annotated cell instances (one id per object).

Everything else (lists of SAM masks, the cellsparse-api wire format 0/1/>=2, dense ground truth
where 0 means background) is converted *at the edges* with the functions below.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

logger = logging.getLogger(__name__)

UNLABELLED: int = -1
BACKGROUND: int = 0
LABEL_DTYPE = np.int32

# cellsparse-api / qupath-extension-cellsparse wire format.
WIRE_UNLABELLED: int = 0
WIRE_BACKGROUND: int = 1
WIRE_FIRST_INSTANCE: int = 2


def validate_labels(labels: np.ndarray, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Check a label image and return it as ``int32``.

    Raises:
        TypeError: if ``labels`` is not an integer array.
        ValueError: if it is not 2-D, has values below ``-1`` or does not match ``shape``.
    """
    labels = np.asarray(labels)
    if labels.dtype == bool or not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be an integer array (-1/0/1..N), got dtype {labels.dtype}")
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D, got shape {labels.shape}")
    if shape is not None and tuple(labels.shape) != tuple(shape[:2]):
        raise ValueError(
            f"labels shape {labels.shape} does not match image shape {tuple(shape[:2])}"
        )
    if labels.size and int(labels.min()) < UNLABELLED:
        raise ValueError(
            f"labels contain {int(labels.min())}; allowed values are -1 (unlabelled),"
            " 0 (background) and 1..N (instances)"
        )
    if labels.size and int(labels.max()) > np.iinfo(LABEL_DTYPE).max:
        raise ValueError(f"label id {int(labels.max())} does not fit int32")
    return labels.astype(LABEL_DTYPE, copy=False)


def empty_labels(shape: tuple[int, ...]) -> np.ndarray:
    """A label image of ``shape[:2]`` where every pixel is unlabelled."""
    return np.full(tuple(shape[:2]), UNLABELLED, dtype=LABEL_DTYPE)


def from_masks(
    shape: tuple[int, ...],
    foreground: Sequence[np.ndarray] = (),
    background: Sequence[np.ndarray] = (),
) -> np.ndarray:
    """Build a label image from boolean instance masks and background masks.

    Background is painted first, then instances in order, so a later instance wins where masks
    overlap and an instance always wins over background.
    """
    labels = empty_labels(shape)
    for i, mask in enumerate(background):
        labels[_as_mask(mask, labels.shape, f"background[{i}]")] = BACKGROUND
    for i, mask in enumerate(foreground):
        labels[_as_mask(mask, labels.shape, f"foreground[{i}]")] = i + 1
    return relabel_sequential(labels)


def to_masks(labels: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Split a label image into (list of instance masks, background mask)."""
    labels = validate_labels(labels)
    ids = instance_ids(labels)
    return [labels == i for i in ids], labels == BACKGROUND


def instance_ids(labels: np.ndarray) -> np.ndarray:
    """Sorted ids of the annotated instances (values >= 1)."""
    ids = np.unique(labels)
    return ids[ids >= 1]


def relabel_sequential(labels: np.ndarray) -> np.ndarray:
    """Renumber instances to 1..N keeping -1 and 0 unchanged."""
    labels = validate_labels(labels)
    ids = instance_ids(labels)
    if len(ids) == 0 or (ids[0] == 1 and ids[-1] == len(ids)):
        return labels
    lut = np.zeros(int(ids[-1]) + 2, dtype=LABEL_DTYPE)
    lut[0] = UNLABELLED  # index 0 of the shifted table is -1
    lut[1] = BACKGROUND
    lut[ids + 1] = np.arange(1, len(ids) + 1, dtype=LABEL_DTYPE)
    return lut[labels + 1]


def from_wire(wire: np.ndarray) -> np.ndarray:
    """Convert the cellsparse-api wire format (0 unlabelled, 1 background, >=2 instances)."""
    wire = np.asarray(wire)
    if wire.dtype == bool or not np.issubdtype(wire.dtype, np.integer) or wire.ndim != 2:
        raise ValueError(
            f"wire labels must be a 2-D integer image, got dtype {wire.dtype} shape {wire.shape}"
        )
    if wire.size and int(wire.min()) < WIRE_UNLABELLED:
        raise ValueError(
            f"wire labels contain {int(wire.min())}; allowed values are 0 (unlabelled), "
            "1 (background) and >= 2 (instances)"
        )
    labels = wire.astype(np.int64) - WIRE_BACKGROUND  # 0->-1, 1->0, k->k-1
    return relabel_sequential(_compact_ids(labels))


def to_wire(labels: np.ndarray) -> np.ndarray:
    """Convert to the cellsparse-api wire format as ``uint16`` (raises if > 65533 instances)."""
    labels = validate_labels(labels)
    if labels.size and int(labels.max()) + WIRE_BACKGROUND > np.iinfo(np.uint16).max:
        raise ValueError(f"{int(labels.max())} instances do not fit the uint16 wire format")
    return (labels.astype(np.int64) + WIRE_BACKGROUND).astype(np.uint16)


def from_dense(instances: np.ndarray) -> np.ndarray:
    """Convert a fully annotated image (0 background, 1..N cells) to the sparse convention."""
    instances = _check_dense(instances)
    return relabel_sequential(_compact_ids(instances))


def to_instances(labels: np.ndarray) -> np.ndarray:
    """Instances only, as an unsigned image (0 for background *and* unlabelled), for export."""
    labels = validate_labels(labels)
    out = np.where(labels > 0, labels, 0)
    dtype = np.uint16 if (out.size == 0 or out.max() <= np.iinfo(np.uint16).max) else np.uint32
    return out.astype(dtype)


def select_sparse(
    dense: np.ndarray,
    object_ids: Sequence[int],
    background: bool = True,
) -> np.ndarray:
    """Keep only some objects of a dense annotation, the rest unlabelled.

    Args:
        dense: fully annotated image (0 background, 1..N instances).
        object_ids: ids of ``dense`` to keep as annotated instances.
        background: also keep the annotated background (dense == 0) as background.
    """
    dense = _check_dense(dense)
    ids = np.asarray(list(object_ids), dtype=np.int64)
    labels = empty_labels(dense.shape)
    if background:
        labels[dense == 0] = BACKGROUND
    keep = np.isin(dense.astype(np.int64, copy=False), ids[ids > 0])
    return relabel_sequential(_compact_ids(np.where(keep, dense.astype(np.int64), labels)))


def _check_dense(instances: np.ndarray) -> np.ndarray:
    instances = np.asarray(instances)
    integer = instances.dtype != bool and np.issubdtype(instances.dtype, np.integer)
    if not integer or instances.ndim != 2:
        raise ValueError(
            f"dense labels must be a 2-D integer image, got dtype {instances.dtype} "
            f"shape {instances.shape}"
        )
    if instances.size and int(instances.min()) < 0:
        raise ValueError(
            "dense labels must be >= 0 (0 background, 1..N instances), "
            f"found {int(instances.min())}"
        )
    return instances


def _compact_ids(labels: np.ndarray) -> np.ndarray:
    """Cast to ``int32``, first renumbering instances when an id would not fit (no wrap-around)."""
    labels = np.asarray(labels)
    if labels.size and int(labels.max()) > np.iinfo(LABEL_DTYPE).max:
        ids, inverse = np.unique(labels, return_inverse=True)
        new = np.where(ids > 0, np.cumsum(ids > 0), ids)
        labels = new[inverse.reshape(labels.shape)]
    return labels.astype(LABEL_DTYPE)


def _as_mask(mask: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise ValueError(f"{name} has shape {mask.shape}, expected {shape}")
    return mask.astype(bool, copy=False)
