"""Tests for the stereo warp and stereo mixup (docs/METHOD.md §4 steps 4-5)."""
import math

import pytest
import torch

from generators.cameras import (RaySampling, cam2world_from_poses, focal_from_fov, perspective_divide,
                                rays_for_cameras, to_world)
from generators.warp import stereo_mixup, stereo_warp, unproject_depth, warp_grid

HALF_PI = math.pi / 2


def cams(yaws, pitches):
    return cam2world_from_poses(torch.tensor(yaws, dtype=torch.float32), torch.tensor(pitches, dtype=torch.float32))


def interior(t, margin=1):
    return t[..., margin:-margin, margin:-margin]


# ------------------------------------------------------------------ identity
@pytest.mark.parametrize("fov", [12.0, 40.0])
def test_warp_identity_same_camera(fov):
    poses = ([HALF_PI, HALF_PI + 0.3, HALF_PI - 0.5, 0.4], [HALF_PI, HALF_PI - 0.2, HALF_PI + 0.15, 1.0])
    c2w = cams(*poses)
    size = 16
    g = torch.Generator().manual_seed(0)
    rgb = torch.rand(4, 3, size, size, generator=g)
    depth = 0.5 + torch.rand(4, size, size, generator=g)  # any positive depth map
    warped, valid = stereo_warp(rgb, depth, c2w, c2w, fov, "pinhole")
    assert warped.shape == rgb.shape and valid.shape == (4, size, size)
    assert (interior(warped) - interior(rgb)).abs().max() < 1e-4
    assert interior(valid).all()
    grid, _ = warp_grid(depth, c2w, c2w, fov, "pinhole")
    coords = torch.linspace(-1, 1, size)
    gy, gx = torch.meshgrid(coords, coords, indexing="ij")
    assert torch.allclose(grid, torch.stack([gx, gy], -1).expand(4, -1, -1, -1), atol=1e-5)


def test_unproject_depth():
    depth = torch.rand(2, 5, 5) + 0.5
    pts = unproject_depth(depth, 12.0)
    assert pts.shape == (2, 25, 3)
    assert torch.allclose(pts.norm(dim=-1), depth.reshape(2, 25), atol=1e-6)
    assert (pts[..., 2] < 0).all()


# ------------------------------------------------------------------ geometry
def texture(x, y):
    return torch.stack([0.5 + 0.25 * torch.sin(40 * x) + 0.2 * torch.cos(30 * y),
                        0.5 + 0.4 * torch.sin(25 * x + 35 * y),
                        0.5 + 0.3 * torch.cos(45 * x) * torch.cos(20 * y)], dim=1)


def render_plane(c2w, size, fov, plane_z=0.0):
    """Analytic render of the textured plane z = plane_z: rgb (n, 3, S, S), depth (n, S, S), hits."""
    ray = RaySampling(size, fov, 0.5, 1.5, 2)
    _, dirs, _ = rays_for_cameras(c2w, ray)
    dirs = dirs.double()  # (n, S*S, 3); the intersection itself in float64
    origin = c2w[:, None, :3, 3].double()
    t = (plane_z - origin[..., 2]) / dirs[..., 2]  # (n, S*S)
    hit = origin + t[..., None] * dirs
    n = c2w.shape[0]
    rgb = texture(hit[..., 0], hit[..., 1]).reshape(n, 3, size, size)
    return rgb.float(), t.reshape(n, size, size).float(), hit.float()


