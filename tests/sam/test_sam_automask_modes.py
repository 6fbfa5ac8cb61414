"""samapi's five automatic mask ``output_type`` values give different, correct objects.

A stub predictor stands in for SAM inside SAM's real ``SamAutomaticMaskGenerator``: every point
prompt on the object gets three nested candidates (a disk, the square around it, a larger
square: SAM's whole / part / sub-part), prompts off it get "the background" (low quality,
filtered). Which candidate survives then shows each mode's rule exactly.
"""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import numpy as np
import pytest

from cellsparse_app.sam import AutoMaskConfig
from cellsparse_app.sam.automask import (
    SAMAPI_OUTPUT_TYPES,
    output_type_config,
    sam_masks,
    suppress_duplicates,
    to_result,
)

SIDE = 64
rr, cc = np.mgrid[:SIDE, :SIDE]
DISK = (rr - 25.5) ** 2 + (cc - 25.5) ** 2 <= 15.0**2  # rows/cols 11..40: box 30 x 30
SQUARE = np.zeros((SIDE, SIDE), bool)
SQUARE[10:42, 10:42] = True  # 32 x 32: box IoU 0.88 with the disk
BIG = np.zeros((SIDE, SIDE), bool)
BIG[9:43, 9:43] = True  # 34 x 34: box IoU 0.78 with the disk, 0.89 with the square
#: (mask, predicted quality) of each candidate, SAM's multimask order.
CANDIDATES = [(DISK, 0.90), (SQUARE, 0.97), (BIG, 0.93)]


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.array_equal(a, b))


# -- the rule itself, on candidate masks ---------------------------------------------------------
@pytest.mark.parametrize("priority, winner", [("smallest", DISK), ("largest", BIG),
                                              ("quality", SQUARE)])
def test_suppress_duplicates_keeps_the_priority_winner(priority, winner):
    masks = np.stack([m for m, _ in CANDIDATES] * 2)  # two prompts on the object
    scores = np.array([q for _, q in CANDIDATES] * 2)
    keep = suppress_duplicates(masks, scores, AutoMaskConfig(priority=priority))
    assert len(keep) == 1 and _same(masks[keep[0]], winner)


def test_priority_none_keeps_overlaps_whole_and_merges_copies():
    masks = np.stack([m for m, _ in CANDIDATES] * 2)
    scores = np.array([q for _, q in CANDIDATES] * 2)
    cfg = AutoMaskConfig(priority="none")
    result = to_result(masks, scores, scores.copy(), "stub", cfg)
    assert len(result) == 3  # each nested mask once, though two prompts gave each
    assert [_same(m, e) for m, e in zip(result.masks(), (BIG, SQUARE, DISK))] == [True] * 3
    np.testing.assert_allclose(result.scores, [0.93, 0.97, 0.90], atol=1e-6)
    # the label image paints smaller ones on top: the disk whole, the others as rims
    assert (result.labels[DISK] == 3).all() and (result.labels[SQUARE & ~DISK] == 2).all()
    assert (result.labels[BIG & ~SQUARE] == 1).all() and (result.labels[~BIG] == 0).all()


def test_output_type_config_maps_samapi_names_and_refuses_others():
    assert output_type_config(" single MASK ").multimask_output is False
    assert output_type_config("Multi-mask (all)").priority == "none"
    assert {output_type_config(t).priority for t in SAMAPI_OUTPUT_TYPES} == {
        "smallest", "largest", "quality", "none"}
    with pytest.raises(ValueError, match="'Multi-mask'.*Single mask"):
        output_type_config("Multi-mask")
    with pytest.raises(ValueError, match="priority.*'biggest'"):
        AutoMaskConfig(priority="biggest")


