"""The shared residual U-Net with style vector."""

from __future__ import annotations

import pytest
import torch

from cellsparse_app.models.unet import (
    GridNetwork,
    UNet,
    build_unet,
    count_parameters,
    size_multiple,
)


@pytest.mark.parametrize(
    "cin,cout,base,depth,blocks,style",
    [(1, 3, 8, 3, 1, True), (3, 5, 4, 2, 2, False), (2, 1, 8, 4, 1, True)],
)
def test_output_shape_and_dtype(cin, cout, base, depth, blocks, style):
    torch.manual_seed(0)
    net = build_unet(cin, cout, base, depth, blocks, style).eval()
    side = 2 * size_multiple(depth)
    x = torch.randn(2, cin, side, side + size_multiple(depth))
    with torch.inference_mode():
        y = net(x)
    assert y.shape == (2, cout, side, side + size_multiple(depth))
    assert y.dtype == torch.float32
    assert torch.isfinite(y).all()


def test_width_doubles_per_level_and_blocks_add_parameters():
    small = build_unet(1, 3, 8, 3, blocks=1)
    deeper = build_unet(1, 3, 8, 3, blocks=2)
    wider = build_unet(1, 3, 16, 3, blocks=1)
    assert count_parameters(small) < count_parameters(deeper)
    # Conv weights scale with width squared: ~4x parameters for twice the base width.
    assert 3.5 < count_parameters(wider) / count_parameters(small) < 4.5
    assert small.down[3].convs[0][1][2].out_channels == 8 * 2**3


def test_style_vector_carries_global_context():
    """With the style vector, changing far-away pixels changes the output everywhere."""
    torch.manual_seed(0)
    x = torch.randn(1, 1, 128, 128)
    x2 = x.clone()
    x2[..., 100:, 100:] += 5.0  # far from the top-left corner
    for style, changes in ((True, True), (False, False)):
        torch.manual_seed(0)
        net = build_unet(1, 3, 8, 2, style=style).eval()
        with torch.inference_mode():
            a, b = net(x)[..., :8, :8], net(x2)[..., :8, :8]
        assert bool((a - b).abs().max() > 1e-6) is changes


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    net = build_unet(1, 3, 4, 2)
    net(torch.randn(2, 1, 32, 32)).square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_channels_last_gives_the_same_output():
    torch.manual_seed(0)
    net = build_unet(1, 3, 8, 3).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.inference_mode():
        ref = net(x)
        net_cl = net.to(memory_format=torch.channels_last)
        out = net_cl(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_size_not_divisible_raises_clear_error():
    net = build_unet(1, 3, 4, 3)
    with pytest.raises(ValueError, match="divisible by 8"):
        net(torch.randn(1, 1, 60, 64))


@pytest.mark.parametrize("kwargs", [{"depth": 0}, {"base_channels": 0}, {"in_channels": 1.5}])
def test_bad_arguments_raise(kwargs):
    args = {"in_channels": 1, "out_channels": 3, "base_channels": 4, "depth": 2} | kwargs
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        UNet(**args)


def test_grid_network_runs_the_inner_network_on_the_grid():
    torch.manual_seed(0)
    inner = build_unet(4, 3, 4, 2)
    net = GridNetwork(1, 4, inner, grid=2).eval()
    x = torch.randn(1, 1, 32, 48)
    with torch.inference_mode():
        y = net(x)
        coarse = inner(torch.nn.functional.max_pool2d(net.stem(x), 2))
    assert y.shape == (1, 3, 32, 48)
    # Full-resolution output whose grid positions hold the coarse values, each repeated 2x2.
    torch.testing.assert_close(y[..., ::2, ::2], coarse)
    torch.testing.assert_close(y[..., 1::2, 1::2], coarse)
    with pytest.raises(ValueError, match="grid 2 needs H and W divisible"):
        net(torch.randn(1, 1, 33, 48))
    with pytest.raises(ValueError, match="grid must be"):
        GridNetwork(1, 4, inner, grid=0)