@pytest.mark.parametrize("plane_z", [0.0, -0.2])
def test_warp_geometry_textured_plane(plane_z):
    size, fov = 64, 12.0
    cam1, cam2 = cams([HALF_PI], [HALF_PI]), cams([HALF_PI + 0.1], [HALF_PI])
    rgb1, depth1, _ = render_plane(cam1, size, fov, plane_z)
    rgb2, _, _ = render_plane(cam2, size, fov, plane_z)
    warped, valid = stereo_warp(rgb2, depth1, cam1, cam2, fov, "pinhole")
    mask = valid.clone()
    mask[:, :2], mask[:, -2:], mask[:, :, :2], mask[:, :, -2:] = False, False, False, False
    assert mask.float().mean() > 0.5
    err = (warped - rgb1).abs().mean(1)[mask]
    assert err.mean() < 0.002 and err.max() < 0.01
    # a wrong depth map breaks it
    bad, _ = stereo_warp(rgb2, depth1 * 1.05, cam1, cam2, fov, "pinhole")
    assert (bad - rgb1).abs().mean(1)[mask].mean() > 0.02
    if plane_z == 0.0:
        return  # cameras turning about the origin barely move a plane through it: no wrong-camera check
    assert (~valid).any()  # the parallax pushes part of view 1 out of view 2
    # a wrong auxiliary camera gives a much larger error
    for wrong in (cams([HALF_PI + 0.11], [HALF_PI]), cams([HALF_PI + 0.1], [HALF_PI + 0.02])):
        bad, bad_valid = stereo_warp(rgb2, depth1, cam1, wrong, fov, "pinhole")
        bad_err = (bad - rgb1).abs().mean(1)[bad_valid & mask]
        assert bad_err.mean() > 20 * err.mean() and bad_err.mean() > 0.01


def test_warp_geometry_both_directions_and_pitch():
    size, fov = 48, 12.0
    cam1, cam2 = cams([HALF_PI - 0.05], [HALF_PI + 0.04]), cams([HALF_PI + 0.03], [HALF_PI - 0.05])
    rgb1, depth1, _ = render_plane(cam1, size, fov)
    rgb2, depth2, _ = render_plane(cam2, size, fov)
    for (ra, da, ca), (rb, cb) in [((rgb1, depth1, cam1), (rgb2, cam2)), ((rgb2, depth2, cam2), (rgb1, cam1))]:
        warped, valid = stereo_warp(rb, da, ca, cb, fov, "pinhole")
        mask = interior(valid, 2)
        assert mask.float().mean() > 0.2
        err = (interior(warped, 2) - interior(ra, 2)).abs().mean(1)[mask]
        assert err.mean() < 0.01


def test_valid_mask_excludes_points_outside_aux_image():
    size, fov = 32, 12.0
    cam1, cam2 = cams([HALF_PI], [HALF_PI]), cams([HALF_PI + 0.2], [HALF_PI])
    rgb2, _, _ = render_plane(cam2, size, fov, -0.3)
    _, depth1, hit1 = render_plane(cam1, size, fov, -0.3)
    warped, valid = stereo_warp(rgb2, depth1, cam1, cam2, fov, "pinhole")
    # independent check: project the analytic hit points into camera 2 by hand
    rot, origin = cam2[0, :3, :3], cam2[0, :3, 3]
    local = (hit1[0] - origin) @ rot  # world -> camera 2 (R^T (p - o))
    f = 1 / math.tan(math.radians(fov) / 2)
    gx, gy = -f * local[:, 0] / local[:, 2], f * local[:, 1] / local[:, 2]
    inside = ((gx.abs() <= 1) & (gy.abs() <= 1)).reshape(size, size)
    clear = ((gx.abs() - 1).abs() > 1e-3).reshape(size, size)  # away from the image border
    assert torch.equal(valid[0][clear], inside[clear])
    assert 0.1 < (~valid).float().mean() < 0.9
    # pixels landing more than one pixel outside the aux image sample zero padding
    far_out = ((gx.abs() > 1 + 2.5 / (size - 1)) | (gy.abs() > 1 + 2.5 / (size - 1))).reshape(size, size)
    assert far_out.any()
    assert (warped[0][:, far_out] == 0).all()


def test_valid_mask_excludes_points_behind_camera():
    fov = 12.0
    cam1 = cams([HALF_PI], [HALF_PI])
    cam2 = cams([-HALF_PI], [HALF_PI])  # the opposite camera, at (0, 0, -1)
    depth = torch.full((1, 8, 8), 3.0)  # points at z = -2: behind camera 2
    grid, valid = warp_grid(depth, cam1, cam2, fov, "pinhole")
    assert not valid.any()
    depth = torch.full((1, 8, 8), 1.0)  # at the origin plane: in front of camera 2
    _, valid = warp_grid(depth, cam1, cam2, fov, "pinhole")
    assert valid[0, 3:5, 3:5].all()


