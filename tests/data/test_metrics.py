"""Instance matching and AP: exact counts on synthetic disks, real masks, sparse truth, cellpose."""

from __future__ import annotations

import json

import numpy as np
import pytest
from skimage.draw import disk
from skimage.segmentation import expand_labels

from cellsparse_app.data.metrics import average_precision, error_masks, evaluate_many, match_labels


def _disks(shape, centres, radius=8):
    out = np.zeros(shape, np.int32)
    for i, c in enumerate(centres, start=1):
        out[disk(c, radius, shape=shape)] = i
    return out


@pytest.fixture
def disks_case():
    truth = _disks((64, 64), [(12, 12), (12, 45), (45, 20)])
    pred = np.zeros_like(truth)
    pred[truth == 1] = 7  # exact
    pred[np.roll(truth == 2, 3, axis=1)] = 3  # shifted 3 px: 0.5 < IoU < 0.75
    pred[disk((50, 52), 6, shape=pred.shape)] = 9  # on background: false positive
    return truth, pred  # truth 3 is missed


def test_exact_counts_on_disks(disks_case):
    truth, pred = disks_case
    res = match_labels(truth, pred)
    assert res["thresholds"] == [0.5, 0.75, 0.9]
    assert (res["tp"], res["fp"], res["fn"]) == ([2, 1, 1], [1, 2, 2], [1, 2, 2])
    assert res["ap"] == pytest.approx([2 / 4, 1 / 5, 1 / 5])
    assert res["ap50"] == pytest.approx(0.5) and res["ap90"] == pytest.approx(0.2)
    assert res["precision"][0] == pytest.approx(2 / 3) and res["recall"][0] == pytest.approx(2 / 3)
    assert res["f1"][0] == pytest.approx(2 / 3)
    assert res["fp_ids"][0] == [9] and sorted(res["fp_ids"][1]) == [3, 9]
    assert res["fn_ids"][0] == [3] and sorted(res["fn_ids"][1]) == [2, 3]
    assert sorted(m[:2] for m in res["matches"][0]) == [[1, 7], [2, 3]]
    shifted_iou = [m[2] for m in res["matches"][0] if m[0] == 2][0]
    assert 0.5 < shifted_iou < 0.75
    assert res["mean_matched_iou"][0] == pytest.approx((1 + shifted_iou) / 2)
    assert res["n_true"] == 3 and res["n_pred"] == 3 and res["sparse"] is False
    assert average_precision(truth, pred, 0.5) == pytest.approx(0.5)
    json.dumps(res)  # plain Python types only


def test_empty_images_have_no_nan():
    empty = np.zeros((16, 16), np.int32)
    res = match_labels(empty, empty)
    assert res["ap"] == [1.0, 1.0, 1.0] and res["tp"] == [0, 0, 0]
    one = empty.copy()
    one[2:6, 2:6] = 1
    assert match_labels(one, empty)["ap"] == [0.0, 0.0, 0.0]
    assert match_labels(empty, one)["precision"] == [0.0, 0.0, 0.0]


def test_assignment_maximises_matches_below_half():
    # Columns 0-9 are truth 1, 10-19 truth 2. Prediction 1 covers cols 3-15, prediction 2 cols
    # 0-2. Greedy (highest IoU first) pairs pred 1 with truth 1 and finds one match at 0.3;
    # the optimal assignment pairs pred 1 with truth 2 and pred 2 with truth 1.
    truth = np.zeros((8, 20), np.int32)
    truth[:, :10], truth[:, 10:] = 1, 2
    pred = np.zeros_like(truth)
    pred[:, 3:16], pred[:, :3] = 1, 2
    res = match_labels(truth, pred, thresholds=(0.3, 0.5))
    assert res["tp"] == [2, 0]
    assert sorted(m[:2] for m in res["matches"][0]) == [[1, 2], [2, 1]]


def test_perfect_prediction_on_real_masks(dsb_fluo, usiigaci_phase):
    rng = np.random.default_rng(1)
    truths, preds = [], []
    for sample in dsb_fluo[:6] + usiigaci_phase[:1]:
        mask = sample.mask
        perm = np.concatenate([[0], rng.permutation(np.arange(1, mask.max() + 1)) + 1000])
        pred = perm[mask].astype(np.uint32)  # other ids, other dtype
        res = match_labels(mask, pred)
        assert res["ap"] == [1.0, 1.0, 1.0] and res["fp"] == [0, 0, 0]
        assert res["tp"][0] == mask.max()
        truths.append(mask)
        preds.append(pred)
    pooled = evaluate_many(truths, preds)
    assert pooled["ap50"] == pooled["ap90"] == 1.0
    assert pooled["n_true"] == sum(int(t.max()) for t in truths) == pooled["tp"][2]


