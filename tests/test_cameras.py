"""Tests for cameras, poses and rays (docs/METHOD.md §1)."""
import math
from typing import NamedTuple, Optional

import pytest
import torch
import torch.nn.functional as F

from generators.cameras import (PITCH_EPS, PoseDistribution, RaySampling, cam2world_from_poses,
                                camera_origins, camera_ray_directions, focal_from_fov, jitter_draws,
                                project_to_camera, rays_for_cameras, sample_depths, sample_poses,
                                to_world)

HALF_PI = math.pi / 2


# The cameras composed the way the generator uses them; the tests' references.
class Rays(NamedTuple):
    """A batch of sampled rays."""

    points: torch.Tensor        # (n, S*S, N, 3) world-space sample points
    directions: torch.Tensor    # (n, S*S, 3) world-space unit ray directions
    depths: torch.Tensor        # (n, S*S, N) distance t along the ray
    cam2world: torch.Tensor     # (n, 4, 4)
    yaw: torch.Tensor           # (n,)
    pitch: torch.Tensor         # (n,)


def sample_rays(n: int, pose: PoseDistribution, ray: RaySampling, jitter: bool, device="cpu",
                generator: Optional[torch.Generator] = None) -> Rays:
    """Draw n poses from `pose` and cast S*S rays with N depth samples from each (jittered if asked)."""
    yaw, pitch = sample_poses(n, pose, device=device, generator=generator)
    cam2world = cam2world_from_poses(yaw, pitch)
    draws = jitter_draws(n, ray.img_size ** 2, ray.num_steps, device, generator) if jitter else None
    points, directions, depths = rays_for_cameras(cam2world, ray, draws)
    return Rays(points, directions, depths, cam2world, yaw, pitch)


def random_poses(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    yaw = torch.rand(n, generator=g) * 2 * math.pi
    pitch = torch.rand(n, generator=g) * (math.pi - 0.2) + 0.1
    return yaw, pitch


# ------------------------------------------------------------------ cam2world
def test_frontal_pose():
    c2w = cam2world_from_poses(torch.tensor([HALF_PI]), torch.tensor([HALF_PI]))[0]
    assert torch.allclose(c2w[:3, 3], torch.tensor([0.0, 0.0, 1.0]), atol=1e-6)
    assert torch.allclose(c2w[3], torch.tensor([0.0, 0.0, 0.0, 1.0]))
    rot = c2w[:3, :3]
    # camera -z -> world -z, +x -> +x, +y -> +y: the rotation is the identity
    assert torch.allclose(rot @ torch.tensor([0.0, 0.0, -1.0]), torch.tensor([0.0, 0.0, -1.0]), atol=1e-6)
    assert torch.allclose(rot @ torch.tensor([1.0, 0.0, 0.0]), torch.tensor([1.0, 0.0, 0.0]), atol=1e-6)
    assert torch.allclose(rot @ torch.tensor([0.0, 1.0, 0.0]), torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)


def test_origin_formula():
    yaw, pitch = random_poses()
    expected = torch.stack([pitch.sin() * yaw.cos(), pitch.cos(), pitch.sin() * yaw.sin()], -1)
    assert torch.allclose(camera_origins(yaw, pitch), expected, atol=1e-6)
    c2w = cam2world_from_poses(yaw, pitch)
    assert torch.allclose(c2w[:, :3, 3], expected, atol=1e-6)


def test_rotation_orthonormal_det_one():
    yaw, pitch = random_poses(256)
    rot = cam2world_from_poses(yaw, pitch)[:, :3, :3]
    eye = torch.eye(3).expand_as(rot)
    assert torch.allclose(rot.transpose(1, 2) @ rot, eye, atol=1e-5)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(256), atol=1e-5)


def test_camera_at_unit_distance_looks_at_origin():
    yaw, pitch = random_poses(256)
    c2w = cam2world_from_poses(yaw, pitch)
    origin = c2w[:, :3, 3]
    assert torch.allclose(origin.norm(dim=-1), torch.ones(256), atol=1e-6)
    forward = to_world(c2w, torch.tensor([0.0, 0.0, -1.0]).expand(256, 1, 3), is_direction=True)[:, 0]
    assert torch.allclose(forward, -origin, atol=1e-5)  # points from the camera towards 0
    # camera +x stays horizontal (world up is +y, no roll)
    right = to_world(c2w, torch.tensor([1.0, 0.0, 0.0]).expand(256, 1, 3), is_direction=True)[:, 0]
    assert right[:, 1].abs().max() < 1e-6
    up = to_world(c2w, torch.tensor([0.0, 1.0, 0.0]).expand(256, 1, 3), is_direction=True)[:, 0]
    assert (up[:, 1] > 0).all()


