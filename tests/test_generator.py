"""Tests for the MVCGAN generator (docs/METHOD.md §4): training forward, inference, truncation, queries."""
import copy
import math

import pytest
import torch

from generators.cameras import cam2world_from_poses, sample_poses
from generators.generators import (ImplicitGenerator3d, LatentCodes, RenderOptions, TRUNCATION_SAMPLES,
                                   build_generator)
from curriculums import extract_metadata, get_curriculum, with_defaults
from float_tolerance import network_atol
from losses import photometric_loss

Z_DIM, HIDDEN = 32, 16
META = with_defaults(dict(fov=12.0, ray_start=0.88, ray_end=1.12, img_size=8, num_steps=4, output_size=16,
                          h_mean=math.pi / 2, v_mean=math.pi / 2, h_stddev=0.3, v_stddev=0.155,
                          sample_dist="gaussian", clamp_mode="relu", last_back=False, eval_last_back=True,
                          max_mixup_ratio=0.3, stereo_auxiliary=True, hierarchical_sample=False))
PUBLISHED = extract_metadata(get_curriculum("CelebAHQ"), 0)  # the published architecture


def close(network, a, b):
    """a == b to float32 rounding through `network` (tests/float_tolerance.py): for two evaluations of the
    same values that round differently (other chunks, or codes computed another way)."""
    return torch.allclose(a, b, rtol=0, atol=network_atol(network, b))


def small_generator(seed=0):
    torch.manual_seed(seed)
    return ImplicitGenerator3d(z_dim=Z_DIM, hidden_dim=HIDDEN, decoder_channels=(16, 16, 8, 8))


@pytest.fixture(scope="module")
def gen():
    return small_generator()


def options(evaluation=False, **changes):
    meta = dict(META, **changes)
    return RenderOptions.from_metadata(meta, evaluation=evaluation, nerf_noise=0.0 if evaluation else 0.5)


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def zs(n=2, seed=0):
    return torch.randn(n, Z_DIM, generator=seeded(100 + seed))


def frontal(n=2, yaw_offset=0.0):
    return cam2world_from_poses(torch.full((n,), math.pi / 2 + yaw_offset), torch.full((n,), math.pi / 2))


def test_param_count_default():
    g = ImplicitGenerator3d()
    assert sum(p.numel() for p in g.parameters()) == 6_404_307
    assert sum(p.numel() for p in build_generator(PUBLISHED).parameters()) == 6_404_307


def test_build_generator():
    g = build_generator(dict(PUBLISHED, latent_dim=Z_DIM, hidden_dim=HIDDEN, decoder_channels=(16, 16, 8, 8),
                             model="TALLSIREN"))
    assert type(g.siren).__name__ == "TALLSIREN" and g.z_dim == Z_DIM and g.hidden_dim == HIDDEN
    with pytest.raises(ValueError):
        build_generator(dict(PUBLISHED, generator="Nope"))
    with pytest.raises(ValueError):
        ImplicitGenerator3d(siren="Nope")


def test_render_options_from_metadata():
    train = RenderOptions.from_metadata(META, nerf_noise=0.7)
    assert train.integration.nerf_noise == 0.7 and train.integration.last_back is False
    assert train.max_mixup_ratio == 0.3 and train.stereo_auxiliary and not train.hierarchical_sample
    assert train.rays.img_size == 8 and train.rays.num_steps == 4 and train.output_size == 16
    ev = RenderOptions.from_metadata(META, evaluation=True, nerf_noise=0.7, img_size=16, output_size=64,
                                     lock_view_dependence=True)
    assert ev.integration.nerf_noise == 0.0 and ev.integration.last_back is True
    assert ev.rays.img_size == 16 and ev.output_size == 64 and ev.lock_view_dependence


# -------------------------------------------------------------- training path
def test_training_forward_shapes(gen):
    out = gen(zs(), 0.5, options(), generator=seeded(0))
    assert out.image.shape == (2, 3, 16, 16)
    assert out.pose.shape == (2, 2)
    assert out.primary_rgb.shape == (2, 3, 8, 8) and out.warped_aux_rgb.shape == (2, 3, 8, 8)
    assert (out.primary_rgb >= 0).all() and (out.primary_rgb <= 1).all()
    assert torch.isfinite(out.image).all()
    # the pose is (pitch, yaw) of the primary camera: the first draws of the generator
    yaw, pitch = sample_poses(2, options().pose, generator=seeded(0))
    assert torch.equal(out.pose[:, 0], pitch) and torch.equal(out.pose[:, 1], yaw)


