"""SamAnnotator with a randomly initialised MobileSAM: shapes, modes, scores, cache, threads.

Random weights give meaningless masks but exercise the real architecture and code paths.
"""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest

from cellsparse_app.sam import OUTPUT_MODES, AutoMaskConfig, Prompt


@pytest.mark.parametrize("mode", OUTPUT_MODES)
def test_every_mode_gives_boolean_masks_with_paired_scores(vit_t, nuclei_image, mode):
    image, _ = nuclei_image
    everything = vit_t.segment_from_points(image, [(100, 120)], [1], mode="all")
    assert everything.masks.shape == (3, 256, 256) and everything.masks.dtype == bool
    assert everything.scores.shape == (3,) and everything.scores.dtype == np.float32
    assert everything.logits.shape == (3, 256, 256)
    assert everything.model == "vit_t (random weights)"
    result = vit_t.segment_from_points(image, [(100, 120)], [1], mode=mode)
    assert result.masks.shape[1:] == (256, 256)
    if mode == "all":
        return
    assert len(result) == 1
    if mode == "single":
        return
    # The chosen mask is one of the three candidates, and its score is *that* candidate's.
    match = [i for i in range(3) if np.array_equal(everything.masks[i], result.mask)]
    assert match, "mask not among the candidates"
    assert result.score in [everything.scores[i] for i in match]
    areas = everything.areas
    if mode == "best":
        assert result.score == everything.scores.max()
    elif mode == "largest":
        assert result.mask.sum() == areas.max()
    elif mode == "smallest":
        assert result.mask.sum() == areas.min()


def test_fast_decoder_gives_the_library_decoders_answers(vit_t, nuclei_image):
    """The reorganised decoder path equals segment-anything's MaskDecoder (float rounding)."""
    image, _ = nuclei_image
    fast = vit_t.embedding(image)
    assert fast.decoder_cache is not None
    library = dataclasses.replace(fast, decoder_cache=None)
    engine = vit_t.engine
    previous = vit_t.segment_from_points(image, [(100, 120)], mode="all").logits[0]
    prompts = [Prompt.create(image.shape, [(100, 120)]),
               Prompt.create(image.shape, [(100, 120), (20, 30)], [1, 0],
                             box_rc=(60, 70, 150, 170)),
               Prompt.create(image.shape, [(100, 120)], mask_input=previous)]
    for prompt in prompts:
        for mode in ("single", "all", "best", "largest"):
            m1, s1, l1 = engine.decode(fast, prompt, mode)
            m2, s2, l2 = engine.decode(library, prompt, mode)
            np.testing.assert_allclose(s1, s2, atol=1e-5)
            np.testing.assert_allclose(l1, l2, atol=1e-4)
            assert np.mean(m1 != m2) < 1e-4  # a pixel may flip at exactly the threshold
    # Batched, as automatic mask generation calls it.
    import torch

    from cellsparse_app.sam import fast_decoder

    model = engine.model
    with torch.inference_mode():
        points = (torch.rand(5, 1, 2) * 1024, torch.ones(5, 1, dtype=torch.int))
        sparse, dense = model.prompt_encoder(points=points, boxes=None, masks=None)
        ref, ref_q = model.mask_decoder(fast.features, model.prompt_encoder.get_dense_pe(),
                                        sparse, dense, True)
        got, got_q, _ = fast_decoder.predict_masks(model, fast.decoder_cache, sparse, None, "all")
    np.testing.assert_allclose(got.numpy(), ref.numpy(), atol=1e-4)
    np.testing.assert_allclose(got_q.numpy(), ref_q.numpy(), atol=1e-5)


def test_second_prompt_on_the_same_image_does_not_re_encode(vit_t, nuclei_image):
    image, _ = nuclei_image
    vit_t.segment_from_points(image, [(10, 10)])
    calls = vit_t.cache_info()["encoder_calls"]
    vit_t.segment_from_points(image.copy(), [(50, 60)])  # same pixels, another array
    vit_t.segment_from_box(image, (20, 20, 90, 100))
    info = vit_t.cache_info()
    assert info["encoder_calls"] == calls
    changed = image.copy()
    changed[0, 0] ^= 1
    vit_t.segment_from_points(changed, [(50, 60)])
    assert vit_t.cache_info()["encoder_calls"] == calls + 1


