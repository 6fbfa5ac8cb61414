"""Cellpose's flow quality control, and its calibration to the model that is being used.

Cellpose drops a reconstructed mask when the flows the network predicted inside it disagree with
the flows of the mask's own shape: the mean squared error of the unit flows must stay under a
*flow threshold* (0.4 in Cellpose, made for fully trained models).

A model trained for a few minutes on a few annotated objects predicts weaker, less exact flows
(on held-out DSB nuclei, flows inside correct masks are about half as long as ideal after 150
steps with 5% of the objects), so the fixed 0.4 drops many correct masks: AP@0.5 0.56 with it,
0.83 without (one seed). On phase-contrast cells the check is essential, though (0.83 with it,
0.44 without: fragments of large cells are removed by it). So the threshold is *calibrated* per
model, like StarDist's thresholds: after training, the errors of the model's flows inside the
objects it was trained on are measured, and a mask is kept when its error is no worse than that
of most (:data:`CALIBRATION_QUANTILE`) annotated objects -- never stricter than Cellpose's 0.4,
never looser than :data:`MAX_FLOW_THRESHOLD`. A well-trained model keeps Cellpose's 0.4.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from cellsparse_app.data.labels import relabel_sequential
from cellsparse_app.models.cellpose.flows import instance_flows

logger = logging.getLogger(__name__)

#: Cellpose's default flow threshold, the strictest the calibration gives.
CELLPOSE_FLOW_THRESHOLD = 0.4
#: The loosest calibrated threshold (unit flows pointing anywhere give errors of about 2).
MAX_FLOW_THRESHOLD = 1.0
#: Share of the annotated training objects whose flow error a kept mask may reach.
CALIBRATION_QUANTILE = 0.9


def mask_flow_errors(masks: np.ndarray, flows: np.ndarray) -> np.ndarray:
    """Mean squared flow error of every mask: ``float64 (N + 1,)``, index = label (0 unused).

    Args:
        masks: ``(H, W)`` instance labels 1..N (sequential), 0 elsewhere.
        flows: ``(2, H, W)`` predicted unit flows (row, column), i.e. network output / 5.
    """
    ids = np.asarray(masks).ravel()
    n = int(ids.max(initial=0))
    ideal = instance_flows(np.asarray(masks))
    err = ((ideal - flows) ** 2).sum(axis=0).ravel()
    counts = np.maximum(np.bincount(ids, minlength=n + 1), 1)
    return np.bincount(ids, err, n + 1) / counts


def remove_bad_flow_masks(masks: np.ndarray, flows: np.ndarray, threshold: float) -> np.ndarray:
    """Drop masks whose flow error (:func:`mask_flow_errors`) exceeds ``threshold``; relabelled."""
    masks = relabel_sequential(np.asarray(masks).astype(np.int32))
    errors = mask_flow_errors(masks, flows)
    bad = np.flatnonzero(errors > threshold)
    bad = bad[bad > 0]
    if len(bad):
        masks = np.where(np.isin(masks, bad), 0, masks)
    return relabel_sequential(masks)


def calibrated_flow_threshold(
    flows: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    *,
    quantile: float = CALIBRATION_QUANTILE,
) -> float:
    """Flow threshold for a model from its flows on annotated objects (see the module docstring).

    Args:
        flows: per image, ``(2, H, W)`` unit flows the model predicts.
        labels: per image, the training labels (-1/0/1..N) of the same pixels.
        quantile: share of annotated objects whose error the threshold reaches.

    Returns:
        A threshold in ``[CELLPOSE_FLOW_THRESHOLD, MAX_FLOW_THRESHOLD]``; Cellpose's 0.4 when
        there is no annotated object.
    """
    if len(flows) != len(labels):
        raise ValueError(f"got {len(flows)} flow field(s) for {len(labels)} label image(s)")
    errors = []
    for flow, lab in zip(flows, labels):
        lab = np.asarray(lab)
        if flow.shape != (2, *lab.shape):
            raise ValueError(f"flows {flow.shape} do not match labels {lab.shape}")
        instances = relabel_sequential(np.where(lab > 0, lab, 0).astype(np.int32))
        if instances.max() > 0:
            errors.append(mask_flow_errors(instances, flow)[1:])
    if not errors:
        return CELLPOSE_FLOW_THRESHOLD
    value = float(np.quantile(np.concatenate(errors), quantile))
    threshold = min(max(value, CELLPOSE_FLOW_THRESHOLD), MAX_FLOW_THRESHOLD)
    logger.info(
        "flow threshold %.3f (%.0f%% of %d annotated objects have flow errors <= %.3f)",
        threshold, 100 * quantile, sum(e.size for e in errors), value,
    )
    return threshold
