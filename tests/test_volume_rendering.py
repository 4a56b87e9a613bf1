"""Tests for volume integration and importance sampling (docs/METHOD.md §2)."""
import math

import pytest
import torch

from generators.volume_rendering import IntegrationOptions, importance_depths, integrate

D = torch.float64


def three_samples():
    rgb = torch.tensor([[0.9, 0.1, 0.2], [0.3, 0.8, 0.4], [0.5, 0.6, 0.7]], dtype=D)
    feats = torch.tensor([[1.0, -2.0], [3.0, 0.5], [-1.0, 4.0]], dtype=D)
    sigma = torch.tensor([1.0, 2.0, 3.0], dtype=D)
    depths = torch.tensor([0.5, 1.0, 2.0], dtype=D)
    return rgb, feats, sigma, depths


def by_hand(sigma, depths, clamp=lambda s: max(s, 0.0)):
    deltas = [depths[1] - depths[0], depths[2] - depths[1], 1e10]
    alphas = [1 - math.exp(-d * clamp(s)) for d, s in zip(deltas, sigma)]
    trans, weights = 1.0, []
    for a in alphas:
        weights.append(a * trans)
        trans *= 1 - a + 1e-10
    return torch.tensor(weights, dtype=D)


def run(rgb, feats, sigma, depths, **opts):
    return integrate(rgb[None, None], sigma[None, None], depths[None, None], feats[None, None],
                     IntegrationOptions(**opts))


def test_hand_computed_three_samples():
    rgb, feats, sigma, depths = three_samples()
    w = by_hand(sigma.tolist(), depths.tolist())
    # the explicit numbers, so the helper itself is checked too
    e05, e2 = math.exp(-0.5), math.exp(-2.0)
    assert torch.allclose(w, torch.tensor([1 - e05, (1 - e2) * e05, e05 * e2], dtype=D), atol=1e-9)
    out = run(rgb, feats, sigma, depths)
    assert torch.allclose(out.weights[0, 0], w, atol=1e-12)
    assert torch.allclose(out.rgb[0, 0], (w[:, None] * rgb).sum(0), atol=1e-12)
    assert torch.allclose(out.features[0, 0], (w[:, None] * feats).sum(0), atol=1e-12)
    assert torch.allclose(out.depth[0, 0], (w * depths).sum(), atol=1e-12)
    assert out.rgb.shape == (1, 1, 3) and out.features.shape == (1, 1, 2) and out.depth.shape == (1, 1)


def test_partial_opacity_hand_case():
    """Small densities: the last sample (delta 1e10) is opaque only if its sigma > 0."""
    rgb, feats, _, depths = three_samples()
    sigma = torch.tensor([0.4, 0.7, 0.0], dtype=D)
    w = by_hand(sigma.tolist(), depths.tolist())
    out = run(rgb, feats, sigma, depths)
    assert torch.allclose(out.weights[0, 0], w, atol=1e-12)
    assert out.weights[0, 0, 2] == 0
    assert out.weights.sum() < 1
    assert torch.allclose(out.depth[0, 0], (w * depths).sum(), atol=1e-12)


def test_opaque_first_sample():
    rgb, feats, _, depths = three_samples()
    sigma = torch.tensor([1e6, 5.0, 5.0], dtype=D)
    out = run(rgb, feats, sigma, depths)
    assert torch.allclose(out.rgb[0, 0], rgb[0], atol=1e-9)
    assert torch.allclose(out.features[0, 0], feats[0], atol=1e-9)
    assert torch.allclose(out.depth[0, 0], depths[0], atol=1e-9)
    assert torch.allclose(out.weights[0, 0], torch.tensor([1.0, 0.0, 0.0], dtype=D), atol=1e-9)


def test_zero_density_last_back():
    rgb, feats, _, depths = three_samples()
    sigma = torch.zeros(3, dtype=D)
    out = run(rgb, feats, sigma, depths, last_back=True)
    assert torch.allclose(out.rgb[0, 0], rgb[2], atol=1e-12)
    assert torch.allclose(out.features[0, 0], feats[2], atol=1e-12)
    assert torch.allclose(out.depth[0, 0], depths[2], atol=1e-12)
    without = run(rgb, feats, sigma, depths)
    assert torch.equal(without.rgb, torch.zeros_like(without.rgb)) and without.depth.item() == 0


