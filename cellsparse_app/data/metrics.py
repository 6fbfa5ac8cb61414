"""Instance-segmentation metrics: IoU matching, AP = TP / (TP + FP + FN), precision, recall, F1.

Truth images follow :mod:`cellsparse_app.data.labels` (-1 unlabelled, 0 background, 1..N instances);
predictions are instance images (0 background, 1..M objects), e.g. from ``predict_instances``.

Matching: the IoU of a truth object ``t`` and a predicted object ``p`` is computed over their full
areas, ``|t & p| / |t | p|``. At each threshold ``th``, truth and predicted objects are paired
one-to-one so that the number of pairs with ``IoU >= th`` is maximal (ties broken by the larger
total IoU; Hungarian assignment, as in Cellpose and StarDist). Above 0.5 such pairs are unique, so
they are taken directly without an assignment problem.

**Sparse truth.** When the truth has unlabelled pixels (-1), the evaluation is restricted to what
was annotated:

* every annotated truth object is counted: matched -> TP, unmatched -> FN;
* a matched prediction is a TP whatever it covers;
* an unmatched prediction is a FP only if *more than half* of its pixels lie on annotated pixels
  (annotated background or annotated objects); a prediction lying mostly on unlabelled pixels is
  *ignored* (nobody said whether a cell is there) and reported in ``ignored_ids``.

Annotated objects are complete masks, so a predicted object's pixels outside a truth object are
errors for that object whether they fall on background or on unlabelled pixels: IoU therefore uses
the full areas. On dense truth (no -1) the rule reduces to the standard definition.

Ratios with an empty denominator (no objects at all) are 1.0 when there is no error (FP = FN = 0)
and 0.0 otherwise, so results never hold NaN and stay valid JSON.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from cellsparse_app.data.labels import UNLABELLED, validate_labels

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLDS: tuple[float, ...] = (0.5, 0.75, 0.9)
#: An unmatched prediction is a false positive when more than this fraction is annotated.
ANNOTATED_FRACTION_FOR_FP: float = 0.5


def match_labels(
    truth: np.ndarray,
    pred: np.ndarray,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
) -> dict[str, Any]:
    """Match predicted objects to (possibly sparse) truth objects at several IoU thresholds.

    Args:
        truth: label image, -1 unlabelled / 0 background / 1..N objects.
        pred: instance image, 0 background / 1..M objects (any integer dtype).
        thresholds: IoU thresholds in (0, 1].

    Returns:
        JSON-serialisable dict. Per-threshold lists aligned with ``thresholds``: ``ap``,
        ``precision``, ``recall``, ``f1``, ``tp``, ``fp``, ``fn``, ``mean_matched_iou``,
        ``n_ignored``, ``fp_ids`` (predicted ids), ``fn_ids`` (truth ids), ``ignored_ids``
        (predicted ids) and ``matches`` (``[truth_id, pred_id, iou]``). Scalars: ``n_true``,
        ``n_pred``, ``sparse`` (truth had unlabelled pixels), and ``ap50``/``ap75``/... for each
        threshold.

    Raises:
        ValueError: for mismatched shapes, non-2-D images, negative predicted ids or thresholds
            outside (0, 1].
        TypeError: for non-integer images.
    """
    thresholds = _check_thresholds(thresholds)
    table = _overlaps(truth, pred)
    out: dict[str, Any] = {
        "thresholds": list(thresholds),
        "n_true": int(len(table["truth_ids"])),
        "n_pred": int(len(table["pred_ids"])),
        "sparse": bool(table["sparse"]),
    }
    keys = ("ap", "precision", "recall", "f1", "tp", "fp", "fn", "mean_matched_iou", "n_ignored",
            "fp_ids", "fn_ids", "ignored_ids", "matches")
    for key in keys:
        out[key] = []
    for th in thresholds:
        res = _match_at(table, th)
        for key in keys:
            out[key].append(res[key])
    for th, ap in zip(thresholds, out["ap"]):
        out[_ap_key(th)] = ap
    return out


def average_precision(truth: np.ndarray, pred: np.ndarray, threshold: float = 0.5) -> float:
    """AP = TP / (TP + FP + FN) at one IoU threshold (see :func:`match_labels`)."""
    return float(match_labels(truth, pred, (threshold,))["ap"][0])


def evaluate_many(
    truths: Sequence[np.ndarray],
    preds: Sequence[np.ndarray],
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
) -> dict[str, Any]:
    """Evaluate several images, pooling TP/FP/FN over all of them.

    The pooled ``ap`` is ``sum TP / (sum TP + sum FP + sum FN)``, so that images with many objects
    weigh more (the usual way data sets are reported); ``mean_image_ap`` is the plain mean of the
    per-image values for comparison.

    Returns:
        JSON-serialisable dict: ``thresholds``, ``n_images``, ``n_true``, ``n_pred``, ``ap50``...
        (pooled), pooled per-threshold lists ``ap``, ``precision``, ``recall``, ``f1``, ``tp``,
        ``fp``, ``fn``, ``n_ignored``, ``mean_matched_iou``, ``mean_image_ap``; ``per_image``: a
        list of ``{"index", "n_true", "n_pred", "ap", "tp", "fp", "fn"}``.

    Raises:
        ValueError: if the two sequences differ in length or are empty (and see
            :func:`match_labels`).
    """
    truths, preds = list(truths), list(preds)
    if len(truths) != len(preds):
        raise ValueError(f"{len(truths)} truth image(s) but {len(preds)} prediction(s)")
    if not truths:
        raise ValueError("no images to evaluate")
    thresholds = _check_thresholds(thresholds)
    per_image = []
    for i, (t, p) in enumerate(zip(truths, preds)):
        try:
            per_image.append(match_labels(t, p, thresholds))
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"image {i}: {exc}") from exc
    n = len(thresholds)
    tp = [sum(r["tp"][k] for r in per_image) for k in range(n)]
    fp = [sum(r["fp"][k] for r in per_image) for k in range(n)]
    fn = [sum(r["fn"][k] for r in per_image) for k in range(n)]
    iou_sum = [sum(r["mean_matched_iou"][k] * r["tp"][k] for r in per_image) for k in range(n)]
    out: dict[str, Any] = {
        "thresholds": list(thresholds),
        "n_images": len(per_image),
        "n_true": sum(r["n_true"] for r in per_image),
        "n_pred": sum(r["n_pred"] for r in per_image),
    }
    scores = [_scores(tp[k], fp[k], fn[k]) for k in range(n)]
    for th, s in zip(thresholds, scores):
        out[_ap_key(th)] = s["ap"]
    for key in ("ap", "precision", "recall", "f1"):
        out[key] = [s[key] for s in scores]
    out.update(tp=tp, fp=fp, fn=fn)
    out["n_ignored"] = [sum(r["n_ignored"][k] for r in per_image) for k in range(n)]
    out["mean_matched_iou"] = [iou_sum[k] / tp[k] if tp[k] else 0.0 for k in range(n)]
    out["mean_image_ap"] = [float(np.mean([r["ap"][k] for r in per_image])) for k in range(n)]
    out["per_image"] = [
        {"index": i, "n_true": r["n_true"], "n_pred": r["n_pred"], "ap": r["ap"],
         "tp": r["tp"], "fp": r["fp"], "fn": r["fn"]}
        for i, r in enumerate(per_image)
    ]
    return out


def error_masks(
    truth: np.ndarray, pred: np.ndarray, threshold: float = 0.5
) -> dict[str, np.ndarray]:
    """Boolean masks for drawing the errors of ``pred`` at one IoU threshold.

    Returns:
        ``{"tp": matched predicted objects, "fp": false-positive predicted objects,
        "fn": missed truth objects, "ignored": predicted objects on unlabelled pixels}``.
    """
    res = match_labels(truth, pred, (threshold,))
    pred = np.asarray(pred)
    truth = np.asarray(truth)
    matched = [m[1] for m in res["matches"][0]]
    return {
        "tp": np.isin(pred, matched) & (pred > 0),
        "fp": np.isin(pred, res["fp_ids"][0]) & (pred > 0),
        "fn": np.isin(truth, res["fn_ids"][0]) & (truth > 0),
        "ignored": np.isin(pred, res["ignored_ids"][0]) & (pred > 0),
    }


def _ap_key(th: float) -> str:
    return f"ap{int(round(th * 100))}"


def _check_thresholds(thresholds: Sequence[float] | float) -> tuple[float, ...]:
    if np.isscalar(thresholds):
        thresholds = (float(thresholds),)  # type: ignore[arg-type]
    out = tuple(float(t) for t in thresholds)  # type: ignore[union-attr]
    if not out:
        raise ValueError("no IoU thresholds given")
    bad = [t for t in out if not 0.0 < t <= 1.0]
    if bad:
        raise ValueError(f"IoU thresholds must be in (0, 1], got {bad}")
    return out


def _overlaps(truth: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    """Areas, pairwise intersections and per-prediction annotated area, from one pass of counts."""
    truth = validate_labels(truth)
    pred = np.asarray(pred)
    if pred.dtype == bool or not np.issubdtype(pred.dtype, np.integer):
        raise TypeError(f"predicted labels must be an integer array, got dtype {pred.dtype}")
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} does not match truth shape {truth.shape}")
    if pred.size and int(pred.min()) < 0:
        raise ValueError(f"predicted labels must be >= 0 (0 background), found {int(pred.min())}")
    p = _compact(pred.ravel())
    # Compact instance ids (-1 and 0 map to 0), then mark unlabelled pixels -1 again.
    t = np.where(truth.ravel() == UNLABELLED, -1, _compact(truth.ravel()))
    truth_ids = _original_ids(truth.ravel(), t)
    pred_ids = _original_ids(pred.ravel(), p)
    nt, np_ = len(truth_ids), len(pred_ids)
    t_area = np.bincount(t[t > 0], minlength=nt + 1)
    p_area = np.bincount(p, minlength=np_ + 1)
    annotated = t >= 0
    p_annotated = np.bincount(p[annotated], minlength=np_ + 1)
    both = (t > 0) & (p > 0)
    keys = t[both].astype(np.int64) * (np_ + 1) + p[both]
    n_keys = (nt + 1) * (np_ + 1)
    if n_keys <= max(4 * keys.size, 1 << 16):  # a dense table is cheaper than sorting
        counts = np.bincount(keys, minlength=n_keys)
        pair_keys = np.flatnonzero(counts)
        inter = counts[pair_keys]
    else:
        pair_keys, inter = np.unique(keys, return_counts=True)
    pt, pp = np.divmod(pair_keys, np_ + 1)
    iou = inter / (t_area[pt] + p_area[pp] - inter)
    return {
        "truth_ids": truth_ids, "pred_ids": pred_ids, "pair_t": pt, "pair_p": pp, "pair_iou": iou,
        "p_area": p_area, "p_annotated": p_annotated, "sparse": bool((t < 0).any()),
    }


def _compact(ids: np.ndarray) -> np.ndarray:
    """Map non-negative ids to 0..K (0 stays 0, order kept) as ``int64``."""
    ids = ids.astype(np.int64, copy=False)
    if ids.size == 0:
        return ids
    top = max(int(ids.max()), 0)
    if top <= 4 * ids.size + 1024:  # small ids: a lookup table beats a sort
        present = np.zeros(top + 1, dtype=bool)
        present[ids[ids > 0]] = True
        lut = np.zeros(top + 1, dtype=np.int64)
        lut[present] = np.arange(1, int(present.sum()) + 1)
        return lut[np.maximum(ids, 0)]
    uniq, inverse = np.unique(np.maximum(ids, 0), return_inverse=True)
    if uniq[0] != 0:
        inverse = inverse + 1
    return inverse.reshape(ids.shape)


def _original_ids(original: np.ndarray, compact: np.ndarray) -> np.ndarray:
    """``ids[k-1]`` = the original id of compact id ``k`` (``k >= 1``)."""
    sel = compact > 0
    if not sel.any():
        return np.zeros(0, dtype=np.int64)
    n = int(compact.max())
    ids = np.zeros(n, dtype=np.int64)
    ids[compact[sel] - 1] = original[sel]
    return ids


def _match_at(table: dict[str, Any], th: float) -> dict[str, Any]:
    nt, np_ = len(table["truth_ids"]), len(table["pred_ids"])
    ok = table["pair_iou"] >= th
    pt, pp, iou = table["pair_t"][ok], table["pair_p"][ok], table["pair_iou"][ok]
    if th <= 0.5 and len(pt):
        pt, pp, iou = _assign(pt, pp, iou)
    matched_t = np.zeros(nt + 1, dtype=bool)
    matched_p = np.zeros(np_ + 1, dtype=bool)
    matched_t[pt] = True
    matched_p[pp] = True
    unmatched_p = np.flatnonzero(~matched_p[1:]) + 1
    frac = table["p_annotated"][unmatched_p] / np.maximum(table["p_area"][unmatched_p], 1)
    is_fp = frac > ANNOTATED_FRACTION_FOR_FP
    fn_t = np.flatnonzero(~matched_t[1:]) + 1
    tp, fp, fn = int(len(pt)), int(is_fp.sum()), int(len(fn_t))
    res = _scores(tp, fp, fn)
    tids, pids = table["truth_ids"], table["pred_ids"]
    res.update(
        tp=tp, fp=fp, fn=fn,
        mean_matched_iou=float(iou.mean()) if tp else 0.0,
        n_ignored=int((~is_fp).sum()),
        fp_ids=pids[unmatched_p[is_fp] - 1].tolist(),
        fn_ids=tids[fn_t - 1].tolist(),
        ignored_ids=pids[unmatched_p[~is_fp] - 1].tolist(),
        matches=[list(m) for m in zip(tids[pt - 1].tolist(), pids[pp - 1].tolist(), iou.tolist())],
    )
    return res


def _assign(pt: np.ndarray, pp: np.ndarray, iou: np.ndarray):
    """Maximum-cardinality matching among candidate pairs, ties broken by total IoU."""
    rows, r_inv = np.unique(pt, return_inverse=True)
    cols, c_inv = np.unique(pp, return_inverse=True)
    dense_iou = np.zeros((len(rows), len(cols)))
    dense_iou[r_inv, c_inv] = iou
    # Each candidate pair is worth 1 plus a tie-breaking bonus (< 1 in total): count, then IoU.
    weight = np.where(dense_iou > 0, 1.0 + dense_iou / (2 * min(dense_iou.shape)), 0.0)
    r, c = linear_sum_assignment(weight, maximize=True)
    keep = weight[r, c] > 0
    r, c = r[keep], c[keep]
    return rows[r], cols[c], dense_iou[r, c]


def _scores(tp: int, fp: int, fn: int) -> dict[str, float]:
    def ratio(num: float, den: float) -> float:
        if den == 0:
            return 1.0 if fp + fn == 0 else 0.0
        return float(num / den)

    return {
        "ap": ratio(tp, tp + fp + fn),
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
    }
