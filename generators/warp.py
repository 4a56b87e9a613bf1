"""Stereo warp and stereo mixup: the MVCGAN core (docs/METHOD.md §4 steps 4-5).

`stereo_warp` resamples any per-pixel map of the auxiliary view (features, RGB)
into the primary view, using the primary view's rendered depth and both cameras.
`WARP_PROJECTIONS` names the two ways of turning (-X/Z, Y/Z) into grid coordinates.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from generators.cameras import camera_ray_directions, focal_from_fov, perspective_divide, to_world
from generators.precision import full_precision

# "ray_norm": the published code scales (-X/Z, Y/Z) by the norm of the primary pixel's
# unnormalised camera-space ray direction (x, y, -f), which is f at the image centre and up to
# sqrt(2 + f^2) in the corners (<= 0.5 px off at 64 px, fov 12). "pinhole": by f, the exact
# projection of the camera the rays were cast with (a correction, docs/METHOD.md §4).
WARP_PROJECTIONS = ("ray_norm", "pinhole")


def unproject_depth(depth: torch.Tensor, fov: float) -> torch.Tensor:
    """Camera-space points (n, S*S, 3) of every pixel: unit ray direction times depth."""
    n, size = depth.shape[0], depth.shape[-1]
    dirs_cam = camera_ray_directions(size, fov, device=depth.device).to(depth.dtype)  # (S*S, 3)
    return dirs_cam[None] * depth.reshape(n, -1, 1)


def projection_scale(size: int, fov: float, projection: str, device=None, dtype=None):
    """What multiplies (-X/Z, Y/Z) of each primary pixel: f, or the published per-pixel
    ray norm ||(x, y, -f)|| as a (S*S, 1) column (row-major from the top-left pixel)."""
    if projection == "pinhole":
        return focal_from_fov(fov)
    if projection == "ray_norm":
        coords = torch.linspace(-1, 1, size, device=device, dtype=dtype)
        y, x = torch.meshgrid(-coords, coords, indexing="ij")  # (S, S) each
        return torch.sqrt(x * x + y * y + 1 / math.tan(math.radians(fov) / 2) ** 2).reshape(-1, 1)
    raise ValueError(f"warp projection must be one of {WARP_PROJECTIONS}, got {projection!r}")


def warp_grid(primary_depth: torch.Tensor, primary_cam2world: torch.Tensor,
              aux_cam2world: torch.Tensor, fov: float, projection: str):
    """Where each primary pixel lands in the auxiliary image.

    primary_depth (n, S, S) is the distance along each primary ray. Returns the
    grid_sample grid (n, S, S, 2) and a validity mask (n, S, S): in front of the
    auxiliary camera and inside its image. `projection`: see WARP_PROJECTIONS.
    """
    n, size = primary_depth.shape[0], primary_depth.shape[-1]
    points_cam = unproject_depth(primary_depth, fov)             # (n, S*S, 3)
    points_world = to_world(primary_cam2world, points_cam)       # (n, S*S, 3)
    divided, z = perspective_divide(points_world, aux_cam2world)  # (n, S*S, 2), (n, S*S)
    scale = projection_scale(size, fov, projection, primary_depth.device, primary_depth.dtype)
    grid = (divided * scale).reshape(n, size, size, 2)
    inside = (grid.abs() <= 1 + 1e-6).all(dim=-1) & (z.reshape(n, size, size) < 0)
    return grid, inside


def stereo_warp(aux_maps: torch.Tensor, primary_depth: torch.Tensor, primary_cam2world: torch.Tensor,
                aux_cam2world: torch.Tensor, fov: float, projection: str):
    """Warp auxiliary maps (n, C, S, S) into the primary view; returns (warped, valid mask).
    `projection` (WARP_PROJECTIONS) has no default: training passes the curriculum's
    `warp_projection`, a measurement says which it measures."""
    # Geometry in at least fp32 even under autocast: fp16 projections are off by pixels.
    with torch.autocast(primary_depth.device.type, enabled=False):
        grid, valid = warp_grid(full_precision(primary_depth), full_precision(primary_cam2world),
                                full_precision(aux_cam2world), fov, projection)
    warped = F.grid_sample(aux_maps, grid.to(aux_maps.dtype), mode="bilinear",
                           padding_mode="zeros", align_corners=True)
    return warped, valid


def stereo_mixup(primary_features: torch.Tensor, warped_aux_features: torch.Tensor,
                 ratio: torch.Tensor) -> torch.Tensor:
    """(1 - r) * primary + r * warped, with r (n,) one ratio per sample."""
    ratio = ratio.to(primary_features.dtype).reshape(-1, 1, 1, 1)  # (n, 1, 1, 1)
    return (1 - ratio) * primary_features + ratio * warped_aux_features
