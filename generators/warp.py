"""Stereo warp and stereo mixup: the MVCGAN core (docs/METHOD.md §4 steps 4-5).

`stereo_warp` resamples any per-pixel map of the auxiliary view (features, RGB)
into the primary view, using the primary view's rendered depth and both cameras.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from generators.cameras import camera_ray_directions, project_to_camera, to_world


def unproject_depth(depth: torch.Tensor, fov: float) -> torch.Tensor:
    """Camera-space points (n, S*S, 3) of every pixel: unit ray direction times depth."""
    n, size = depth.shape[0], depth.shape[-1]
    dirs_cam = camera_ray_directions(size, fov, device=depth.device).to(depth.dtype)  # (S*S, 3)
    return dirs_cam[None] * depth.reshape(n, -1, 1)


def warp_grid(primary_depth: torch.Tensor, primary_cam2world: torch.Tensor,
              aux_cam2world: torch.Tensor, fov: float):
    """Where each primary pixel lands in the auxiliary image.

    primary_depth (n, S, S) is the distance along each primary ray. Returns the
    grid_sample grid (n, S, S, 2) and a validity mask (n, S, S): in front of the
    auxiliary camera and inside its image.
    """
    n, size = primary_depth.shape[0], primary_depth.shape[-1]
    points_cam = unproject_depth(primary_depth, fov)             # (n, S*S, 3)
    points_world = to_world(primary_cam2world, points_cam)       # (n, S*S, 3)
    # The published code divides by the per-pixel ray norm here instead of the
    # focal length; we use the exact pinhole projection (docs/METHOD.md §4).
    grid, z = project_to_camera(points_world, aux_cam2world, fov)  # (n, S*S, 2), (n, S*S)
    grid = grid.reshape(n, size, size, 2)
    inside = (grid.abs() <= 1 + 1e-6).all(dim=-1) & (z.reshape(n, size, size) < 0)
    return grid, inside


def stereo_warp(aux_maps: torch.Tensor, primary_depth: torch.Tensor,
                primary_cam2world: torch.Tensor, aux_cam2world: torch.Tensor, fov: float):
    """Warp auxiliary maps (n, C, S, S) into the primary view; returns (warped, valid mask)."""
    # Geometry in fp32 even under autocast: fp16 projections are off by pixels.
    with torch.autocast(primary_depth.device.type, enabled=False):
        grid, valid = warp_grid(primary_depth.float(), primary_cam2world.float(), aux_cam2world.float(), fov)
    warped = F.grid_sample(aux_maps, grid.to(aux_maps.dtype), mode="bilinear",
                           padding_mode="zeros", align_corners=True)
    return warped, valid


def stereo_mixup(primary_features: torch.Tensor, warped_aux_features: torch.Tensor,
                 max_mixup_ratio: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(1 - r) * primary + r * warped, r ~ U(0, max_mixup_ratio) drawn per sample."""
    n = primary_features.shape[0]
    ratio = torch.rand(n, 1, 1, 1, device=primary_features.device, generator=generator) * max_mixup_ratio
    ratio = ratio.to(primary_features.dtype)
    return (1 - ratio) * primary_features + ratio * warped_aux_features