def test_to_world_matches_matrix():
    yaw, pitch = random_poses(4)
    c2w = cam2world_from_poses(yaw, pitch)
    pts = torch.randn(4, 10, 3)
    homog = torch.cat([pts, torch.ones(4, 10, 1)], -1)
    expected = (homog @ c2w.transpose(1, 2))[..., :3]
    assert torch.allclose(to_world(c2w, pts), expected, atol=1e-6)
    assert torch.allclose(to_world(c2w, pts, is_direction=True), pts @ c2w[:, :3, :3].transpose(1, 2), atol=1e-6)


# ------------------------------------------------------------- pose sampling
N = 200_000


def draw(mode, h_mean=1.2, v_mean=1.4, h_std=0.3, v_std=0.155, n=N, seed=0):
    g = torch.Generator().manual_seed(seed)
    return sample_poses(n, PoseDistribution(h_mean, v_mean, h_std, v_std, mode), generator=g)


@pytest.mark.parametrize("mode", ["gaussian", "normal"])
def test_gaussian_poses(mode):
    yaw, pitch = draw(mode)
    assert abs(yaw.mean().item() - 1.2) < 0.005 and abs(yaw.std().item() - 0.3) < 0.005
    assert abs(pitch.mean().item() - 1.4) < 0.003 and abs(pitch.std().item() - 0.155) < 0.003
    assert yaw.shape == pitch.shape == (N,)


def test_uniform_poses():
    yaw, pitch = draw("uniform")
    assert yaw.min() >= 1.2 - 0.3 - 1e-6 and yaw.max() <= 1.2 + 0.3 + 1e-6
    assert yaw.min() < 1.2 - 0.3 + 1e-3 and yaw.max() > 1.2 + 0.3 - 1e-3
    assert pitch.min() >= 1.4 - 0.155 - 1e-6 and pitch.max() <= 1.4 + 0.155 + 1e-6
    assert abs(yaw.std().item() - 0.3 / math.sqrt(3)) < 0.003
    assert abs(pitch.mean().item() - 1.4) < 0.003


def test_truncated_gaussian_poses():
    yaw, pitch = draw("truncated_gaussian")
    assert (yaw - 1.2).abs().max() <= 2 * 0.3 + 1e-6
    assert (pitch - 1.4).abs().max() <= 2 * 0.155 + 1e-6
    # it's a normal inside the bounds: std of N(0,1) truncated at +-2 is 0.8796
    assert abs(yaw.std().item() - 0.8796 * 0.3) < 0.005
    assert abs(yaw.mean().item() - 1.2) < 0.005
    assert (yaw - 1.2).abs().max() > 2 * 0.3 - 0.01  # reaches near the bounds


def test_spherical_uniform_poses():
    yaw, pitch = draw("spherical_uniform", h_mean=HALF_PI, v_mean=HALF_PI, h_std=0.3, v_std=0.3)
    assert yaw.min() >= HALF_PI - 0.3 - 1e-6 and yaw.max() <= HALF_PI + 0.3 + 1e-6
    v_lo, v_hi = (HALF_PI - 0.3) / math.pi, (HALF_PI + 0.3) / math.pi
    lo, hi = math.acos(1 - 2 * v_lo), math.acos(1 - 2 * v_hi)
    assert pitch.min() >= lo - 1e-5 and pitch.max() <= hi + 1e-5
    assert pitch.min() < lo + 1e-3 and pitch.max() > hi - 1e-3
    # 1 - 2v = cos(pitch) is uniform on [1 - 2 v_hi, 1 - 2 v_lo]
    cos = pitch.double().cos()
    a, b = 1 - 2 * v_hi, 1 - 2 * v_lo
    assert abs(cos.mean().item() - (a + b) / 2) < 0.002
    assert abs(cos.std().item() - (b - a) / math.sqrt(12)) < 0.002


def test_spherical_uniform_clamps_v():
    _, pitch = draw("spherical_uniform", v_mean=0.0, v_std=1.0, n=1000)
    assert pitch.min() >= math.acos(1 - 2e-5) - 1e-4
    assert torch.isfinite(pitch).all()


@pytest.mark.parametrize("mode", [None, "fixed", "something_else"])
def test_fixed_poses(mode):
    yaw, pitch = draw(mode, n=10)
    assert torch.equal(yaw, torch.full((10,), 1.2)) and torch.equal(pitch, torch.full((10,), 1.4))