def test_training_forward_without_auxiliary(gen):
    out = gen(zs(), 1.0, options(stereo_auxiliary=False), generator=seeded(0))
    assert out.warped_aux_rgb is None and out.image.shape == (2, 3, 16, 16)


def test_training_forward_same_output_size(gen):
    out = gen(zs(), 1.0, options(output_size=8), generator=seeded(0))
    assert out.image.shape == (2, 3, 8, 8)


def test_zero_mixup_equals_no_auxiliary(gen):
    z = zs()
    with torch.no_grad():
        mixed0 = gen(z, 0.5, options(max_mixup_ratio=0.0), generator=seeded(3))
        plain = gen(z, 0.5, options(stereo_auxiliary=False), generator=seeded(3))
        mixed = gen(z, 0.5, options(max_mixup_ratio=0.3), generator=seeded(3))
    assert torch.equal(mixed0.primary_rgb, plain.primary_rgb) and torch.equal(mixed0.pose, plain.pose)
    assert torch.allclose(mixed0.image, plain.image, atol=1e-6)
    assert not torch.allclose(mixed.image, plain.image, atol=1e-4)  # the mixup does change the features
    assert torch.equal(mixed.primary_rgb, plain.primary_rgb)


def test_forward_is_reproducible_with_generator(gen):
    z = zs()
    with torch.no_grad():
        a = gen(z, 0.5, options(), generator=seeded(7))
        b = gen(z, 0.5, options(), generator=seeded(7))
        c = gen(z, 0.5, options(), generator=seeded(8))
    assert torch.equal(a.image, b.image) and torch.equal(a.warped_aux_rgb, b.warped_aux_rgb)
    assert not torch.allclose(a.image, c.image)


def test_warped_aux_matches_primary_for_same_camera(gen):
    """With h/v spreads 0 the auxiliary camera is the primary camera: warp is ~identity.

    Depth jitter and nerf noise differ between the two renders, so compare without them.
    """
    opts = options(h_stddev=0.0, v_stddev=0.0).replace(integration=options(True).integration)
    with torch.no_grad():
        out = gen(zs(), 1.0, opts, generator=seeded(0))
    # the two views differ only by their depth jitter: close, not equal
    diff = (out.warped_aux_rgb - out.primary_rgb)[..., 1:-1, 1:-1].abs()
    assert diff.mean() < 0.05


def test_photometric_loss_reaches_siren(gen):
    g = copy.deepcopy(gen)
    g.zero_grad(set_to_none=True)
    out = g(zs(), 1.0, options(), generator=seeded(0))
    loss = photometric_loss(out.warped_aux_rgb, out.primary_rgb)
    assert loss.item() > 0
    loss.backward()
    for p in (g.siren.network[0].layer.weight, g.siren.network[5].layer.weight, g.siren.final_layer.weight,
              g.siren.color_layer_sine.layer.weight, g.siren.color_layer_linear.weight,
              g.siren.mapping_network.output_layer.weight, g.siren.mapping_network.network[0].weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    # the decoder plays no part in the photometric loss
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in g.decoder.parameters())