# -- through SAM's own generator with a stub predictor --------------------------------------------
class StubPredictor:
    """The parts of ``SamPredictor`` that ``SamAutomaticMaskGenerator`` uses."""

    def __init__(self, multimask: bool) -> None:
        import torch

        self.multimask = multimask
        self.model = SimpleNamespace(mask_threshold=0.0)
        self.device = torch.device("cpu")
        self.transform = SimpleNamespace(apply_coords=lambda points, size: points)
        self.is_image_set, self.original_size = False, None
        self.calls: list[bool] = []

    def set_image(self, image: np.ndarray) -> None:
        self.is_image_set, self.original_size = True, image.shape[:2]

    def reset_image(self) -> None:
        self.is_image_set = False

    def predict_torch(self, point_coords, point_labels, boxes=None, mask_input=None,
                      multimask_output=True, return_logits=False):
        import torch

        multimask_output = multimask_output and self.multimask  # as the engine's predictor
        self.calls.append(multimask_output)
        masks, quality = [], []
        for x, y in point_coords[:, 0, :].numpy():
            on_object = BIG[int(y), int(x)]
            cands = CANDIDATES if on_object else [(~BIG, 0.5)] * 3
            cands = cands if multimask_output else cands[:1]  # SAM's single mask: the disk
            masks.append([m for m, _ in cands])
            quality.append([q for _, q in cands])
        logits = torch.from_numpy(np.where(np.array(masks), 10.0, -10.0).astype(np.float32))
        return logits, torch.tensor(quality, dtype=torch.float32), None


class StubEngine:
    """What :func:`sam_masks` needs of a ``SamEngine``."""

    spec = SimpleNamespace(module="segment_anything")
    model = SimpleNamespace(image_encoder=SimpleNamespace(img_size=1024), mask_threshold=0.0)
    name = "stub"

    def __init__(self) -> None:
        self.predictors: list[StubPredictor] = []

    def predictor_for_automask(self, embed, on_batch=None, *, multimask=True):
        self.predictors.append(StubPredictor(multimask))
        return self.predictors[-1]


@pytest.fixture(scope="module")
def generate():
    if importlib.util.find_spec("segment_anything") is None:
        pytest.skip("segment-anything is not installed")

    def run(output_type: str):
        engine = StubEngine()
        base = AutoMaskConfig(points_per_side=8, pred_iou_thresh=0.6)
        cfg = output_type_config(output_type, base)
        rgb = np.zeros((SIDE, SIDE, 3), np.uint8)
        masks, quality, stability = sam_masks(engine, rgb, cfg, embed=lambda crop: None)
        assert set(engine.predictors[0].calls) == {cfg.multimask_output}
        return masks, to_result(masks, quality, stability, "stub", cfg)

    return run


def test_single_mask_decodes_one_mask_per_prompt_and_keeps_the_smallest(generate):
    masks, result = generate("Single mask")
    on_object = 16  # 8 x 8 grid, 4 x 4 of it on the object
    assert len(masks) == on_object and all(_same(m, DISK) for m in masks)  # no NMS inside SAM
    assert len(result) == 1 and _same(result.masks()[0], DISK)


@pytest.mark.parametrize("output_type, winner", [
    ("Multi-mask (smallest)", DISK), ("Multi-mask (largest)", BIG),
    ("Multi-mask (best quality)", SQUARE),
])
def test_multimask_modes_keep_their_winner(generate, output_type, winner):
    masks, result = generate(output_type)
    if output_type != "Multi-mask (best quality)":  # SAM's own NMS is off: every candidate
        assert len(masks) == 3 * 16
    assert len(result) == 1 and _same(result.masks()[0], winner)
    assert result.labels.max() == 1 and _same(result.labels == 1, winner)


def test_multimask_all_returns_the_three_nested_masks(generate):
    masks, result = generate("Multi-mask (all)")
    assert len(masks) == 3 * 16
    assert len(result) == 3
    assert [_same(m, e) for m, e in zip(result.masks(), (BIG, SQUARE, DISK))] == [True] * 3
    assert result.masks().sum(axis=0).max() == 3  # overlaps kept
