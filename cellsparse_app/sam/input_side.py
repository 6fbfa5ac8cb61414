"""MobileSAM at a smaller encoder input side (opt-in ``SamConfig.encoder_side``): faster, coarser.

SAM resizes every image so that its longest side is 1024 pixels, so a 512 x 512 image is
upsampled 2x before the encoder sees it, and the encoder's cost grows with the square of that
side. MobileSAM's TinyViT encoder is convolutional plus *windowed* attention (its attention
biases depend on the window, not on the image size), so the same weights run at a smaller side:
at 512 the embedding is ``32 x 32`` instead of ``64 x 64`` and the encoder costs ~4x less
(TinyViT, one thread: 2.9 s of CPU at 1024, 0.66 s at 512). The prompt encoder and the mask
decoder work on any embedding grid once told its size.

The price is resolution: each embedding cell covers 16 pixels of the resized image instead of 8
of the 2x-upsampled one, so small objects (below ~20 pixels across) lose detail. SAM and MobileSAM
were trained at 1024 only, and their accuracy at 512 could not be measured here (no real weights
can be downloaded on the development machines), hence 1024 stays the default and this path is
for users who want faster embeddings of large-object images. Only ``vit_t``: the plain ViTs of
SAM have absolute position embeddings learnt for a 64 x 64 grid.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

logger = logging.getLogger(__name__)

#: SAM's own input side: the default, and the only side of the plain ViT backends.
STANDARD_SIDE = 1024
#: Smallest side accepted (an 8 x 8 embedding grid is already too coarse for any prompt).
MIN_SIDE = 256
#: Embedding cells per side = side / PATCH (TinyViT down-samples by 16 overall).
PATCH = 16
#: Multiple that keeps every TinyViT stage's resolution whole (stride 4, then 2, 2).
SIDE_MULTIPLE = 64
#: TinyViT-5M hyper-parameters of ``mobile_sam.build_sam_vit_t`` (checked by a strict load).
TINYVIT_ARGS: dict[str, Any] = dict(
    in_chans=3, num_classes=1000, embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2],
    num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7], mlp_ratio=4.0, drop_rate=0.0,
    drop_path_rate=0.0, use_checkpoint=False, mbconv_expand_ratio=4.0, local_conv_size=3,
    layer_lr_decay=0.8,
)


def check_encoder_side(side: int) -> int:
    """``side`` if it is a valid encoder input side, else ``ValueError`` naming it."""
    if (not isinstance(side, int) or isinstance(side, bool) or side % SIDE_MULTIPLE
            or not MIN_SIDE <= side <= STANDARD_SIDE):
        raise ValueError(
            f"encoder_side must be a multiple of {SIDE_MULTIPLE} from {MIN_SIDE} to "
            f"{STANDARD_SIDE}, got {side!r}"
        )
    return side


def with_encoder_side(model: Any, family: str, side: int) -> Any:
    """A SAM model like ``model`` whose image encoder takes ``side x side`` inputs.

    The prompt encoder and mask decoder are *shared* with ``model`` (same parameters); the image
    encoder is a new TinyViT built for ``side`` with ``model``'s encoder weights copied into it.
    ``model`` itself is returned unchanged when ``side`` is already its input side.

    Raises:
        ValueError: invalid ``side``, or a backend other than MobileSAM (``family``).
    """
    check_encoder_side(side)
    if side == int(model.image_encoder.img_size):
        return model
    if family != "mobile_sam":
        raise ValueError(
            f"encoder_side={side} is only available for vit_t (MobileSAM); the SAM ViTs "
            f"run at {STANDARD_SIDE}"
        )
    from mobile_sam.modeling import Sam

    encoder = _tinyvit_class()(img_size=side, **TINYVIT_ARGS)
    encoder.load_state_dict(model.image_encoder.state_dict(), strict=True)
    param = next(model.parameters())
    encoder = encoder.to(device=param.device, dtype=param.dtype)
    grid = side // PATCH
    prompt_encoder = copy.copy(model.prompt_encoder)  # shares its parameters and sub-modules
    prompt_encoder.image_embedding_size = (grid, grid)
    prompt_encoder.input_image_size = (side, side)
    prompt_encoder.mask_input_size = (4 * grid, 4 * grid)
    smaller = Sam(
        image_encoder=encoder,
        prompt_encoder=prompt_encoder,
        mask_decoder=model.mask_decoder,
        pixel_mean=model.pixel_mean.flatten().tolist(),
        pixel_std=model.pixel_std.flatten().tolist(),
    )
    logger.info("MobileSAM encoder input side %d (embedding %dx%d)", side, grid, grid)
    return smaller.to(param.device).eval()


def _tinyvit_class() -> type:
    """TinyViT whose last reshape follows its input side (the library hard-codes 64 x 64)."""
    from mobile_sam.modeling import TinyViT

    class SizedTinyViT(TinyViT):
        def forward_features(self, x: Any) -> Any:
            x = self.patch_embed(x)
            for layer in self.layers:
                x = layer(x)
            batch, _, channels = x.shape
            grid = self.img_size // PATCH
            return self.neck(x.view(batch, grid, grid, channels).permute(0, 3, 1, 2))

    return SizedTinyViT