def test_adversarial_loss_reaches_mapping_and_decoder(gen):
    g = copy.deepcopy(gen)
    g.zero_grad(set_to_none=True)
    out = g(zs(), 0.5, options(), generator=seeded(0))
    out.image.square().mean().backward()
    for p in (g.siren.mapping_network.network[0].weight, g.siren.mapping_network.output_layer.weight,
              g.siren.network[0].layer.weight, g.siren.color_layer_sine.layer.weight,
              g.decoder.base.conv.weight, g.decoder.to_rgb[1].weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    # the colour head only feeds the low-res RGB (through the warp grid it doesn't either)
    lin = g.siren.color_layer_linear.weight
    assert lin.grad is None or lin.grad.abs().sum() == 0


# ----------------------------------------------------------------- truncation
def test_truncation_psi_zero_same_image(gen):
    opts = options(evaluation=True)
    a = gen.staged_forward(zs(2, 0), opts, psi=0.0, cam2world=frontal())
    b = gen.staged_forward(zs(2, 1), opts, psi=0.0, cam2world=frontal())
    assert torch.allclose(a.image, b.image, atol=1e-6) and torch.allclose(a.depth, b.depth, atol=1e-6)
    assert torch.allclose(a.image[0], a.image[1], atol=1e-6)
    c = gen.staged_forward(zs(2, 1), opts, psi=0.5, cam2world=frontal())
    assert not torch.allclose(a.image, c.image, atol=1e-4)


def test_truncation_psi_one_and_between(gen):
    opts = options(evaluation=True)
    z = zs()
    out = gen.staged_forward(z, opts, psi=1.0, cam2world=frontal())
    with torch.no_grad():
        ref = gen.render_codes(gen.mapping(z), opts, cam2world=frontal())
    # psi = 1 goes through mean + 1 * (code - mean), which rounds: equal to float32 rounding (float_tolerance)
    assert close(gen, out.image, ref.image) and close(gen, out.depth, ref.depth)
    assert out.image.shape == (2, 3, 16, 16) and out.depth.shape == (2, 8, 8) and out.nerf_rgb.shape == (2, 3, 8, 8)
    # psi in between: mean + psi (code - mean), for all three codes
    mean, codes = gen.average_codes(), gen.mapping(z)
    half = gen.truncated_mapping(z, 0.5)
    for m, c, h in zip(mean, codes, half):
        assert torch.allclose(h, m + 0.5 * (c - m), atol=1e-6)


def test_average_codes_value_and_cache():
    g = small_generator()
    avg = g.average_codes()
    assert g.average_codes() is avg  # cached
    z = torch.randn(TRUNCATION_SAMPLES, Z_DIM, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = g.mapping(z)
    for a, e in zip(avg, expected):
        assert a.shape == (1, e.shape[1])
        assert torch.allclose(a, e.mean(0, keepdim=True), atol=1e-5)
    assert not any("truncation" in k for k in g.state_dict())


def test_average_codes_recomputed_after_optimizer_step():
    g = small_generator()
    before = g.average_codes()
    opt = torch.optim.Adam(g.siren.mapping_network.parameters(), lr=1e-2)
    g.mapping(zs()).style.sum().backward()
    opt.step()
    after = g.average_codes()
    assert after is not before
    assert not torch.allclose(after.style, before.style)
    with torch.no_grad():
        fresh = small_generator()
        fresh.load_state_dict(g.state_dict())
    assert torch.allclose(after.style, fresh.average_codes().style, atol=1e-6)


def test_average_codes_recomputed_after_load_state_dict_and_ema_update():
    g, other = small_generator(0), small_generator(1)
    before = g.average_codes()
    g.load_state_dict(other.state_dict())
    after = g.average_codes()
    assert after is not before
    assert torch.allclose(after.frequencies, other.average_codes().frequencies, atol=1e-6)
    # in-place foreach updates (the EMA's lerp) also count as a change
    with torch.no_grad():
        torch._foreach_lerp_(list(g.parameters()), [p.detach() for p in small_generator(2).parameters()], 0.5)
    assert g.average_codes() is not after
    # a deep copy (how the EMA module is made) does not reuse the original's cache wrongly
    copied = copy.deepcopy(g)
    with torch.no_grad():
        copied.siren.mapping_network.output_layer.bias.add_(1.0)
    assert not torch.allclose(copied.average_codes().frequencies, g.average_codes().frequencies)


# ------------------------------------------------------------------ inference
def test_staged_forward_chunking(gen):
    opts = options(evaluation=True)
    z = zs()
    full = gen.staged_forward(z, opts, psi=0.7, max_batch_size=None, cam2world=frontal())
    tiny = gen.staged_forward(z, opts, psi=0.7, max_batch_size=7, cam2world=frontal())
    odd = gen.staged_forward(z, opts, psi=0.7, max_batch_size=100, cam2world=frontal())
    for other in (tiny, odd):
        assert torch.allclose(full.image, other.image, atol=1e-5)
        assert torch.allclose(full.depth, other.depth, atol=1e-5)
        assert torch.allclose(full.nerf_rgb, other.nerf_rgb, atol=1e-5)


def test_staged_forward_chunk_sizes_respected(gen, monkeypatch):
    sizes = []
    original = gen.siren.forward
    monkeypatch.setattr(gen.siren, "forward", lambda pts, *a: sizes.append(pts.shape[0] * pts.shape[1])
                        or original(pts, *a))
    gen.staged_forward(zs(), options(evaluation=True), max_batch_size=50, cam2world=frontal())
    assert max(sizes) <= 50 and sum(sizes) == 2 * 64 * 4


def test_staged_forward_samples_poses(gen):
    opts = options(evaluation=True)
    a = gen.staged_forward(zs(), opts, generator=seeded(1))
    yaw, pitch = sample_poses(2, opts.pose, generator=seeded(1))
    assert torch.allclose(a.cam2world, cam2world_from_poses(yaw, pitch))


def test_hierarchical_sample(gen, monkeypatch):
    # training path with jitter runs, and gradients flow
    g = copy.deepcopy(gen)
    train = g(zs(), 1.0, options(hierarchical_sample=True), generator=seeded(0))
    train.image.mean().backward()
    assert g.siren.network[0].layer.weight.grad.abs().sum() > 0
    calls = []
    original = gen.siren.forward
    monkeypatch.setattr(gen.siren, "forward", lambda pts, *a: calls.append(pts.shape[1]) or original(pts, *a))
    opts = options(evaluation=True, hierarchical_sample=True)
    out = gen.staged_forward(zs(), opts, psi=0.7, cam2world=frontal(yaw_offset=0.2))
    assert calls == [64 * 4, 64 * 4]  # coarse + fine
    assert torch.isfinite(out.image).all()
    assert (out.depth >= 0.88 - 1e-5).all() and (out.depth <= 1.12 + 1e-5).all()
    flat = gen.staged_forward(zs(), options(evaluation=True), psi=0.7, cam2world=frontal(yaw_offset=0.2))
    assert not torch.allclose(out.image, flat.image, atol=1e-5)


def test_lock_view_dependence(gen, monkeypatch):
    size = 9
    opts = options(evaluation=True, img_size=size, output_size=18)
    locked_opts = opts.replace(lock_view_dependence=True)
    seen = []
    original = gen.siren.forward
    monkeypatch.setattr(gen.siren, "forward", lambda pts, f, p, d: seen.append(d) or original(pts, f, p, d))
    cam = frontal()
    free = gen.staged_forward(zs(), opts, cam2world=cam)
    seen.clear()
    locked = gen.staged_forward(zs(), locked_opts, cam2world=cam)
    assert all(torch.equal(d, torch.tensor([0.0, 0.0, -1.0]).expand_as(d)) for d in seen)
    assert torch.equal(free.depth, locked.depth)  # density ignores the view direction
    assert not torch.allclose(free.nerf_rgb, locked.nerf_rgb, atol=1e-4)
    # the centre ray of the frontal camera already looks down -z
    c = size // 2
    assert torch.allclose(free.nerf_rgb[..., c, c], locked.nerf_rgb[..., c, c], atol=1e-5)
    # with the lock, the colour at a point no longer depends on where the camera is
    seen.clear()
    turned = gen.staged_forward(zs(), locked_opts, cam2world=frontal(yaw_offset=0.3))
    assert all(torch.equal(d, torch.tensor([0.0, 0.0, -1.0]).expand_as(d)) for d in seen)
    assert turned.nerf_rgb.shape == locked.nerf_rgb.shape


def test_style_mix_forward(gen):
    opts = options(evaluation=True)
    z1, z2 = zs(2, 0), zs(2, 1)
    ref = gen.staged_forward(z1, opts, psi=0.7, cam2world=frontal())
    same = gen.style_mix_forward(z1, z1, opts, psi=0.7, cam2world=frontal())
    assert close(gen, same.image, ref.image) and close(gen, same.depth, ref.depth)  # to rounding: float_tolerance
    mixed = gen.style_mix_forward(z1, z2, opts, psi=0.7, cam2world=frontal())
    # geometry (NeRF) from z1, decoder style from z2
    assert close(gen, mixed.depth, ref.depth) and close(gen, mixed.nerf_rgb, ref.nerf_rgb)
    assert not torch.allclose(mixed.image, ref.image, atol=1e-4)
    t1, t2 = gen.truncated_mapping(z1, 0.7), gen.truncated_mapping(z2, 0.7)
    with torch.no_grad():
        manual = gen.render_codes(LatentCodes(t1.frequencies, t1.phases, t2.style), opts, cam2world=frontal())
    assert torch.allclose(mixed.image, manual.image, atol=1e-6)


def test_interpolate_forward(gen):
    opts = options(evaluation=True)
    z1, z2 = zs(2, 0), zs(2, 1)
    a = gen.staged_forward(z1, opts, psi=0.6, cam2world=frontal())
    b = gen.staged_forward(z2, opts, psi=0.6, cam2world=frontal())
    at0 = gen.interpolate_forward(z1, z2, 0.0, opts, psi=0.6, cam2world=frontal())
    at1 = gen.interpolate_forward(z1, z2, 1.0, opts, psi=0.6, cam2world=frontal())
    mid = gen.interpolate_forward(z1, z2, 0.5, opts, psi=0.6, cam2world=frontal())
    assert torch.allclose(at0.image, a.image, atol=1e-6) and torch.allclose(at1.image, b.image, atol=1e-6)
    assert not torch.allclose(mid.image, a.image, atol=1e-4) and not torch.allclose(mid.image, b.image, atol=1e-4)
    t1, t2 = gen.truncated_mapping(z1, 0.6), gen.truncated_mapping(z2, 0.6)
    with torch.no_grad():
        manual = gen.render_codes(t1.lerp(t2, 0.5), opts, cam2world=frontal())
    assert close(gen, mid.image, manual.image)


def test_density_grid(gen):
    z = zs()
    grid = gen.density_grid(z, 5, psi=0.8, half_extent=0.12)
    assert grid.shape == (2, 5, 5, 5)
    chunked = gen.density_grid(z, 5, psi=0.8, half_extent=0.12, max_batch_size=16)
    assert close(gen.siren, chunked, grid)  # chunks of 8 points: other GEMM blockings (float_tolerance)
    codes = gen.truncated_mapping(z, 0.8)
    axis = torch.linspace(-0.12, 0.12, 5)
    i, j, k = 1, 3, 4  # indexed [x, y, z]
    point = torch.tensor([axis[i], axis[j], axis[k]]).expand(2, 1, 3)
    with torch.no_grad():
        _, sigma, _ = gen.siren(point, codes.frequencies, codes.phases, torch.randn(2, 1, 3))
    assert torch.allclose(grid[:, i, j, k], sigma[:, 0], atol=1e-5)
    assert not torch.allclose(grid[:, i, j, k], grid[:, k, j, i], atol=1e-6)


# ---------------------------------------------------------------- sphere prior
def prior_generator(radius=0.075, density=100.0, density_scale=1.0):
    torch.manual_seed(0)
    return build_generator(dict(PUBLISHED, latent_dim=Z_DIM, hidden_dim=HIDDEN, decoder_channels=(16, 16, 8, 8),
                                sphere_prior_radius=radius, sphere_prior_density=density, density_scale=density_scale))


def test_sphere_prior_adds_to_the_density_everywhere_the_field_is_queried():
    plain, with_prior = prior_generator(density=0.0), prior_generator()
    assert (with_prior.sphere_prior_radius, with_prior.sphere_prior_density) == (0.075, 100.0)
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), with_prior.state_dict().values()))
    z = zs()
    # density_grid (meshes): prior = 100 * (1 - |x| / 0.075) on top of the same network
    axis = torch.linspace(-0.12, 0.12, 5)
    points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)          # (5, 5, 5, 3)
    expected_prior = 100.0 * (1 - points.norm(dim=-1) / 0.075)
    difference = with_prior.density_grid(z, 5) - plain.density_grid(z, 5)
    assert torch.allclose(difference, expected_prior.expand_as(difference), atol=1e-4)
    assert expected_prior[2, 2, 2] == 100.0 and expected_prior[0, 0, 0] < -100.0
    # rendering: the same prior inside _query_field, chunked or not, with or without autograd
    codes = with_prior.mapping(z)
    query_points = torch.rand(2, 7, 3) * 0.24 - 0.12
    directions = torch.nn.functional.normalize(torch.randn(2, 7, 3), dim=-1)
    expected = 100.0 * (1 - query_points.norm(dim=-1) / 0.075)
    with torch.no_grad():
        base = plain._query_field(codes, query_points, directions, None)[1]
        chunked = with_prior._query_field(codes, query_points, directions, 4)[1]
    whole = with_prior._query_field(codes, query_points, directions, None)[1]
    assert torch.allclose(whole - base, expected, atol=1e-4) and close(with_prior.siren, chunked, whole)