def test_grid_matches_projection_of_unprojected_points():
    fov = 20.0
    cam1, cam2 = cams([1.2, 1.9], [1.4, 1.7]), cams([1.3, 1.8], [1.5, 1.6])
    depth = 0.8 + 0.4 * torch.rand(2, 6, 6, generator=torch.Generator().manual_seed(0))
    grid, _ = warp_grid(depth, cam1, cam2, fov, "pinhole")
    world = to_world(cam1, unproject_depth(depth, fov))
    expected = focal_from_fov(fov) * perspective_divide(world, cam2)[0]  # the pinhole projection
    assert torch.allclose(grid, expected.reshape(2, 6, 6, 2), atol=1e-6)


@pytest.mark.parametrize("fov", [12.0, 30.0])
def test_published_ray_norm_projection(fov):
    """The published warp scales (-X/Z, Y/Z) by ||(x, y, -f)|| of the primary pixel instead of f: equal
    at the image centre, larger towards the corners; at 64 px and fov 12 at most 0.5 px off."""
    size = 64
    cam1, cam2 = cams([1.4], [1.5]), cams([1.7], [1.6])
    depth = torch.full((1, size, size), 1.0, dtype=torch.float64)
    cam1, cam2 = cam1.double(), cam2.double()
    pinhole, _ = warp_grid(depth, cam1, cam2, fov, "pinhole")
    published, _ = warp_grid(depth, cam1, cam2, fov, "ray_norm")
    f = 1 / math.tan(math.radians(fov) / 2)
    coords = torch.linspace(-1, 1, size, dtype=torch.float64)
    norm = torch.sqrt(coords[:, None] ** 2 + coords[None, :] ** 2 + f * f)  # (S, S), symmetric in x and y
    torch.testing.assert_close(published, pinhole * (norm / f)[None, :, :, None], rtol=1e-12, atol=1e-12)
    shift_px = ((published - pinhole).norm(dim=-1) * (size - 1) / 2).max().item()  # grid units -> pixels
    if fov == 12.0:
        assert 0.05 < shift_px <= 0.5
    with pytest.raises(ValueError, match="warp projection"):
        warp_grid(depth, cam1, cam2, fov, "focal")
    with pytest.raises(TypeError, match="projection"):  # no default: every caller says which it warps with
        stereo_warp(depth[:, None], depth, cam1, cam2, fov)


# ------------------------------------------------------------------- mixup
def test_stereo_mixup_zero_ratio():
    g = torch.Generator().manual_seed(0)
    prim, aux = torch.randn(4, 8, 5, 5, generator=g), torch.randn(4, 8, 5, 5, generator=g)
    assert torch.equal(stereo_mixup(prim, aux, torch.zeros(4)), prim)


def test_stereo_mixup_ratio_range():
    """The generator draws r = u * max_mixup_ratio, u ~ U[0, 1) per sample (ForwardDraws.mixup)."""
    from generators.generators import ImplicitGenerator3d, RenderOptions
    from generators.cameras import PoseDistribution, RaySampling
    from generators.volume_rendering import IntegrationOptions

    n = 4000
    options = RenderOptions(PoseDistribution(), RaySampling(2, 12.0, 0.88, 1.12, 2), IntegrationOptions(), 2)
    draws = ImplicitGenerator3d.sample_draws(n, options, generator=torch.Generator().manual_seed(0))
    prim, aux = torch.zeros(n, 2, 3, 3), torch.ones(n, 2, 3, 3)
    mixed = stereo_mixup(prim, aux, draws.mixup * 0.3)
    ratio = mixed[:, 0, 0, 0]
    # one ratio per sample, shared by all channels and pixels
    assert torch.equal(mixed, ratio[:, None, None, None].expand_as(mixed))
    assert ratio.min() >= 0 and ratio.max() <= 0.3
    assert ratio.min() < 0.01 and ratio.max() > 0.29
    assert abs(ratio.mean().item() - 0.15) < 0.01
    # it's a convex combination for arbitrary inputs
    g = torch.Generator().manual_seed(1)
    p, a = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    r = torch.rand(3, 1, 1, 1, generator=torch.Generator().manual_seed(2)) * 0.3
    m = stereo_mixup(p, a, r.flatten())
    assert torch.allclose(m, (1 - r) * p + r * a, atol=1e-6)