@pytest.mark.parametrize("mode", ["gaussian", "uniform", "truncated_gaussian", "spherical_uniform"])
def test_pitch_clamped(mode):
    _, pitch = draw(mode, v_mean=HALF_PI, v_std=100.0, n=20_000)
    assert pitch.min() >= torch.tensor(PITCH_EPS) and pitch.max() <= torch.tensor(math.pi - PITCH_EPS)
    if mode != "spherical_uniform":
        assert (pitch == pitch.min()).sum() > 10 and (pitch == pitch.max()).sum() > 10


def test_pose_distribution_from_metadata():
    meta = dict(h_mean=1.0, v_mean=2.0, h_stddev=0.3, v_stddev=0.1, sample_dist="gaussian",
                h_stddev_eval=0.5, v_stddev_eval=None, sample_dist_eval="uniform")  # None: the training value
    assert PoseDistribution.from_metadata(meta) == PoseDistribution(1.0, 2.0, 0.3, 0.1, "gaussian")
    assert PoseDistribution.from_metadata(meta, evaluation=True) == PoseDistribution(1.0, 2.0, 0.5, 0.1, "uniform")
    assert PoseDistribution(1.0, 2.0, 0.3, 0.1, "gaussian").fixed(0.5) == PoseDistribution(1.5, 2.0, 0.0, 0.0, None)


# ---------------------------------------------------------------------- rays
@pytest.mark.parametrize("size", [7, 8])
def test_ray_grid_symmetry_and_norm(size):
    d = camera_ray_directions(size, 12.0).reshape(size, size, 3)
    assert torch.allclose(d.norm(dim=-1), torch.ones(size, size), atol=1e-6)
    mirror_x = d.flip(1) * torch.tensor([-1.0, 1.0, 1.0])
    mirror_y = d.flip(0) * torch.tensor([1.0, -1.0, 1.0])
    assert torch.allclose(d, mirror_x, atol=1e-7) and torch.allclose(d, mirror_y, atol=1e-7)
    # row 0 is the top (y > 0), column 0 is the left (x < 0)
    assert (d[0, :, 1] > 0).all() and (d[-1, :, 1] < 0).all()
    assert (d[:, 0, 0] < 0).all() and (d[:, -1, 0] > 0).all()
    assert (d[..., 2] < 0).all()


@pytest.mark.parametrize("fov", [12.0, 30.0, 90.0])
def test_centre_and_corner_rays(fov):
    size = 9
    d = camera_ray_directions(size, fov).reshape(size, size, 3)
    assert torch.allclose(d[4, 4], torch.tensor([0.0, 0.0, -1.0]), atol=1e-7)
    expected_angle = math.atan(math.sqrt(2) * math.tan(math.radians(fov) / 2))
    for corner in (d[0, 0], d[0, -1], d[-1, 0], d[-1, -1]):
        angle = math.acos(min(1.0, -corner[2].item()))
        assert abs(angle - expected_angle) < 1e-5
    # the edge-midpoint ray makes fov/2 with the axis
    assert abs(math.acos(-d[4, -1, 2].item()) - math.radians(fov) / 2) < 1e-5
    assert abs(focal_from_fov(fov) - 1 / math.tan(math.radians(fov) / 2)) < 1e-12


def test_sample_depths_no_jitter():
    ray = RaySampling(4, 12.0, 0.88, 1.12, 7)
    t = sample_depths(3, 5, ray)
    assert t.shape == (3, 5, 7)
    assert torch.allclose(t, torch.linspace(0.88, 1.12, 7).expand(3, 5, 7), atol=0)


def test_sample_depths_jitter():
    ray = RaySampling(4, 12.0, 0.88, 1.12, 7)
    spacing = 0.24 / 6
    g = torch.Generator().manual_seed(0)
    t = sample_depths(3, 50, ray, jitter=jitter_draws(3, 50, 7, generator=g))
    offsets = t - torch.linspace(0.88, 1.12, 7)
    assert offsets.abs().max() <= 0.5 * spacing + 1e-6
    assert offsets.abs().max() > 0.4 * spacing  # covers the range
    # independent per ray and per sample
    assert offsets.std(dim=1).min() > 0.1 * spacing
    assert offsets.std(dim=2).min() > 0.05 * spacing
    assert offsets.std(dim=0).min() > 0
    # uniform: mean ~ 0, std ~ spacing / sqrt(12)
    assert abs(offsets.mean().item()) < 0.05 * spacing
    assert abs(offsets.std().item() - spacing / math.sqrt(12)) < 0.05 * spacing