def test_last_back_adds_remainder_to_last_weight():
    rgb, feats, _, depths = three_samples()
    sigma = torch.tensor([0.4, 0.7, 0.0], dtype=D)
    w = by_hand(sigma.tolist(), depths.tolist())
    out = run(rgb, feats, sigma, depths, last_back=True)
    expected = w.clone()
    expected[-1] += 1 - w.sum()
    assert torch.allclose(out.weights[0, 0], expected, atol=1e-12)
    assert torch.allclose(out.weights.sum(), torch.tensor(1.0, dtype=D))
    assert torch.allclose(out.rgb[0, 0], (expected[:, None] * rgb).sum(0), atol=1e-12)


def test_white_back():
    rgb, feats, _, depths = three_samples()
    sigma = torch.tensor([0.4, 0.7, 0.0], dtype=D)
    w = by_hand(sigma.tolist(), depths.tolist())
    out = run(rgb, feats, sigma, depths, white_back=True)
    assert torch.allclose(out.rgb[0, 0], (w[:, None] * rgb).sum(0) + (1 - w.sum()), atol=1e-12)
    # features and depth are not whitened
    assert torch.allclose(out.features[0, 0], (w[:, None] * feats).sum(0), atol=1e-12)
    empty = run(rgb, feats, torch.zeros(3, dtype=D), depths, white_back=True)
    assert torch.allclose(empty.rgb, torch.ones_like(empty.rgb))


def test_far_background_depth():
    """The transparent remainder of a ray counts at its last sample in the depth (not in the colour); an
    empty ray lies at the far end instead of at 0, and last_back (which already puts it there) is unchanged."""
    rgb, feats, _, depths = three_samples()
    sigma = torch.tensor([1.0, 2.0, 0.0], dtype=D)  # nothing at the last sample: a part of the ray stays empty
    w = by_hand(sigma.tolist(), depths.tolist())
    assert float(1 - w.sum()) > 0.05
    out = run(rgb, feats, sigma, depths, white_back=True, far_background_depth=True)
    published = run(rgb, feats, sigma, depths, white_back=True)
    assert torch.allclose(out.depth[0, 0], (w * depths).sum() + (1 - w.sum()) * depths[-1], atol=1e-12)
    assert torch.equal(out.rgb, published.rgb) and torch.equal(out.weights, published.weights)
    empty = run(rgb, feats, torch.zeros(3, dtype=D), depths, white_back=True, far_background_depth=True)
    assert torch.allclose(empty.depth, torch.full_like(empty.depth, float(depths[-1])), atol=1e-12)
    assert float(run(rgb, feats, torch.zeros(3, dtype=D), depths, white_back=True).depth.abs().max()) < 1e-12
    last_back = dict(clamp_mode="relu", last_back=True)
    assert torch.equal(run(rgb, feats, sigma, depths, far_background_depth=True, **last_back).depth,
                       run(rgb, feats, sigma, depths, **last_back).depth)


def test_softplus_vs_relu():
    rgb, feats, _, depths = three_samples()
    sigma = torch.tensor([-1.0, 0.5, -2.0], dtype=D)
    relu = run(rgb, feats, sigma, depths, clamp_mode="relu")
    soft = run(rgb, feats, sigma, depths, clamp_mode="softplus")
    assert torch.allclose(relu.weights[0, 0], by_hand(sigma.tolist(), depths.tolist()), atol=1e-12)
    assert relu.weights[0, 0, 0] == 0 and relu.weights[0, 0, 2] == 0
    softplus = lambda s: math.log1p(math.exp(s))
    assert torch.allclose(soft.weights[0, 0], by_hand(sigma.tolist(), depths.tolist(), softplus), atol=1e-12)
    assert (soft.weights > 0).all()


def test_bad_clamp_mode():
    rgb, feats, sigma, depths = three_samples()
    with pytest.raises(ValueError):
        run(rgb, feats, sigma, depths, clamp_mode="exp")