@pytest.mark.parametrize("thresholds", [[0.5, 0.75, 0.9], [0.3, 0.5]])
def test_agrees_with_cellpose(dsb_fluo, thresholds):
    from cellpose.metrics import average_precision as cp_ap

    rng = np.random.default_rng(2)
    for sample in dsb_fluo[:8]:
        mask = sample.mask
        pred = expand_labels(np.roll(mask, int(rng.integers(-3, 4)), axis=1), 1)
        drop = rng.choice(np.arange(1, mask.max() + 1), mask.max() // 4, replace=False)
        pred[np.isin(pred, drop)] = 0
        ours = match_labels(mask, pred, thresholds)
        ap, tp, fp, fn = cp_ap(mask, pred.astype(np.int32), thresholds)
        assert ours["tp"] == tp.astype(int).tolist()
        assert ours["fp"] == fp.astype(int).tolist()
        assert ours["fn"] == fn.astype(int).tolist()
        assert ours["ap"] == pytest.approx(ap.tolist(), abs=1e-6)


def test_sparse_truth_rule():
    truth = np.full((60, 60), -1, np.int32)
    truth[:, :30] = 0  # annotated background on the left half, right half unlabelled
    truth[disk((10, 10), 5)] = 1  # annotated, predicted
    truth[disk((45, 10), 5)] = 2  # annotated, missed
    pred = np.zeros((60, 60), np.int32)
    pred[disk((10, 10), 5)] = 1  # TP
    pred[disk((28, 12), 4)] = 2  # on annotated background -> FP
    pred[disk((30, 48), 6)] = 3  # on unlabelled pixels -> ignored
    pred[20:24, 27:37] = 4  # 3 of 10 columns annotated -> mostly unlabelled -> ignored
    pred[40:44, 22:32] = 5  # 8 of 10 columns annotated -> FP
    res = match_labels(truth, pred, thresholds=(0.5,))
    assert res["sparse"] is True
    assert (res["tp"], res["fp"], res["fn"]) == ([1], [2], [1])
    assert sorted(res["fp_ids"][0]) == [2, 5]
    assert sorted(res["ignored_ids"][0]) == [3, 4] and res["n_ignored"] == [2]
    assert res["fn_ids"][0] == [2]
    assert res["ap"][0] == pytest.approx(1 / 4)
    masks = error_masks(truth, pred, 0.5)
    assert (masks["tp"] == (pred == 1)).all() and (masks["fn"] == (truth == 2)).all()
    assert (masks["fp"] == np.isin(pred, [2, 5])).all()
    assert (masks["ignored"] == np.isin(pred, [3, 4])).all()
    # The same prediction against dense truth counts every unmatched object.
    dense = np.where(truth < 0, 0, truth)
    assert match_labels(dense, pred, (0.5,))["fp"] == [4]


def test_prediction_merging_an_unlabelled_neighbour_is_not_a_match():
    truth = np.full((40, 40), -1, np.int32)
    truth[5:15, 5:15] = 1
    pred = np.zeros_like(truth)
    pred[5:15, 5:35] = 1  # covers the annotated cell plus twice its area of unlabelled pixels
    res = match_labels(truth, pred, (0.5,))
    assert res["tp"] == [0] and res["fn"] == [1] and res["ignored_ids"] == [[1]]


def test_evaluate_many_pools_counts(disks_case):
    truth, pred = disks_case
    res = evaluate_many([truth, truth], [pred, truth])
    assert res["n_images"] == 2 and res["tp"] == [5, 4, 4] and res["fp"] == [1, 2, 2]
    assert res["ap50"] == pytest.approx(5 / 7)
    assert res["mean_image_ap"][0] == pytest.approx((0.5 + 1.0) / 2)
    assert [r["ap"][0] for r in res["per_image"]] == pytest.approx([0.5, 1.0])
    assert json.loads(json.dumps(res)) == res


@pytest.mark.parametrize(
    "truth, pred, thresholds, error",
    [
        (np.zeros((8, 8), np.int32), np.zeros((8, 9), np.int32), (0.5,), ValueError),
        (np.zeros((8, 8), np.int32), np.zeros((8, 8), np.float32), (0.5,), TypeError),
        (np.zeros((8, 8), np.int32), -np.ones((8, 8), np.int32), (0.5,), ValueError),
        (np.zeros((8, 8), np.float32), np.zeros((8, 8), np.int32), (0.5,), TypeError),
        (np.full((8, 8), -2, np.int32), np.zeros((8, 8), np.int32), (0.5,), ValueError),
        (np.zeros((8, 8), np.int32), np.zeros((8, 8), np.int32), (0.0,), ValueError),
        (np.zeros((8, 8), np.int32), np.zeros((8, 8), np.int32), (), ValueError),
    ],
)
def test_bad_inputs(truth, pred, thresholds, error):
    with pytest.raises(error):
        match_labels(truth, pred, thresholds)


def test_evaluate_many_length_mismatch():
    with pytest.raises(ValueError, match="1 truth"):
        evaluate_many([np.zeros((8, 8), np.int32)], [])
    with pytest.raises(ValueError, match="image 1"):
        evaluate_many([np.zeros((8, 8), np.int32)] * 2,
                      [np.zeros((8, 8), np.int32), np.zeros((9, 8), np.int32)])


def test_cli_evaluate_prints_json(tmp_path, capsys, disks_case):
    from cellsparse_app.cli import main
    from cellsparse_app.data.images import write_labels

    truth, pred = disks_case
    t = write_labels(tmp_path / "truth.tif", truth)
    p = write_labels(tmp_path / "pred.tif", pred)
    assert main(["evaluate", "--truth", str(t), "--pred", str(p)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ap50"] == pytest.approx(0.5) and out["tp"] == [2, 1, 1]