def test_density_scale_multiplies_the_density_head_before_the_prior():
    """density_scale k: the field's raw density times k (the same weights), then the prior; 1 is the
    published field, and a non-positive scale is refused."""
    plain = prior_generator()
    scaled = prior_generator(density_scale=10.0)
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), scaled.state_dict().values()))
    codes = plain.mapping(zs())
    points = torch.rand(2, 7, 3) * 0.24 - 0.12
    directions = torch.nn.functional.normalize(torch.randn(2, 7, 3), dim=-1)
    prior = 100.0 * (1 - points.norm(dim=-1) / 0.075)
    raw = plain._query_field(codes, points, directions, None)[1] - prior
    assert torch.allclose(scaled._query_field(codes, points, directions, None)[1] - prior, 10 * raw, atol=1e-3)
    assert raw.abs().max() > 1e-2  # the comparison is not between zeros
    with pytest.raises(ValueError, match="density_scale"):
        build_generator(dict(PUBLISHED, density_scale=0.0))
    assert build_generator(PUBLISHED).density_scale == 1.0


def test_sdf_beta_turns_the_head_into_a_signed_distance_with_a_laplace_density():
    """sdf_beta b (VolSDF): d = |x| - radius - k * head, density (1/b) * Laplace CDF(-d/b): 1/b deep inside,
    0 far outside, 1/(2b) on the surface, continuous across it, with a gradient to the head; 0 (the published
    raw density) by default; the curriculum refuses it with softplus, which would add fog everywhere."""
    from curriculums import get_curriculum
    from utils.curriculum_schema import validate_curriculum

    plain = prior_generator()
    torch.manual_seed(0)
    sdf = build_generator(dict(PUBLISHED, latent_dim=Z_DIM, hidden_dim=HIDDEN, decoder_channels=(16, 16, 8, 8),
                               sphere_prior_radius=0.075, sphere_prior_density=100.0, density_scale=2.0,
                               sdf_beta=0.01))
    assert build_generator(PUBLISHED).sdf_beta == 0.0
    codes = plain.mapping(zs())
    points = torch.rand(2, 64, 3) * 0.24 - 0.12
    directions = torch.nn.functional.normalize(torch.randn(2, 64, 3), dim=-1)
    head = plain._query_field(codes, points, directions, None)[1] - 100.0 * (1 - points.norm(dim=-1) / 0.075)
    distance = points.norm(dim=-1) - 0.075 - 2.0 * head
    expected = torch.where(distance <= 0, 1 - 0.5 * torch.exp(distance / 0.01), 0.5 * torch.exp(-distance / 0.01)) / 0.01
    density = sdf._query_field(codes, points, directions, None)[1]
    assert torch.allclose(density, expected, rtol=1e-4, atol=1e-3)
    assert density.min() >= 0 and density.max() <= 100.0
    # on, just inside and just outside the surface; deep inside and far outside
    surface = sdf._sdf_density(torch.zeros(5), torch.tensor([[0.075, 0, 0], [0.0749, 0, 0], [0.0751, 0, 0],
                                                             [0.0, 0, 0], [0.2, 0, 0]]))
    assert surface[0] == pytest.approx(50.0) and surface[1] == pytest.approx(50.0, abs=0.6)
    assert surface[2] == pytest.approx(50.0, abs=0.6) and surface[3] > 99.9 and surface[4] < 1e-3
    head = torch.zeros(3, requires_grad=True)
    sdf._sdf_density(head, torch.tensor([[0.07, 0, 0], [0.075, 0, 0], [0.08, 0, 0]])).sum().backward()
    assert (head.grad > 0).all()  # more head, more density, near the surface on either side
    # without a sphere prior (density 0: the synthetic metric's floor) there is no radius: d = |x| - k * head
    no_prior = build_generator(dict(PUBLISHED, latent_dim=Z_DIM, hidden_dim=HIDDEN, decoder_channels=(16, 16, 8, 8),
                                    sphere_prior_radius=0.075, sphere_prior_density=0.0, sdf_beta=0.01))
    assert no_prior._sdf_density(torch.zeros(1), torch.tensor([[0.01, 0, 0]])) == pytest.approx(50 * math.exp(-1))
    critters = get_curriculum("Critters")
    with pytest.raises(ValueError, match="sdf_beta needs clamp_mode 'relu'"):
        validate_curriculum(dict(critters, sdf_beta=0.01))
    validate_curriculum(dict(critters, sdf_beta=0.01, clamp_mode="relu"))


