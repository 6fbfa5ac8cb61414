"""MobileSAM at a smaller encoder input side (``SamConfig.encoder_side``), random weights."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from cellsparse_app.sam import SamAnnotator, SamConfig, WeightsManager
from cellsparse_app.sam import onnx_encoder as onnx_mod
from cellsparse_app.sam.input_side import check_encoder_side, with_encoder_side

needs_mobile_sam = pytest.mark.skipif(importlib.util.find_spec("mobile_sam") is None,
                                      reason="mobilesam-mirror is not installed")


@pytest.mark.parametrize("side", [500, 128, 2048, 512.0, True, "512"])
def test_bad_encoder_side_is_refused_naming_it(side):
    with pytest.raises(ValueError, match="encoder_side must be a multiple of 64"):
        check_encoder_side(side)


def test_encoder_side_only_for_mobile_sam_and_read_from_env():
    with pytest.raises(ValueError, match="only available for vit_t"):
        SamConfig(model_type="vit_b", encoder_side=512)
    assert SamConfig.from_env(environ={"CELLSPARSE_SAM_ENCODER_SIDE": "512"}).encoder_side == 512
    with pytest.raises(ValueError, match="CELLSPARSE_SAM_ENCODER_SIDE must be an integer"):
        SamConfig.from_env(environ={"CELLSPARSE_SAM_ENCODER_SIDE": "half"})
    assert SamConfig().encoder_side == 1024  # SAM's own side stays the default


@needs_mobile_sam
def test_smaller_encoder_shares_weights_and_leaves_the_original_alone(vit_t):
    import torch

    model = vit_t.engine.model
    small = with_encoder_side(model, "mobile_sam", 512)
    assert with_encoder_side(model, "mobile_sam", 1024) is model
    assert small.image_encoder.img_size == 512 and model.image_encoder.img_size == 1024
    for name, tensor in model.image_encoder.state_dict().items():
        assert torch.equal(small.image_encoder.state_dict()[name], tensor), name
    assert small.mask_decoder is model.mask_decoder
    assert (
        small.prompt_encoder.point_embeddings[0].weight
        is model.prompt_encoder.point_embeddings[0].weight
    )
    assert small.prompt_encoder.image_embedding_size == (32, 32)
    assert model.prompt_encoder.image_embedding_size == (64, 64)
    with torch.inference_mode():
        out = small.image_encoder(torch.zeros(1, 3, 512, 512))
    assert tuple(out.shape) == (1, 256, 32, 32)
    with pytest.raises(ValueError, match="only available for vit_t"):
        with_encoder_side(model, "segment_anything", 512)


@pytest.fixture(scope="module")
def vit_t_512(sam_cache):
    if importlib.util.find_spec("mobile_sam") is None:
        pytest.skip("mobilesam-mirror is not installed")
    cfg = SamConfig(model_type="vit_t", random_weights=True, encoder_engine="torch", device="cpu",
                    decoder_threads=1, encoder_side=512)
    return SamAnnotator(cfg, weights=WeightsManager(sam_cache)).load()


def test_prompts_at_512_give_image_sized_masks(vit_t_512, wide_image):
    engine = vit_t_512.engine
    assert "@512px" in engine.name  # other cache keys than the 1024 embeddings
    emb = engine.encode(np.repeat((wide_image // 16).astype(np.uint8)[..., None], 3, axis=-1))
    assert tuple(emb.features.shape) == (1, 256, 32, 32)
    assert emb.input_size == (256, 512) and emb.original_size == (160, 320)
    result = vit_t_512.segment_from_points(wide_image, [(60, 230)], [1])
    assert result.mask.shape == (160, 320)
    boxed = vit_t_512.segment_from_box(wide_image, (40, 200, 80, 260))
    assert boxed.mask.shape == (160, 320)
    # SAM's (x, y) at the encoder side: (row 10, col 300) of 160x320 reaches it as (x 480, y 16).
    coords = engine.transform.apply_coords(np.array([[300.0, 10.0]]), (160, 320))
    np.testing.assert_allclose(coords, [[480.0, 16.0]])


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None,
                    reason="onnxruntime is not installed")
def test_onnx_export_at_512_matches_pytorch(vit_t_512, tmp_path):
    import torch

    encoder = vit_t_512.engine.model.image_encoder
    onnx = onnx_mod.load_onnx_encoder(encoder, tmp_path, "vit_t", precision="fp32", threads=2)
    assert "-s512-" in onnx.path.name
    x = torch.from_numpy(
        np.random.default_rng(2).standard_normal((1, 3, 512, 512)).astype(np.float32)
    )
    with torch.inference_mode():
        reference = encoder(x).numpy()
    got = onnx(x).numpy()
    assert got.shape == (1, 256, 32, 32)
    assert onnx_mod.compare_outputs(reference, got)["rel_error"] < 1e-3