def test_rays_for_cameras_points():
    yaw, pitch = random_poses(3)
    c2w = cam2world_from_poses(yaw, pitch)
    ray = RaySampling(5, 20.0, 0.8, 1.2, 6)
    g = torch.Generator().manual_seed(1)
    points, dirs, depths = rays_for_cameras(c2w, ray, jitter_draws(3, 25, 6, generator=g))
    assert points.shape == (3, 25, 6, 3) and dirs.shape == (3, 25, 3) and depths.shape == (3, 25, 6)
    assert torch.allclose(dirs.norm(dim=-1), torch.ones(3, 25), atol=1e-6)
    expected = c2w[:, None, None, :3, 3] + depths[..., None] * dirs[:, :, None]
    assert torch.allclose(points, expected, atol=1e-6)
    # world directions are the camera grid rotated
    cam_dirs = camera_ray_directions(5, 20.0)
    assert torch.allclose(dirs, to_world(c2w, cam_dirs.expand(3, 25, 3), is_direction=True), atol=1e-6)
    # distance from the camera equals t
    dist = (points - c2w[:, None, None, :3, 3]).norm(dim=-1)
    assert torch.allclose(dist, depths, atol=1e-5)


def test_sample_rays_consistent():
    pose = PoseDistribution(HALF_PI, HALF_PI, 0.3, 0.15, "gaussian")
    ray = RaySampling(4, 12.0, 0.88, 1.12, 5)
    rays = sample_rays(2, pose, ray, jitter=False, generator=torch.Generator().manual_seed(0))
    yaw, pitch = sample_poses(2, pose, generator=torch.Generator().manual_seed(0))
    assert torch.equal(rays.yaw, yaw) and torch.equal(rays.pitch, pitch)
    assert torch.allclose(rays.cam2world, cam2world_from_poses(yaw, pitch))
    assert rays.points.shape == (2, 16, 5, 3)


@pytest.mark.parametrize("fov", [12.0, 50.0])
def test_project_to_camera_recovers_pixel(fov):
    size = 6
    yaw, pitch = random_poses(3, seed=2)
    c2w = cam2world_from_poses(yaw, pitch)
    ray = RaySampling(size, fov, 0.5, 1.5, 3)
    points, _, _ = rays_for_cameras(c2w, ray, jitter_draws(3, size * size, 3, generator=torch.Generator().manual_seed(3)))
    grid, z = project_to_camera(points.reshape(3, -1, 3), c2w, fov)
    coords = torch.linspace(-1, 1, size)
    gy, gx = torch.meshgrid(coords, coords, indexing="ij")  # pixel (i, j) -> (x = coords[j], y = coords[i])
    expected = torch.stack([gx, gy], -1).reshape(size * size, 1, 2).expand(size * size, 3, 2).reshape(-1, 2)
    assert torch.allclose(grid, expected.expand(3, -1, 2), atol=1e-5)
    assert (z < 0).all()
    points, _, depths = rays_for_cameras(c2w, ray, jitter_draws(3, size * size, 3, generator=torch.Generator().manual_seed(3)))
    cam_z = camera_ray_directions(size, fov)[:, 2]  # (S*S,)
    assert torch.allclose(z, (depths * cam_z[None, :, None]).reshape(3, -1), atol=1e-5)
    # grid_sample at those coordinates returns the pixel itself (top-left is (-1, -1))
    image = torch.randn(3, 2, size, size)
    sampled = F.grid_sample(image, grid.reshape(3, size * size, 3, 2), align_corners=True)  # (3, 2, S*S, 3)
    assert torch.allclose(sampled, image.reshape(3, 2, size * size, 1).expand(-1, -1, -1, 3), atol=1e-4)


def test_project_top_left_is_minus_one():
    c2w = cam2world_from_poses(torch.tensor([HALF_PI]), torch.tensor([HALF_PI]))
    d = camera_ray_directions(5, 12.0)[0]  # top-left pixel
    point = to_world(c2w, (d * 1.0)[None, None])
    grid, _ = project_to_camera(point, c2w, 12.0)
    assert torch.allclose(grid[0, 0], torch.tensor([-1.0, -1.0]), atol=1e-5)
    # in world terms: top-left is up (+y) and left (-x) for the frontal camera
    assert point[0, 0, 0] < 0 and point[0, 0, 1] > 0
