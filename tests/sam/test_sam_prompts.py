"""Prompts, coordinates, output-mode selection, overlap painting, configs and the LRU cache."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from cellsparse_app.sam import (
    AutoMaskConfig,
    MaskResult,
    Prompt,
    RenderConfig,
    SamConfig,
    paint_masks,
)
from cellsparse_app.sam.cache import LruCache
from cellsparse_app.sam.results import select_masks


def test_prompt_converts_row_col_to_sam_xy_in_one_place():
    prompt = Prompt.create((100, 200), [(10, 150), (90.5, 3)], [1, 0], box_rc=(5, 20, 60, 180))
    sam = prompt.to_sam()
    np.testing.assert_array_equal(sam.point_coords, [[150, 10], [3, 90.5]])
    np.testing.assert_array_equal(sam.point_labels, [1, 0])
    np.testing.assert_array_equal(sam.box, [20, 5, 180, 60])
    back = Prompt.from_xy((100, 200), sam.point_coords, sam.point_labels, sam.box)
    np.testing.assert_array_equal(back.points_rc, prompt.points_rc)
    np.testing.assert_array_equal(back.box_rc, prompt.box_rc)
    np.testing.assert_array_equal(prompt.positive_rc, [[10, 150]])
    np.testing.assert_array_equal(prompt.negative_rc, [[90.5, 3]])


def test_labels_default_to_positive_and_accept_bools():
    assert Prompt.create((50, 50), [(1, 2), (3, 4)]).labels.tolist() == [1, 1]
    assert Prompt.create((50, 50), [(1, 2)], [False]).labels.tolist() == [0]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(points_rc=[(100, 5)]), "outside the 100x200 image"),
        (dict(points_rc=[(5, 200)]), "outside the 100x200 image"),
        (dict(points_rc=[(-1, 5)]), "outside"),
        (dict(points_rc=[(5, 5), (6, 6)], labels=[1]), "2 points but 1 labels"),
        (dict(points_rc=[(5, 5)], labels=[2]), "must be 1 (positive) or 0 (negative)"),
        (dict(points_rc=[(5, 5, 5)]), "shape (N, 2)"),
        (dict(points_rc=[(np.nan, 5)]), "NaN"),
        (dict(labels=[1]), "labels but no points"),
        (dict(box_rc=(10, 10, 10, 50)), "empty box"),
        (dict(box_rc=(50, 10, 20, 60)), "empty box"),
        (dict(box_rc=(0, 0, 100, 50)), "outside the 100x200 image"),
        (dict(box_rc=(1, 2, 3)), "box must be"),
        (dict(), "empty prompt"),
        (dict(points_rc=[(5, 5)], mask_input=np.zeros((64, 64))), "mask_input must be"),
    ],
)
def test_bad_prompts_raise_clear_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Prompt.create((100, 200), **kwargs)


def test_mask_input_is_accepted_2d_or_3d_or_as_a_full_size_mask():
    prompt = Prompt.create((40, 40), [(3, 3)], mask_input=np.zeros((256, 256)))
    assert prompt.mask_input.shape == (1, 256, 256)
    mask = np.zeros((100, 200), dtype=bool)
    mask[:, :100] = True  # left half of a landscape image
    logits = Prompt.create((100, 200), [(3, 3)], mask_input=mask).mask_input[0]
    # SAM's frame: 200 -> 1024 wide, 100 -> 512 high, padded below: 128 of 256 rows used.
    assert logits[:120, :120].min() > 7 and logits[:120, 136:].max() < -7
    assert logits[136:].max() < -7


def _candidates():
    masks = np.zeros((3, 10, 10), dtype=bool)
    masks[0, :2, :2] = True      # area 4
    masks[1, :5, :5] = True      # area 25
    masks[2, :3, :3] = True      # area 9
    scores = np.array([0.2, 0.5, 0.9], dtype=np.float32)
    return masks, scores


@pytest.mark.parametrize("mode, index", [("best", 2), ("largest", 1), ("smallest", 0),
                                         ("single", 0)])
def test_select_masks_keeps_each_score_with_its_mask(mode, index):
    masks, scores = _candidates()
    logits = np.arange(3, dtype=np.float32)[:, None, None] * np.ones((3, 4, 4), np.float32)
    got, got_scores, got_logits = select_masks(masks, scores, mode, logits)
    assert got.shape == (1, 10, 10)
    np.testing.assert_array_equal(got[0], masks[index])
    assert got_scores[0] == scores[index]
    assert got_logits[0, 0, 0] == index


def test_select_all_and_unknown_mode():
    masks, scores = _candidates()
    got, got_scores, _ = select_masks(masks, scores, "all")
    np.testing.assert_array_equal(got, masks)
    np.testing.assert_array_equal(got_scores, scores)
    with pytest.raises(ValueError, match="unknown output mode 'biggest'"):
        select_masks(masks, scores, "biggest")


def test_paint_masks_puts_small_masks_on_top_and_drops_hidden_ones():
    masks = np.zeros((4, 20, 20), dtype=bool)
    masks[0] = True                    # "background": 400 px, mostly covered below
    masks[1, 2:8, 2:8] = True          # cell A
    masks[2, 10:18, 10:18] = True      # cell B
    masks[3, 10:17, 10:17] = True      # slightly smaller duplicate of B, painted on top of it
    labels, index = paint_masks(masks, np.array([0.9, 0.8, 0.7, 0.95]),
                                min_visible_fraction=0.5, return_index=True)
    assert labels.dtype == np.int32
    assert labels.max() == len(index) == 3  # B keeps 15 of 64 px: dropped
    assert labels[5, 5] != labels[12, 12] and labels[5, 5] > 0 and labels[12, 12] > 0
    assert labels[0, 19] > 0  # the large mask keeps its visible part
    assert sorted(index.tolist()) == [0, 1, 3]
    for i, k in enumerate(index, start=1):
        assert np.all(masks[k][labels == i])


def test_mask_result_to_labels_uses_the_annotation_convention():
    masks, scores = _candidates()
    result = MaskResult(masks[[1, 0]], scores[[1, 0]], "test")
    labels = result.to_labels()
    assert labels[9, 9] == -1
    assert set(np.unique(labels)) == {-1, 1, 2}
    assert labels[0, 0] != labels[4, 4]
    assert result.to_labels(unlabelled=False)[9, 9] == 0
    with pytest.raises(ValueError, match="3 masks but scores"):
        MaskResult(masks, scores[:2], "test")


def test_configs_validate_and_round_trip(tmp_path):
    with pytest.raises(ValueError, match="unknown SAM model_type 'vit_x'"):
        SamConfig(model_type="vit_x")
    with pytest.raises(ValueError, match="int8"):
        SamConfig(encoder_engine="torch", precision="int8")
    with pytest.raises(ValueError, match="cache_size"):
        SamConfig(cache_size=0)
    with pytest.raises(ValueError, match="pred_iou_thresh"):
        AutoMaskConfig(pred_iou_thresh=1.5)
    with pytest.raises(ValueError, match="points_per_side"):
        AutoMaskConfig(points_per_side=0)
    with pytest.raises(ValueError, match="1 to 3 channel"):
        RenderConfig(channels=(0, 1, 2, 3))
    cfg = AutoMaskConfig(points_per_side=16, min_mask_region_area=20)
    cfg.save(tmp_path / "a.json")
    assert AutoMaskConfig.load(tmp_path / "a.json") == cfg
    assert cfg.sam_kwargs()["points_per_side"] == 16
    assert "max_mask_region_fraction" not in cfg.sam_kwargs()
    render = RenderConfig.from_dict({"channels": [1, 0]})
    assert render.channels == (1, 0)


def test_sam_config_from_env():
    env = {"CELLSPARSE_SAM_MODEL": "vit_b", "CELLSPARSE_SAM_CHECKPOINT": "/x/sam.pth",
           "CELLSPARSE_OFFLINE": "1"}
    cfg = SamConfig.from_env(environ=env)
    assert (cfg.model_type, cfg.checkpoint, cfg.download) == ("vit_b", "/x/sam.pth", False)
    assert SamConfig.from_env(environ={}) == SamConfig()
    with pytest.raises(ValueError, match="vit_q"):
        SamConfig.from_env(environ={"CELLSPARSE_SAM_MODEL": "vit_q"})


def test_lru_cache_evicts_least_recently_used():
    cache = LruCache(2)
    for key in "aba":
        cache.get_or_compute(key, lambda: 1)
    cache.get_or_compute("a", lambda: 1)   # refresh a
    cache.get_or_compute("c", lambda: 3)   # evicts b
    assert "a" in cache and "c" in cache and "b" not in cache
    assert len(cache) == 2


def test_lru_cache_computes_once_across_threads():
    cache = LruCache(4)
    calls = []

    def slow():
        calls.append(1)
        time.sleep(0.2)
        return object()

    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.get_or_compute("k", slow)))
               for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert len({id(r) for r in results}) == 1
    assert cache.info()["misses"] == 1 and cache.info()["hits"] == 5


def test_lru_cache_failure_reaches_caller_and_is_not_cached():
    cache = LruCache(2)

    def boom():
        raise RuntimeError("encoder exploded")

    with pytest.raises(RuntimeError, match="encoder exploded"):
        cache.get_or_compute("k", boom)
    assert cache.get_or_compute("k", lambda: 5) == 5


def test_prompt_batches_counts_sams_generator_work():
    from cellsparse_app.sam.automask import prompt_batches

    assert prompt_batches(AutoMaskConfig()) == 16  # 32x32 points, 64 per batch
    assert prompt_batches(AutoMaskConfig(points_per_side=10, points_per_batch=64)) == 2
    layered = AutoMaskConfig(crop_n_layers=1, crop_n_points_downscale_factor=2)
    assert prompt_batches(layered) == 16 + 4 * 4  # 4 crops of 16x16 points