def test_negative_points_boxes_and_mask_input_are_accepted(vit_t, nuclei_image):
    image, _ = nuclei_image
    first = vit_t.segment_from_points(image, [(100, 120), (30, 30)], [1, 0], mode="all")
    assert len(first) == 3
    boxed = vit_t.segment_from_box(image, (80, 90, 140, 160), mode="single")
    assert boxed.masks.shape == (1, 256, 256)
    both = vit_t.segment_from_box(image, (80, 90, 140, 160), [(100, 120), (85, 95)], [1, 0])
    assert both.masks.shape == (1, 256, 256)
    refined = vit_t.segment_from_points(image, [(100, 120)], mask_input=first.logits[0],
                                        mode="single")
    assert refined.masks.shape == (1, 256, 256)
    assert np.isfinite(refined.scores).all()


def test_row_col_points_reach_sam_as_scaled_x_y(vit_t, wide_image, monkeypatch):
    """A 160x320 image is resized to 320x1024 (x3.2): (row 10, col 300) reaches SAM as (960, 32)."""
    seen = {}
    encoder = vit_t.engine.model.prompt_encoder
    original = encoder.forward

    def spy(points, boxes, masks):
        seen["points"] = None if points is None else points[0].clone()
        seen["boxes"] = None if boxes is None else boxes.clone()
        return original(points, boxes, masks)

    monkeypatch.setattr(encoder, "forward", spy)
    vit_t.segment_from_box(wide_image, (40, 200, 79, 259), [(10, 300)], [1], mode="single")
    np.testing.assert_allclose(seen["points"][0].numpy(), [[960.0, 32.0]], rtol=1e-6)
    np.testing.assert_allclose(seen["boxes"].numpy(), [[640.0, 128.0, 828.8, 252.8]], rtol=1e-6)


def test_bad_prompts_through_the_annotator(vit_t, nuclei_image):
    image, _ = nuclei_image
    with pytest.raises(ValueError, match="outside the 256x256 image"):
        vit_t.segment_from_points(image, [(300, 5)])
    with pytest.raises(ValueError, match="empty box"):
        vit_t.segment_from_box(image, (50, 50, 50, 80))
    with pytest.raises(ValueError, match="1 points but 2 labels"):
        vit_t.segment_from_points(image, [(5, 5)], [1, 0])
    with pytest.raises(ValueError, match="unknown output mode"):
        vit_t.segment_from_points(image, [(5, 5)], mode="everything")
    with pytest.raises(ValueError, match="prompt is for a"):
        vit_t.segment(image, Prompt.create((100, 100), [(5, 5)]))


def test_concurrent_users_get_the_same_answers_and_one_encoding(vit_t, nuclei_image, wide_image):
    image, _ = nuclei_image
    vit_t.clear_cache()
    start = vit_t.cache_info()["encoder_calls"]
    jobs = [(img, p) for img, p in [(image, (100, 120)), (wide_image, (60, 230))] for _ in range(3)]
    results: dict[int, object] = {}
    errors = []

    def work(i, img, p):
        try:
            results[i] = vit_t.segment_from_points(img, [p], mode="all")
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i, img, p)) for i, (img, p) in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert vit_t.cache_info()["encoder_calls"] == start + 2  # one per distinct image
    for i, (img, p) in enumerate(jobs):
        alone = vit_t.segment_from_points(img, [p], mode="all")
        # Same prompt, same image: the same masks up to float rounding (no exact equality:
        # threads may split reductions differently on another CPU).
        assert np.mean(results[i].masks != alone.masks) < 1e-3
        np.testing.assert_allclose(results[i].scores, alone.scores, atol=1e-4)


def test_automatic_masks_give_a_label_image(vit_t, nuclei_image):
    image, _ = nuclei_image
    cfg = AutoMaskConfig(points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                         min_visible_fraction=0.0)
    calls = vit_t.cache_info()["encoder_calls"]
    seen = []
    result = vit_t.generate(image, cfg, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 1)]  # 2x2 points in one batch
    assert result.labels.shape == (256, 256) and result.labels.dtype == np.int32
    assert result.labels.max() == len(result) == len(result.scores) == len(result.stability)
    assert len(result) >= 1
    assert vit_t.cache_info()["encoder_calls"] == calls  # reused the cached embedding
    masks = result.masks()
    assert masks.shape == (len(result), 256, 256)
    assert not (masks.sum(axis=0) > 1).any()  # overlaps resolved
    np.testing.assert_array_equal(vit_t.generate_masks(image, cfg), result.labels)
