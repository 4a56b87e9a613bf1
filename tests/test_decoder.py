"""Tests for the progressive 2D upsampler (docs/METHOD.md §5)."""
import math

import pytest
import torch
import torch.nn.functional as F

from float_tolerance import reordered_sum_atol
from generators.decoder import AdaIN, Decoder, EqualizedConv2d, upsample_blur

SMALL = dict(in_channels=32, style_dim=256, channels=(32, 32, 16, 8))


def small_decoder(seed=0):
    torch.manual_seed(seed)
    return Decoder(**SMALL)


def test_param_count_default():
    assert sum(p.numel() for p in Decoder().parameters()) == 4_493_519


@pytest.mark.parametrize("size", [4, 8])
@pytest.mark.parametrize("n", range(5))
def test_output_size(size, n):
    dec = small_decoder()
    feats, style = torch.randn(2, 32, size, size), torch.randn(2, 256)
    for alpha in (0.0, 0.5, 1.0):
        out = dec(feats, style, size * 2 ** n, alpha)
        assert out.shape == (2, 3, size * 2 ** n, size * 2 ** n)
        assert torch.isfinite(out).all()


def _features_before_and_after_last(dec, feats, style, n):
    """Recompute, from the sub-modules, the feature map before block n and after it."""
    x = dec.in_norm(F.leaky_relu(feats, 0.2), style)
    x = dec.base(x, style)
    for block in dec.blocks[:n - 1]:
        x = block(x, style)
    return x, dec.blocks[n - 1](x, style)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_alpha_endpoints_are_exact(n):
    dec = small_decoder()
    feats, style = torch.randn(2, 32, 4, 4), torch.randn(2, 256)
    before, after = _features_before_and_after_last(dec, feats, style, n)
    skip = upsample_blur(dec.to_rgb[n - 1](before))
    assert torch.equal(dec(feats, style, 4 * 2 ** n, 0.0), skip)
    assert torch.equal(dec(feats, style, 4 * 2 ** n, 1.0), dec.to_rgb[n](after))
    mid = dec(feats, style, 4 * 2 ** n, 0.25)
    new = dec.to_rgb[n](after)
    # the blend of two terms, rounded in another order (tests/float_tolerance.py)
    atol = reordered_sum_atol(2, (0.75 * skip.abs() + 0.25 * new.abs()).max().item())
    torch.testing.assert_close(mid, 0.75 * skip + 0.25 * new, rtol=0, atol=atol)


def test_n0_is_torgb_of_base():
    dec = small_decoder()
    feats, style = torch.randn(2, 32, 8, 8), torch.randn(2, 256)
    base = dec.base(dec.in_norm(F.leaky_relu(feats, 0.2), style), style)
    assert torch.equal(dec(feats, style, 8, 0.3), dec.to_rgb[0](base))


def test_upsample_blur_matches_reference_and_keeps_constants():
    img = torch.randn(2, 3, 5, 6)
    up = F.interpolate(img, scale_factor=2, mode="bilinear", align_corners=False)
    padded = F.pad(up, (1, 1, 1, 1), mode="reflect")
    w = torch.tensor([1.0, 2.0, 1.0])
    ref = sum(w[i] * w[j] * padded[..., i:i + 10, j:j + 12] for i in range(3) for j in range(3)) / 16
    # a depthwise convolution against this sum of the same 9 products in another order; the weights add up
    # to 1, so the |products| add up to at most max |up| (tests/float_tolerance.py)
    torch.testing.assert_close(upsample_blur(img), ref, rtol=0, atol=reordered_sum_atol(9, up.abs().max().item()))
    const = torch.full((1, 3, 4, 4), 0.7)
    torch.testing.assert_close(upsample_blur(const), torch.full((1, 3, 8, 8), 0.7))


def test_adain_statistics():
    torch.manual_seed(0)
    norm = AdaIN(8, style_dim=16)
    with torch.no_grad():
        norm.style.bias.normal_()  # non-trivial shift as well
    x = torch.randn(3, 8, 32, 32) * 5 + 2
    style = torch.randn(3, 16)
    out = norm(x, style)
    scale, shift = norm.style(style).chunk(2, dim=1)
    torch.testing.assert_close(out.mean(dim=(2, 3)), shift, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.std(dim=(2, 3), unbiased=False), scale.abs(), atol=1e-4, rtol=1e-4)


def test_adain_init_and_constant_input():
    torch.manual_seed(0)
    lin_ref = torch.nn.Linear(256, 64)
    torch.manual_seed(0)
    norm = AdaIN(32)
    torch.testing.assert_close(norm.style.weight, 0.25 * lin_ref.weight)
    assert torch.count_nonzero(norm.style.bias) == 0
    out = norm(torch.ones(2, 32, 4, 4), torch.randn(2, 256))  # zero variance: finite, x_hat = 0
    assert torch.isfinite(out).all()


def test_equalized_conv_runtime_scaling():
    torch.manual_seed(0)
    conv = EqualizedConv2d(16, 32, 3, padding=1)
    assert abs(conv.weight.mean().item()) < 0.05 and abs(conv.weight.std().item() - 1) < 0.05
    assert torch.count_nonzero(conv.bias) == 0
    with torch.no_grad():
        conv.bias.normal_()
        conv.weight.mul_(3)  # the scale is applied at run time, so edits to the weight show through
    x = torch.randn(2, 16, 7, 7)
    c = math.sqrt(2 / (16 * 9))
    # The published layer computes c * (W x + b): the bias is scaled by c too (docs/METHOD.md §5).
    ref = c * F.conv2d(x, conv.weight, conv.bias, padding=1)
    # c (W x + b) against (c W) x + c b: each output sums 16 * 9 products (+ the bias) rounded otherwise
    # (tests/float_tolerance.py), with c * (|W| |x| + |b|) as the sum of |terms|
    abs_sum = c * (F.conv2d(x.abs(), conv.weight.abs(), conv.bias.abs(), padding=1)).max().item()
    torch.testing.assert_close(conv(x), ref, rtol=0, atol=reordered_sum_atol(16 * 9 + 1, abs_sum))
    assert conv(x).shape == (2, 32, 7, 7)


def test_equalized_conv_bias_gradient_is_scaled():
    """d out / d b = c per output pixel: an unscaled bias would get 1/c (~12 here) times more."""
    conv = EqualizedConv2d(16, 32, 3, padding=1)
    conv(torch.zeros(1, 16, 5, 5)).sum().backward()
    torch.testing.assert_close(conv.bias.grad, torch.full((32,), 25 * math.sqrt(2 / (16 * 9))))


@pytest.mark.parametrize("out_size", [0, 2, 12, 24, 128, 256])
def test_bad_output_size(out_size):
    dec = small_decoder()
    with pytest.raises(ValueError):
        dec(torch.randn(1, 32, 4, 4), torch.randn(1, 256), out_size, 1.0)


def test_gradients_reach_style_and_features():
    dec = small_decoder()
    feats = torch.randn(2, 32, 4, 4, requires_grad=True)
    style = torch.randn(2, 256, requires_grad=True)
    dec(feats, style, 16, 0.5).square().mean().backward()
    assert style.grad is not None and style.grad.abs().sum() > 0
    assert feats.grad is not None and feats.grad.abs().sum() > 0


def test_autocast():
    dec = small_decoder()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = dec(torch.randn(2, 32, 4, 4), torch.randn(2, 256), 32, 0.5)
    assert out.shape == (2, 3, 32, 32) and torch.isfinite(out.float()).all()
