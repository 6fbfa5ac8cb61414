"""A faster path through SAM's mask decoder for one prompt, with the same weights and formulas.

``MaskDecoder.predict_masks`` + ``TwoWayTransformer`` of segment-anything (MobileSAM's copy is
identical), reorganised for interactive clicking on a CPU:

1. the image-only work of the first transformer layer (key/value projections of the
   token-to-image attention, query projection of the image-to-token attention; ~30% of the
   transformer) is done once per image (:class:`DecoderCache`, built with the embedding) and
   reused by every click on that image (when no mask prompt is given);
2. the two transposed 2x2/stride-2 convolutions of the upscaling are matrix products in
   channels-last layout (PyTorch's CPU ConvTranspose2d is several times slower);
3. mask logits are computed only for the mask tokens the output mode needs.

Results equal the library decoder's up to float rounding (checked in the tests).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Sequence

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DecoderCache:
    """Per-image tensors of the first decoder layer (no mask prompt), shape ``(1, HW, .)``."""

    keys: Any
    key_pe: Any
    t2i_k: Any
    t2i_v: Any
    i2t_q: Any
    grid: tuple[int, int]


def supports(model: Any) -> bool:
    """Whether ``model``'s decoder has the layout this path assumes (else use the library's)."""
    try:
        ups = model.mask_decoder.output_upscaling
        convs = [ups[0], ups[3]]
        return all(c.kernel_size == (2, 2) and c.stride == (2, 2) and c.padding == (0, 0)
                   and c.output_padding == (0, 0) and c.groups == 1 and c.dilation == (1, 1)
                   for c in convs) and len(model.mask_decoder.transformer.layers) >= 1
    except (AttributeError, IndexError, TypeError):
        return False


def build_cache(model: Any, features: Any, image_pe: Any) -> DecoderCache:
    """The first layer's image-only projections for ``features`` ``(1, C, h, w)``."""
    dense = model.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
    keys = (features + dense).flatten(2).transpose(1, 2).contiguous()
    key_pe = image_pe.flatten(2).transpose(1, 2).contiguous()
    layer = model.mask_decoder.transformer.layers[0]
    with_pe = keys + key_pe
    return DecoderCache(
        keys, key_pe,
        layer.cross_attn_token_to_image.k_proj(with_pe),
        layer.cross_attn_token_to_image.v_proj(keys),
        layer.cross_attn_image_to_token.q_proj(with_pe),
        (int(features.shape[-2]), int(features.shape[-1])),
    )


