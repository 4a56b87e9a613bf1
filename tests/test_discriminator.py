"""Tests for the CoordConv encoder-discriminator (docs/METHOD.md §6)."""
import math

import pytest
import torch
import torch.nn.functional as F

from discriminators.discriminators import (CCSEncoderDiscriminator, CoordConv,
                                           ResidualCCBlock, coordinate_grid)

SIZES = [2, 4, 8, 16, 32, 64, 128, 256]


def tiny_d(seed=0):
    torch.manual_seed(seed)
    return CCSEncoderDiscriminator(width_factor=0.125)


def test_param_count_default():
    assert sum(p.numel() for p in CCSEncoderDiscriminator().parameters()) == 13_332_739


@pytest.mark.parametrize("size", SIZES)
def test_output_shapes(size):
    d = tiny_d()
    for alpha in (0.5, 1.0):
        logit, latent, pose = d(torch.randn(2, 3, size, size), alpha)
        assert logit.shape == (2, 1) and latent.shape == (2, 256) and pose.shape == (2, 2)


def test_default_width_forward():
    torch.manual_seed(0)
    logit, latent, pose = CCSEncoderDiscriminator()(torch.randn(2, 3, 64, 64), 0.7)
    assert logit.shape == (2, 1) and latent.shape == (2, 256) and pose.shape == (2, 2)


def test_latent_dim():
    torch.manual_seed(0)
    d = CCSEncoderDiscriminator(latent_dim=10, width_factor=0.125)
    logit, latent, pose = d(torch.randn(2, 3, 16, 16), 1.0)
    assert logit.shape == (2, 1) and latent.shape == (2, 10) and pose.shape == (2, 2)


@pytest.mark.parametrize("size", SIZES[1:])
def test_fade(size):
    d = tiny_d()
    img = torch.randn(2, 3, size, size)
    out_1, out_half = d(img, 1.0), d(img, 0.5)
    assert not torch.allclose(out_1[0], out_half[0])
    # alpha = 0: only the previous entry's path counts, i.e. D at half resolution.
    down = F.interpolate(img, scale_factor=0.5, mode="nearest")
    for a, b in zip(d(img, 0.0), d(down, 1.0)):
        torch.testing.assert_close(a, b)


def test_no_fade_at_2():
    d = tiny_d()
    img = torch.randn(2, 3, 2, 2)
    for a, b in zip(d(img, 1.0), d(img, 0.0)):
        assert torch.equal(a, b)


def test_bad_size():
    with pytest.raises(ValueError):
        tiny_d()(torch.randn(1, 3, 48, 48), 1.0)


def test_coordinate_grid():
    g = coordinate_grid(3, 5)
    assert g.shape == (1, 2, 3, 5)
    torch.testing.assert_close(g[0, 0, :, 0], torch.tensor([-1.0, 0.0, 1.0]))  # along height
    torch.testing.assert_close(g[0, 1, 0], torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0]))  # along width
    assert (g[0, 0] == g[0, 0, :, :1]).all() and (g[0, 1] == g[0, 1, :1]).all()


@pytest.mark.parametrize("stride", [1, 2])
def test_coordconv_equals_conv_of_concatenation(stride):
    torch.manual_seed(0)
    cc = CoordConv(4, 6, 3, stride=stride, padding=1)
    assert cc.conv.in_channels == 6
    x = torch.randn(2, 4, 7, 9)
    ys = (torch.arange(7.0) / 6 * 2 - 1)[:, None].expand(7, 9)
    xs = (torch.arange(9.0) / 8 * 2 - 1)[None, :].expand(7, 9)
    cat = torch.cat([x, ys.expand(2, 1, 7, 9), xs.expand(2, 1, 7, 9)], dim=1)
    torch.testing.assert_close(cc(x), cc.conv(cat))


def test_residual_block():
    torch.manual_seed(0)
    block = ResidualCCBlock(4, 8)
    x = torch.randn(2, 4, 8, 8)
    y = F.leaky_relu(block.conv2(F.leaky_relu(block.conv1(x), 0.2)), 0.2)
    out = block(x)
    assert out.shape == (2, 8, 4, 4)
    torch.testing.assert_close(out, (y + block.proj(x)) / 2 ** 0.5)


def test_r1_double_backward():
    d = tiny_d()
    img = torch.randn(2, 3, 32, 32, requires_grad=True)
    logit, _, _ = d(img, 0.5)
    (grad,) = torch.autograd.grad(logit.sum(), img, create_graph=True)
    penalty = grad.square().flatten(1).sum(1).mean()
    penalty.backward()
    # R = 32 enters at entry 5; weights that shape the input gradient get a second-order gradient.
    assert all(b.conv1.conv.weight.grad is not None for b in d.blocks[5:])
    assert d.from_rgb[5][0].weight.grad is not None and d.from_rgb[6][0].weight.grad is not None
    assert sum(p.grad.abs().sum() for p in d.parameters() if p.grad is not None) > 0


def test_autocast():
    d = tiny_d()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outs = d(torch.randn(2, 3, 32, 32), 0.5)
    assert all(torch.isfinite(o.float()).all() for o in outs)


def test_block_coordconv_weights_are_kaiming_as_published():
    """docs/METHOD.md §6: both CoordConvs of a residual block are Kaiming-normal (a=0.2, fan_in);
    the default init would give 0.41x this standard deviation. The projection keeps the default."""
    torch.manual_seed(0)
    block = ResidualCCBlock(128, 256)
    for conv in (block.conv1.conv, block.conv2.conv):
        fan_in = conv.weight[0].numel()
        expected = math.sqrt(2 / (1 + 0.2 ** 2)) / math.sqrt(fan_in)
        assert abs(conv.weight.std().item() / expected - 1) < 0.1
    default_bound = 1 / math.sqrt(128)  # kaiming_uniform(a=sqrt(5)) bound for the 1x1 projection
    assert block.proj.weight.abs().max().item() <= default_bound + 1e-6
