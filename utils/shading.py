"""Geometry pictures from a rendered depth map: surface normals and a shaded grey surface.

The geometry turntable of `render_multiview_image.py --geometry` and the viewer's
"geometry" mode use these. A depth map of the NeRF (distance along each unit ray,
docs/METHOD.md §2) is unprojected to camera-space points P = t * d, the normal of each
pixel is the cross product of P's differences to its neighbours, and `shade` lights
them like the Synthetic data (from the upper left, a little in front). Pixels the NeRF
leaves transparent (opacity <= 0.5) are background. Entry points: `normals_from_depth`,
`shade`, `surface_depth`, `geometry_images`.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from generators.cameras import camera_ray_directions

LIGHT = (-0.5, 0.6, 0.62)     # camera space (x right, y up, z towards the viewer): upper left, in front
AMBIENT = 0.2                 # the unlit part of the grey, so faces turned away stay visible
SURFACE_GREY = 0.85           # albedo of the shaded surface
BACKGROUND = (255, 255, 255)  # transparent pixels


def _masked_difference(points: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Derivative of points (n, S, S, 3) along image axis `dim` (1: rows, 2: columns), from
    neighbours inside `mask` (n, S, S) only: central where both are, one-sided where one is,
    zero where none is (so the silhouette does not bend normals towards the background)."""
    size = points.shape[dim]
    index = torch.arange(size, device=points.device)
    after, before = (index + 1).clamp(max=size - 1), (index - 1).clamp(min=0)
    inside = [1, 1, 1]
    inside[dim] = size
    # a neighbour counts when it exists (not past the border) and is surface
    after_ok = mask & mask.index_select(dim, after) & (index < size - 1).reshape(inside)
    before_ok = mask & mask.index_select(dim, before) & (index > 0).reshape(inside)
    forward = points.index_select(dim, after) - points
    backward = points - points.index_select(dim, before)
    after_ok, before_ok = after_ok[..., None], before_ok[..., None]
    central = (forward + backward) / 2
    return torch.where(after_ok & before_ok, central,
                       torch.where(after_ok, forward, torch.where(before_ok, backward, torch.zeros_like(points))))


def normals_from_depth(depth: torch.Tensor, fov: float, mask: torch.Tensor = None) -> torch.Tensor:
    """Camera-space unit normals (n, S, S, 3) of a depth map (n, S, S) rendered with field of view
    `fov` (degrees): x right, y up, z towards the camera; every normal faces the camera.

    `mask` (n, S, S) bool says which pixels are surface (default: all); outside it the normal is 0.
    """
    size = depth.shape[-1]
    mask = torch.ones_like(depth, dtype=torch.bool) if mask is None else mask.bool()
    directions = camera_ray_directions(size, fov, device=depth.device).to(depth.dtype).reshape(size, size, 3)
    points = depth[..., None] * directions                               # (n, S, S, 3) camera space
    down = _masked_difference(points, mask, dim=1)                       # d P / d row (image y runs down)
    right = _masked_difference(points, mask, dim=2)                      # d P / d column
    normals = F.normalize(torch.cross(down, right, dim=-1), dim=-1)      # (-y) x (+x) = +z for a frontal plane
    facing = (normals * points).sum(-1, keepdim=True) > 0                # pointing away from the camera
    normals = torch.where(facing, -normals, normals)
    return normals * mask[..., None]


def shade(normals: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """Lambertian grey of camera-space normals (n, S, S, 3) lit from `LIGHT`, with `AMBIENT`;
    uint8 (n, S, S, 3), `BACKGROUND` where mask (n, S, S) is False."""
    light = F.normalize(torch.tensor(LIGHT, dtype=normals.dtype, device=normals.device), dim=0)
    lambert = (normals @ light).clamp(min=0)                              # (n, S, S)
    grey = SURFACE_GREY * (AMBIENT + (1 - AMBIENT) * lambert)
    image = (grey * 255).round().clamp(0, 255).to(torch.uint8)[..., None].expand(*grey.shape, 3)
    background = torch.tensor(BACKGROUND, dtype=torch.uint8, device=normals.device)
    return torch.where(mask[..., None].bool(), image, background).cpu().numpy()


def surface_depth(depth: torch.Tensor, opacity: torch.Tensor, far: Optional[float] = None) -> torch.Tensor:
    """The depth of what the opaque part of each ray hits: a rendered depth (n, S, S) is the mean over
    the whole ray, so where the ray is partly transparent (the silhouette) it is pulled towards the
    light that passed: to `far` with last_back (docs/METHOD.md §2: the leftover weight sits on the last
    sample, at ray_end), to 0 without (far None). Undone: (depth - (1 - opacity) far) / opacity."""
    leftover = (1 - opacity) * (far if far is not None else 0.0)
    return torch.where(opacity > 0, (depth - leftover) / opacity.clamp(min=1e-6), depth)


def geometry_images(depth: torch.Tensor, opacity: torch.Tensor, fov: float, far: Optional[float] = None) -> np.ndarray:
    """The shaded surface of rendered views: depth and opacity (n, S, S) -> uint8 (n, S, S, 3).
    A pixel is surface where the NeRF is more than half opaque (the silhouette of docs/METHOD.md §4);
    `far`: the ray_end the render put the leftover weight at (last_back), else None (`surface_depth`)."""
    mask = opacity > 0.5
    return shade(normals_from_depth(surface_depth(depth.float(), opacity.float(), far), fov, mask), mask)