def _attention(attn: Any, q: Any, k: Any, v: Any, projected: str = "") -> Any:
    """``Attention.forward`` of SAM; inputs named in ``projected`` are already projected."""
    import torch
    import torch.nn.functional as F

    q = q if "q" in projected else attn.q_proj(q)
    k = k if "k" in projected else attn.k_proj(k)
    v = v if "v" in projected else attn.v_proj(v)
    b, heads = max(q.shape[0], k.shape[0], v.shape[0]), attn.num_heads

    def split(x: Any) -> Any:  # cached per-image tensors have batch 1: broadcast them
        x = x.expand(b, -1, -1)
        return x.reshape(b, x.shape[1], heads, x.shape[2] // heads).transpose(1, 2)

    q, k, v = split(q), split(k), split(v)
    if k.shape[2] < 64 <= q.shape[2]:
        # Image attending to a few tokens: PyTorch's softmax over a last axis of ~7 is slow on
        # CPU; the same softmax over the token axis of the transposed scores is fast.
        scores = torch.matmul(k, q.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
        out = torch.matmul(torch.softmax(scores, dim=-2).transpose(-1, -2), v)
    else:
        out = F.scaled_dot_product_attention(q, k, v)
    return attn.out_proj(out.transpose(1, 2).reshape(b, out.shape[2], -1))


def _block(layer: Any, queries: Any, keys: Any, query_pe: Any, key_pe: Any,
           cache: DecoderCache | None) -> tuple[Any, Any]:
    """``TwoWayAttentionBlock.forward``, using ``cache`` for the first layer's image terms."""
    if layer.skip_first_layer_pe:
        queries = _attention(layer.self_attn, queries, queries, queries)
    else:
        q = queries + query_pe
        queries = queries + _attention(layer.self_attn, q, q, queries)
    queries = layer.norm1(queries)
    q = queries + query_pe
    if cache is not None:
        out = _attention(layer.cross_attn_token_to_image, q, cache.t2i_k, cache.t2i_v, "kv")
    else:
        out = _attention(layer.cross_attn_token_to_image, q, keys + key_pe, keys)
    queries = layer.norm2(queries + out)
    queries = layer.norm3(queries + layer.mlp(queries))
    q = queries + query_pe
    if cache is not None:
        out = _attention(layer.cross_attn_image_to_token, cache.i2t_q, q, queries, "q")
    else:
        out = _attention(layer.cross_attn_image_to_token, keys + key_pe, q, queries)
    keys = layer.norm4(keys + out)
    return queries, keys


def _conv_transpose_2x2(x: Any, conv: Any) -> Any:
    """A 2x2/stride-2 ``ConvTranspose2d`` on channels-last ``(B, H, W, Cin)`` as one matmul."""
    import torch

    b, h, w, c_in = x.shape
    c_out = conv.out_channels
    weight = conv.weight.permute(0, 2, 3, 1).reshape(c_in, 4 * c_out)  # (Cin, dy, dx, Cout)
    bias = conv.bias.repeat(4) if conv.bias is not None else None
    flat = x.reshape(-1, c_in)
    y = torch.addmm(bias, flat, weight) if bias is not None else flat @ weight
    y = y.view(b, h, w, 2, 2, c_out).permute(0, 1, 3, 2, 4, 5)
    return y.reshape(b, 2 * h, 2 * w, c_out)


def _upscale(ups: Any, x: Any) -> Any:
    """``output_upscaling`` (convT, LayerNorm2d, act, convT, act) in channels-last layout."""
    import torch.nn.functional as F

    conv1, norm, act1, conv2, act2 = ups
    x = _conv_transpose_2x2(x, conv1)
    x = act1(F.layer_norm(x, (x.shape[-1],), norm.weight, norm.bias, norm.eps))
    return act2(_conv_transpose_2x2(x, conv2))


def predict_masks(model: Any, cache: DecoderCache, sparse: Any, dense: Any | None,
                  mode: str) -> tuple[Any, Any, list[int]]:
    """Low-resolution mask logits for a batch of prompts on one image.

    Args:
        model: the ``Sam`` module.
        cache: :func:`build_cache` of the image.
        sparse: sparse prompt embeddings ``(B, N, C)`` from the prompt encoder.
        dense: dense (mask prompt) embeddings ``(B, C, h, w)``, or None for no mask prompt.
        mode: output mode; ``single`` uses mask token 0, the others tokens 1-3; ``best``
            (batch of one only) computes just the one with the highest predicted quality.

    Returns:
        ``(logits (B, M, 4h, 4w), quality (B, M), mask token indices)``.
    """
    import torch

    decoder = model.mask_decoder
    transformer = decoder.transformer
    batch = sparse.shape[0]
    if mode == "best" and batch != 1:
        raise ValueError("mode 'best' decodes one prompt at a time")
    tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)[None]
    tokens = torch.cat([tokens.expand(batch, -1, -1), sparse], dim=1)
    key_pe = cache.key_pe
    if dense is None:
        keys = cache.keys
    else:  # a mask prompt changes the keys: no reuse for the first layer
        features = cache.keys - model.prompt_encoder.no_mask_embed.weight.reshape(1, 1, -1)
        keys = features + dense.flatten(2).transpose(1, 2)
    queries = tokens
    for i, layer in enumerate(transformer.layers):
        queries, keys = _block(layer, queries, keys, tokens, key_pe,
                               cache if i == 0 and dense is None else None)
    out = _attention(transformer.final_attn_token_to_image, queries + tokens, keys + key_pe, keys)
    queries = transformer.norm_final_attn(queries + out)
    quality = decoder.iou_prediction_head(queries[:, 0])  # (B, 4)
    if mode == "single":
        index: Sequence[int] = [0]
    elif mode == "best":
        index = [1 + int(torch.argmax(quality[0, 1:]))]
    else:
        index = [1, 2, 3]
    h, w = cache.grid
    upscaled = _upscale(decoder.output_upscaling, keys.reshape(batch, h, w, -1))
    # Mask i comes from output token 1 + i (token 0 predicts the qualities) and MLP i.
    hyper = torch.stack([decoder.output_hypernetworks_mlps[i](queries[:, 1 + i])
                         for i in index], dim=1)  # (B, M, C/8)
    flat = upscaled.reshape(batch, -1, upscaled.shape[-1])  # (B, 16hw, C/8)
    logits = (flat @ hyper.transpose(1, 2)).transpose(1, 2)
    return (logits.reshape(batch, len(index), 4 * h, 4 * w), quality[:, list(index)],
            list(index))