def test_nerf_noise():
    g = torch.Generator().manual_seed(0)
    rgb = torch.rand(2, 5, 6, 3, generator=g)
    sigma = torch.randn(2, 5, 6, generator=g)
    depths = torch.linspace(0.8, 1.2, 6).expand(2, 5, 6)
    noise = torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(5))
    clean = integrate(rgb, sigma, depths)
    zero = integrate(rgb, sigma, depths, options=IntegrationOptions(nerf_noise=0.0), noise=noise)
    assert torch.equal(clean.rgb, zero.rgb) and torch.equal(clean.weights, zero.weights)
    noisy = integrate(rgb, sigma, depths, options=IntegrationOptions(nerf_noise=1.0), noise=noise)
    again = integrate(rgb, sigma, depths, options=IntegrationOptions(nerf_noise=1.0), noise=noise.clone())
    assert (noisy.rgb - clean.rgb).abs().max() > 1e-3
    assert torch.equal(noisy.rgb, again.rgb)  # the given draws decide the noise
    # the draws are scaled by nerf_noise and added to the raw density before the clamp
    half = integrate(rgb, sigma, depths, options=IntegrationOptions(nerf_noise=0.5), noise=noise)
    torch.testing.assert_close(half.weights, integrate(rgb, sigma + 0.5 * noise, depths).weights)


def test_no_features():
    g = torch.Generator().manual_seed(0)
    out = integrate(torch.rand(1, 4, 3, 3, generator=g), torch.rand(1, 4, 3, generator=g),
                    torch.linspace(1, 2, 3).expand(1, 4, 3))
    assert out.features is None and out.rgb.shape == (1, 4, 3)


def test_integration_options_from_metadata():
    meta = dict(clamp_mode="softplus", last_back=False, eval_last_back=True, white_back=True,
                far_background_depth=False)
    train = IntegrationOptions.from_metadata(meta, nerf_noise=0.5)
    assert train == IntegrationOptions("softplus", 0.5, False, True)
    assert IntegrationOptions.from_metadata(meta, evaluation=True).last_back is True


# ---------------------------------------------------------------- importance
def coarse_depths(n_rays=64, steps=8):
    return torch.linspace(0.8, 1.2, steps).expand(1, n_rays, steps).contiguous()


def test_importance_within_bins():
    depths = coarse_depths()
    g = torch.Generator().manual_seed(0)
    weights = torch.rand(depths.shape, generator=g)
    fine = importance_depths(depths, weights, 16, generator=g)
    mids = 0.5 * (depths[..., 1:] + depths[..., :-1])
    assert fine.shape == (1, 64, 16)
    assert (fine >= mids[..., :1] - 1e-6).all() and (fine <= mids[..., -1:] + 1e-6).all()
    assert not fine.requires_grad


def test_importance_concentrates_near_spike():
    depths = coarse_depths()
    weights = torch.zeros(depths.shape)
    weights[..., 5] = 1.0
    fine = importance_depths(depths, weights, 32, generator=torch.Generator().manual_seed(0))
    mids = 0.5 * (depths[0, 0, 1:] + depths[0, 0, :-1])
    inside = (fine >= mids[4] - 1e-6) & (fine <= mids[5] + 1e-6)
    assert inside.float().mean() > 0.99
    # uniform weights spread the samples over the whole range instead
    spread = importance_depths(depths, torch.ones(depths.shape), 32, generator=torch.Generator().manual_seed(0))
    inside_uniform = (spread >= mids[4]) & (spread <= mids[5])
    assert inside_uniform.float().mean() < 0.3


def test_importance_deterministic_sorted():
    depths = coarse_depths(4, 6)
    weights = torch.rand(depths.shape, generator=torch.Generator().manual_seed(1))
    a = importance_depths(depths, weights, 10, deterministic=True)
    b = importance_depths(depths, weights, 10, deterministic=True)
    assert torch.equal(a, b)
    assert (a[..., 1:] >= a[..., :-1]).all()
    mids = 0.5 * (depths[..., 1:] + depths[..., :-1])
    assert torch.allclose(a[..., 0], mids[..., 0], atol=1e-6)
    assert torch.allclose(a[..., -1], mids[..., -1], atol=1e-5)


def test_importance_follows_pdf():
    """Inverse-CDF sampling: the fraction of samples per bin matches the (normalised) weights."""
    steps = 6
    depths = torch.linspace(0.0, 1.0, steps).expand(1, 1, steps).contiguous()
    weights = torch.tensor([0.0, 1.0, 3.0, 0.5, 2.5, 0.0]).expand(1, 1, steps)
    fine = importance_depths(depths, weights, 200_000, generator=torch.Generator().manual_seed(0))[0, 0]
    mids = 0.5 * (depths[0, 0, 1:] + depths[0, 0, :-1])
    counts = torch.histogram(fine, bins=mids).hist
    pdf = weights[0, 0, 1:-1] + 1e-5
    assert torch.allclose(counts / counts.sum(), pdf / pdf.sum(), atol=0.005)