def test_sphere_prior_gives_an_untrained_field_a_sphere_silhouette_and_depth():
    # Without it an untrained field is a faint fog; with it, a sphere of radius ~0.075 at the origin
    # seen from distance 1: opaque in the middle, empty at the corners. The density rises linearly
    # inward from the surface at 1 - 0.075, so the expected depth lies between it and the centre.
    with torch.no_grad():
        out = prior_generator().staged_forward(zs(), options(evaluation=True, img_size=16, num_steps=24,
                                                             clamp_mode="softplus"), cam2world=frontal())
        plain = prior_generator(density=0.0).staged_forward(zs(), options(evaluation=True, img_size=16,
                                                                          num_steps=24, clamp_mode="softplus"),
                                                            cam2world=frontal())
    assert (out.opacity[:, 7:9, 7:9] > 0.99).all() and (out.opacity[:, :2, :2] < 0.05).all()
    assert (plain.opacity < 0.5).all()
    centre_depth = out.depth[:, 7:9, 7:9]
    assert ((centre_depth > 0.925) & (centre_depth < 0.98)).all()
    # The silhouette is a disc a little inside the sphere's outline (the rim's chords are too short
    # to turn opaque): 0.075 at distance 1 is 5.7 pixels for fov 12 over 16 pixels.
    sphere_pixels = 0.075 / math.tan(math.radians(6)) * 8
    silhouette_pixels = ((out.opacity > 0.5).float().sum(dim=(1, 2)) / math.pi).sqrt()
    assert ((silhouette_pixels > 0.7 * sphere_pixels) & (silhouette_pixels < sphere_pixels)).all()


