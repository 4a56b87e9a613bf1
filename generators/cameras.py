"""Cameras and rays: the one "point sampler" of the project (docs/METHOD.md §1).

Everything that needs a camera (training, inference, style mixing, shape queries,
the synthetic dataset, the stereo warp, evaluation) goes through these pure
functions. Cameras are explicit 4x4 camera-to-world matrices; nothing is hidden
state. Entry points: `sample_poses`, `cam2world_from_poses`, `camera_ray_directions`,
`sample_depths`, `rays_for_cameras`, `perspective_divide`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional

import torch
import torch.nn.functional as F

PITCH_EPS = 1e-5


@dataclass(frozen=True)
class PoseDistribution:
    """Where cameras are drawn from: means and spreads of yaw (h) and pitch (v)."""

    h_mean: float = math.pi / 2
    v_mean: float = math.pi / 2
    h_stddev: float = 0.0
    v_stddev: float = 0.0
    sample_dist: Optional[str] = None

    @classmethod
    def from_metadata(cls, metadata: Mapping, evaluation: bool = False) -> "PoseDistribution":
        """Read a curriculum's pose keys; at `evaluation` the h_stddev_eval, v_stddev_eval and
        sample_dist_eval keys replace theirs where they are not None (docs/METHOD.md §10)."""
        def pick(key):
            replacement = metadata[f"{key}_eval"] if evaluation else None
            return metadata[key] if replacement is None else replacement

        return cls(
            h_mean=float(metadata["h_mean"]),
            v_mean=float(metadata["v_mean"]),
            h_stddev=float(pick("h_stddev")),
            v_stddev=float(pick("v_stddev")),
            sample_dist=pick("sample_dist"),
        )

    def fixed(self, yaw_offset: float = 0.0) -> "PoseDistribution":
        """The mean pose (spreads 0), optionally turned by `yaw_offset`."""
        return PoseDistribution(self.h_mean + yaw_offset, self.v_mean, 0.0, 0.0, None)


@dataclass(frozen=True)
class RaySampling:
    """How rays are cast: image size S, field of view (degrees) and the depth range."""

    img_size: int
    fov: float
    ray_start: float
    ray_end: float
    num_steps: int

    @classmethod
    def from_metadata(cls, metadata: Mapping, img_size: Optional[int] = None,
                      num_steps: Optional[int] = None) -> "RaySampling":
        return cls(
            img_size=int(img_size if img_size is not None else metadata["img_size"]),
            fov=float(metadata["fov"]),
            ray_start=float(metadata["ray_start"]),
            ray_end=float(metadata["ray_end"]),
            num_steps=int(num_steps if num_steps is not None else metadata["num_steps"]),
        )


def _truncated_normal(shape, mean: float, std: float, device, generator) -> torch.Tensor:
    """Normal draws restricted to mean +- 2 std, by resampling the rejects."""
    out = torch.randn(shape, device=device, generator=generator)
    bad = out.abs() > 2
    while bad.any():
        out[bad] = torch.randn(int(bad.sum()), device=device, generator=generator)
        bad = out.abs() > 2
    return out * std + mean


def sample_poses(n: int, dist: PoseDistribution, device="cpu",
                 generator: Optional[torch.Generator] = None):
    """Draw n camera poses; returns (yaw, pitch), each (n,), pitch in [1e-5, pi-1e-5]."""
    mode = dist.sample_dist
    shape = (n,)
    if mode in ("gaussian", "normal"):
        yaw = torch.randn(shape, device=device, generator=generator) * dist.h_stddev + dist.h_mean
        pitch = torch.randn(shape, device=device, generator=generator) * dist.v_stddev + dist.v_mean
    elif mode == "uniform":
        yaw = (torch.rand(shape, device=device, generator=generator) * 2 - 1) * dist.h_stddev + dist.h_mean
        pitch = (torch.rand(shape, device=device, generator=generator) * 2 - 1) * dist.v_stddev + dist.v_mean
    elif mode == "truncated_gaussian":
        yaw = _truncated_normal(shape, dist.h_mean, dist.h_stddev, device, generator)
        pitch = _truncated_normal(shape, dist.v_mean, dist.v_stddev, device, generator)
    elif mode == "spherical_uniform":
        yaw = (torch.rand(shape, device=device, generator=generator) * 2 - 1) * dist.h_stddev + dist.h_mean
        v_lo = (dist.v_mean - dist.v_stddev) / math.pi
        v_hi = (dist.v_mean + dist.v_stddev) / math.pi
        v = torch.rand(shape, device=device, generator=generator) * (v_hi - v_lo) + v_lo
        v = v.clamp(1e-5, 1 - 1e-5)
        pitch = torch.arccos(1 - 2 * v)
    else:  # None, "fixed", anything else: the means
        yaw = torch.full(shape, float(dist.h_mean), device=device)
        pitch = torch.full(shape, float(dist.v_mean), device=device)
    pitch = pitch.clamp(PITCH_EPS, math.pi - PITCH_EPS)
    return yaw, pitch


def camera_origins(yaw: torch.Tensor, pitch: torch.Tensor) -> torch.Tensor:
    """Camera centres on the unit sphere, (n, 3): (sin p cos y, cos p, sin p sin y)."""
    return torch.stack([
        torch.sin(pitch) * torch.cos(yaw),
        torch.cos(pitch),
        torch.sin(pitch) * torch.sin(yaw),
    ], dim=-1)


def look_at_origin(origin: torch.Tensor) -> torch.Tensor:
    """Camera-to-world matrices (n, 4, 4) for cameras at `origin` (n, 3) looking at 0."""
    forward = F.normalize(-origin, dim=-1)
    world_up = torch.zeros_like(forward)
    world_up[:, 1] = 1
    left = F.normalize(torch.cross(world_up, forward, dim=-1), dim=-1)
    up = F.normalize(torch.cross(forward, left, dim=-1), dim=-1)
    cam2world = torch.eye(4, device=origin.device, dtype=origin.dtype).repeat(origin.shape[0], 1, 1)
    cam2world[:, :3, 0] = -left
    cam2world[:, :3, 1] = up
    cam2world[:, :3, 2] = -forward
    cam2world[:, :3, 3] = origin
    return cam2world


def cam2world_from_poses(yaw: torch.Tensor, pitch: torch.Tensor) -> torch.Tensor:
    """(n, 4, 4) camera-to-world matrices for poses (yaw, pitch), each (n,)."""
    return look_at_origin(camera_origins(yaw, pitch))


def focal_from_fov(fov_degrees: float) -> float:
    """Focal length f = 1/tan(fov/2) in units where the image spans [-1, 1]."""
    return 1.0 / math.tan(math.radians(fov_degrees) / 2)


def directions_through(coords: torch.Tensor, fov: float) -> torch.Tensor:
    """Unit camera-space directions (P, P, 3) through image-plane positions coords (P,).

    coords are x positions left to right (and, negated, y positions top to bottom) in
    units where pixel centres of an S x S image sit at linspace(-1, 1, S); z = -f.
    """
    y, x = torch.meshgrid(-coords, coords, indexing="ij")  # (P, P) each
    z = torch.full_like(x, -focal_from_fov(fov))
    return F.normalize(torch.stack([x, y, z], dim=-1), dim=-1)


def camera_ray_directions(img_size: int, fov: float, device="cpu") -> torch.Tensor:
    """Unit ray directions in camera space, (S*S, 3), row-major from the top-left pixel.

    x runs -1..1 left to right, y runs +1..-1 top to bottom, z = -f.
    """
    return directions_through(torch.linspace(-1, 1, img_size, device=device), fov).reshape(-1, 3)


def jitter_draws(n: int, num_rays: int, num_steps: int, device="cpu",
                 generator: Optional[torch.Generator] = None, dtype=None) -> torch.Tensor:
    """U[0, 1) draws (n, num_rays, num_steps) for `sample_depths`: one per ray and sample."""
    return torch.rand((n, num_rays, num_steps), device=device, generator=generator, dtype=dtype)


def sample_depths(n: int, num_rays: int, ray: RaySampling, jitter: Optional[torch.Tensor] = None,
                  device="cpu", dtype=None) -> torch.Tensor:
    """Depth samples t, (n, num_rays, num_steps), evenly spaced in [ray_start, ray_end].

    `jitter` (U[0, 1) draws of that shape, `jitter_draws`) moves each sample by (u - 1/2)·Δt,
    Δt the spacing, as published (`perturb_points`).
    """
    t = torch.linspace(ray.ray_start, ray.ray_end, ray.num_steps, device=device, dtype=dtype)
    t = t.expand(n, num_rays, ray.num_steps)
    if jitter is not None and ray.num_steps > 1:
        spacing = (ray.ray_end - ray.ray_start) / (ray.num_steps - 1)
        t = t + (jitter.to(t.dtype) - 0.5) * spacing
    return t


def to_world(cam2world: torch.Tensor, points: torch.Tensor, is_direction: bool = False) -> torch.Tensor:
    """Apply (n, 4, 4) matrices to (n, ..., 3) points (or directions: no translation)."""
    rotation = cam2world[:, :3, :3]
    shape = points.shape
    flat = points.reshape(shape[0], -1, 3)  # (n, M, 3)
    out = flat @ rotation.transpose(1, 2)
    if not is_direction:
        out = out + cam2world[:, None, :3, 3]
    return out.reshape(shape)


def rays_for_cameras(cam2world: torch.Tensor, ray: RaySampling,
                     jitter: Optional[torch.Tensor] = None) -> tuple:
    """World-space sample points, directions and depths for given cameras.

    Returns points (n, S*S, N, 3), directions (n, S*S, 3), depths (n, S*S, N); `jitter`
    as in `sample_depths`. The camera-space direction grid is shared by all cameras (no
    per-batch copies).
    """
    n, device = cam2world.shape[0], cam2world.device
    dirs_cam = camera_ray_directions(ray.img_size, ray.fov, device=device).to(cam2world.dtype)  # (R, 3)
    depths = sample_depths(n, dirs_cam.shape[0], ray, jitter, device=device, dtype=cam2world.dtype)
    dirs_world = dirs_cam @ cam2world[:, :3, :3].transpose(1, 2)  # (n, R, 3)
    origins = cam2world[:, None, None, :3, 3]  # (n, 1, 1, 3)
    points = origins + depths[..., None] * dirs_world[:, :, None, :]  # (n, R, N, 3)
    return points, dirs_world, depths


def perspective_divide(points_world: torch.Tensor, cam2world: torch.Tensor):
    """(-X/Z, Y/Z) of world points (n, M, 3) in a camera's coordinates, (n, M, 2), and the
    camera-space z, (n, M) (negative in front of the camera)."""
    world2cam = torch.linalg.inv(cam2world)
    cam = to_world(world2cam, points_world)
    z = cam[..., 2]
    safe_z = torch.where(z.abs() < 1e-8, torch.full_like(z, -1e-8), z)
    return torch.stack([-cam[..., 0] / safe_z, cam[..., 1] / safe_z], dim=-1), z


def project_to_camera(points_world: torch.Tensor, cam2world: torch.Tensor, fov: float):
    """Pinhole projection of world points (n, M, 3) into a camera.

    Returns the grid_sample coordinates (n, M, 2) (align_corners=True, (-1, -1) the
    top-left pixel centre): f·(-X/Z, Y/Z), and the camera-space z (n, M) (negative in front).
    """
    divided, z = perspective_divide(points_world, cam2world)
    return focal_from_fov(fov) * divided, z