def test_sphere_prior_is_validated_and_absent_from_the_published_curricula():
    import curriculums
    with pytest.raises(ValueError, match="sphere_prior"):
        build_generator(dict(PUBLISHED, sphere_prior_radius=-0.1, sphere_prior_density=10))
    for name in ("CelebAHQ", "FFHQ", "Cat"):
        curriculum = curriculums.CURRICULA[name]
        assert "sphere_prior_radius" not in curriculum and "sphere_prior_density" not in curriculum
        metadata = curriculums.extract_metadata(curriculum, 0)  # filled in from curriculums.KEYS: no prior
        assert metadata["sphere_prior_radius"] == 0.0 and metadata["sphere_prior_density"] == 0.0


def test_sdf_beta_at_narrows_geometrically_then_holds():
    """sdf_beta_at: without sdf_beta_start the width is sdf_beta at every step; with it, sdf_beta_start at
    step 0, their geometric mean half-way, sdf_beta from sdf_beta_anneal_steps on and for step None (a
    generator built for a finished run)."""
    from generators.generators import sdf_beta_at

    plain = dict(sdf_beta=0.01, sdf_beta_start=0.0, sdf_beta_anneal_steps=0)
    assert [sdf_beta_at(plain, s) for s in (None, 0, 100)] == [0.01] * 3
    assert sdf_beta_at(dict(PUBLISHED), 7) == 0.0
    annealed = dict(sdf_beta=0.01, sdf_beta_start=0.09, sdf_beta_anneal_steps=800)
    assert sdf_beta_at(annealed, 0) == pytest.approx(0.09)
    assert sdf_beta_at(annealed, 400) == pytest.approx(0.03)
    assert sdf_beta_at(annealed, 800) == pytest.approx(0.01) and sdf_beta_at(annealed, 5000) == pytest.approx(0.01)
    assert sdf_beta_at(annealed, None) == 0.01
    assert build_generator(dict(PUBLISHED, **annealed, latent_dim=Z_DIM, hidden_dim=HIDDEN,
                                decoder_channels=(16, 16, 8, 8)), 400).sdf_beta == pytest.approx(0.03)
