"""Procedural heads: the `Synthetic` dataset, rendered by exact ray casting (docs/METHOD.md §9).

Each index is a head (ellipsoid skull, eyes, nose, mouth, ears, hair) seen from its own
camera pose, ray-cast analytically with the project's camera code; nothing is downloaded.
Because the geometry is known, `Synthetic.render` also gives exact depth maps, masks and
cameras, which the `synthetic` metric and the multi-view tests use. Entry points:
`Synthetic(img_size, metadata)` (what `datasets.build_dataset` builds for the Synthetic
curriculum) and `ray_ellipsoid_hits`.
"""
from __future__ import annotations

import math
from typing import Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from generators.cameras import (PoseDistribution, cam2world_from_poses, camera_ray_directions,
                                directions_through, sample_poses)

_LIGHT = torch.tensor([0.35, 0.5, 1.0]) / math.sqrt(0.35 ** 2 + 0.5 ** 2 + 1.0)  # world space
_AMBIENT = 0.35


def _seed(*values: int) -> int:
    """A well-mixed 63-bit seed from integers (stable across runs and platforms)."""
    return int(np.random.SeedSequence([int(v) & 0xFFFFFFFF for v in values]).generate_state(2, np.uint64)[0] >> 1)


def ray_ellipsoid_hits(origin: torch.Tensor, dirs: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor):
    """Nearest hit of rays origin (3,) + t * dirs (R, 3, unit) on axis-aligned ellipsoids
    centres (K, 3), semi-axes radii (K, 3): t (R,) (inf on a miss), ellipsoid id (R,), hit (R,).

    Solves |(origin + t*dirs - centre) / radii|^2 = 1 for every ellipsoid at once
    (two (R, 3) x (3, K) matmuls), in float64: for the small primitives the
    quadratic's coefficients are ~1e4-1e5 and float32 would cancel badly.
    """
    inv_r = 1.0 / radii.double()                                        # (K, 3)
    o = (origin.double()[None] - centres.double()) * inv_r              # (K, 3) origin, scaled
    d = dirs.double()
    a = (d * d) @ (inv_r * inv_r).T                                     # (R, K)
    b = d @ (o * inv_r).T                                               # (R, K) half of the usual b
    c = (o * o).sum(-1) - 1                                             # (K,)
    disc = b * b - a * c
    t = (-b - disc.clamp_min(0).sqrt()) / a                             # nearest root
    t = torch.where((disc > 0) & (t > 0), t, torch.full_like(t, math.inf))
    t_min, prim = t.min(dim=1)                                          # (R,)
    return t_min.to(dirs.dtype), prim, torch.isfinite(t_min)


class Head:
    """One procedural head: axis-aligned ellipsoids with colours, plus a hair rule.

    Primitive 0 is the skull; the rest (eyes, nose, mouth, ears) have flat albedo.
    Everything lies inside [-0.12, 0.12]^3; the face looks toward +z.
    """

    HAIR_PALETTE = ((0.05, 0.04, 0.03), (0.25, 0.15, 0.08), (0.55, 0.38, 0.2),
                    (0.8, 0.65, 0.4), (0.55, 0.2, 0.08), (0.6, 0.6, 0.6))

    def __init__(self, generator: torch.Generator):
        # All random numbers in one call, consumed in a fixed order (fast and reproducible).
        draws = iter(torch.rand(48, generator=generator, dtype=torch.float64).tolist())

        def u(lo, hi):
            return lo + (hi - lo) * next(draws)

        # Skull: semi-axes (x, y, z) in [0.06, 0.085], centre near the origin.
        ax, ay, az = u(0.060, 0.075), u(0.070, 0.085), u(0.065, 0.080)
        cx, cy, cz = 0.0, u(-0.006, 0.006), u(-0.006, 0.006)

        def on_surface(sx, sy, inset):
            """Skull point at normalised (sx, sy) on its front (+z), pushed in along the normal."""
            sz = math.sqrt(max(1 - sx * sx - sy * sy, 0.0))
            nx, ny, nz = sx / ax, sy / ay, sz / az
            norm = math.sqrt(nx * nx + ny * ny + nz * nz)
            return (cx + ax * sx - inset * nx / norm, cy + ay * sy - inset * ny / norm,
                    cz + az * sz - inset * nz / norm)

        tone = u(0.0, 1.0)                           # dark to light skin, then a small jitter
        skin = tuple(min(max(lo + tone * (hi - lo) + u(-0.04, 0.04), 0.0), 1.0)
                     for lo, hi in ((0.36, 0.96), (0.22, 0.78), (0.15, 0.68)))
        iris = (u(0.05, 0.3), u(0.05, 0.3), u(0.05, 0.3))
        lip_shade = u(0.75, 0.95)
        lips = (skin[0] * lip_shade, skin[1] * 0.55 * lip_shade, skin[2] * 0.55 * lip_shade)
        sclera = (0.92, 0.92, 0.9)

        # Eyes are drawn large (about a fifth of the face's width) so that each covers 2-5 pixels
        # at the demo's 16 px: at radius 0.009-0.012 most covered one, and no run learnt them.
        eye_x, eye_y, eye_r = u(0.30, 0.40), u(0.05, 0.2), u(0.014, 0.017)
        iris_r = eye_r * u(0.6, 0.72)
        nose_r, nose_y = u(0.010, 0.015), u(-0.25, -0.1)
        mouth_y, mouth_w, mouth_h = u(-0.55, -0.42), u(0.014, 0.02), u(0.004, 0.006)
        ear = (u(0.006, 0.009), u(0.013, 0.018), u(0.008, 0.011))
        ear_y = u(-0.1, 0.05) * ay

        centres, radii, colours = [(cx, cy, cz)], [(ax, ay, az)], [skin]
        for side in (-1.0, 1.0):
            ex, ey, ez = on_surface(side * eye_x, eye_y, inset=0.45 * eye_r)
            centres += [(ex, ey, ez), (ex, ey, ez + eye_r - 0.6 * iris_r)]   # eyeball, iris
            radii += [(eye_r,) * 3, (iris_r,) * 3]
            colours += [sclera, iris]
        centres.append(on_surface(0.0, nose_y, inset=0.35 * nose_r))
        radii.append((0.8 * nose_r, 1.1 * nose_r, nose_r))
        colours.append(tuple(0.95 * v for v in skin))
        centres.append(on_surface(0.0, mouth_y, inset=0.004))
        radii.append((mouth_w, mouth_h, 0.007))
        colours.append(lips)
        for side in (-1.0, 1.0):
            centres.append((side * (ax - 0.3 * ear[0]), cy + ear_y, cz - 0.1 * az))
            radii.append(ear)
            colours.append(tuple(0.9 * v for v in skin))

        self.centres = torch.tensor(centres)                 # (K, 3)
        self.radii = torch.tensor(radii)                     # (K, 3) semi-axes
        self.colours = torch.tensor(colours).clamp(0, 1)     # (K, 3) albedo
        self.skull_centre, self.skull_axes = self.centres[0], self.radii[0]
        # Hair covers the skull above a hairline that drops toward the back of the head.
        self.hairline, self.hair_slope = u(0.3, 0.6), u(0.35, 0.65)
        hair = self.HAIR_PALETTE[min(int(u(0, len(self.HAIR_PALETTE))), len(self.HAIR_PALETTE) - 1)]
        self.hair = (torch.tensor(hair) * u(0.8, 1.2)).clamp(0, 1)
        self.background = torch.tensor([u(0.1, 0.9), u(0.1, 0.9), u(0.1, 0.9)])

    def cast(self, origin: torch.Tensor, dirs: torch.Tensor):
        """Nearest hit of rays origin + t*dirs (dirs (R, 3) unit): t (R,), primitive id (R,), hit (R,)."""
        return ray_ellipsoid_hits(origin, dirs, self.centres, self.radii)

    def radiance(self, origin: torch.Tensor, dirs: torch.Tensor):
        """Colour in [0, 1] (R, 3), depth t (R,), hit (R,) and a region label (R,) per ray.

        Lambertian + ambient shading under a fixed world-space light, so colours do not
        depend on the viewpoint. Labels: 0 background, 1 + primitive id, or K + 1 for
        hair; a change of label between neighbouring pixels marks an edge.
        """
        t, prim, hit = self.cast(origin, dirs)
        colour = self.background.expand(dirs.shape[0], 3).clone()
        label = torch.zeros(dirs.shape[0], dtype=torch.long)
        points = origin + t[hit, None] * dirs[hit]                          # (H, 3)
        p = prim[hit]
        normals = F.normalize((points - self.centres[p]) / self.radii[p] ** 2, dim=-1)
        local = (points - self.skull_centre) / self.skull_axes            # unit sphere for the skull
        hair = (p == 0) & (local[:, 1] > self.hairline - self.hair_slope * (1 - local[:, 2]))
        albedo = torch.where(hair[:, None], self.hair.expand(p.shape[0], 3), self.colours[p])
        light = _AMBIENT + (1 - _AMBIENT) * (normals @ _LIGHT).clamp_min(0)
        colour[hit] = albedo * light[:, None]
        label[hit] = torch.where(hair, len(self.centres) + 1, p + 1)
        return colour, t, hit, label


def _subpixel_offsets(img_size: int, fov: float, factor: int) -> torch.Tensor:
    """Camera-space unit directions (S*S, k*k, 3) of a k x k grid inside each pixel.

    Same pixel layout as `camera_ray_directions` (pixel centres at linspace(-1, 1, S)).
    """
    step = 2.0 / max(img_size - 1, 1)
    centres = torch.linspace(-1, 1, img_size)
    sub = (torch.arange(factor) + 0.5) / factor * step - step / 2      # (k,)
    xs = (centres[:, None] + sub[None]).reshape(-1)                    # (S*k,) left to right
    dirs = directions_through(xs, fov)                                 # (S*k, S*k, 3)
    dirs = dirs.reshape(img_size, factor, img_size, factor, 3).permute(0, 2, 1, 3, 4)
    return dirs.reshape(img_size * img_size, factor * factor, 3)


class Synthetic(Dataset):
    """Procedural 3D heads rendered by exact ray casting; deterministic per index.

    Each index seeds its own head (shape, colours, hair, background) and its own
    camera pose drawn from the curriculum's pose distribution. `render` re-renders a
    head from any pose with exact depth, mask and camera; background pixels get
    depth = metadata['ray_end'] and mask False.
    Pixels on edges (silhouette, eyes, hairline ...) are supersampled with
    `supersample`**2 rays and box-filtered; elsewhere, and for depth and mask, one
    ray through the pixel centre is used.

    `metadata` is a curriculum's (`curriculums.extract_metadata`): its camera (fov, ray_end,
    the pose distribution) and, unless `length` and `seed` are given, synthetic_size and
    synthetic_seed.
    """

    def __init__(self, img_size: int, metadata: Mapping, length: Optional[int] = None,
                 seed: Optional[int] = None, flip: bool = False, supersample: int = 2):
        self.img_size = int(img_size)
        self.length = int(metadata["synthetic_size"] if length is None else length)
        self.seed = int(metadata["synthetic_seed"] if seed is None else seed)
        self.flip = flip
        self.supersample = max(1, int(supersample))
        self.fov = float(metadata["fov"])
        self.background_depth = float(metadata["ray_end"])
        self.pose = PoseDistribution.from_metadata(metadata)
        self._dir_cache = {}

    def __len__(self) -> int:
        return self.length

    def head(self, index: int) -> Head:
        generator = torch.Generator().manual_seed(_seed(self.seed, index, 0))
        return Head(generator)

    def pose_of(self, index: int):
        """The (yaw, pitch) drawn for `index`."""
        generator = torch.Generator().manual_seed(_seed(self.seed, index, 1))
        yaw, pitch = sample_poses(1, self.pose, generator=generator)
        return float(yaw), float(pitch)

    def _directions(self, size: int):
        if size not in self._dir_cache:
            centre = camera_ray_directions(size, self.fov)                 # (S*S, 3)
            sub = _subpixel_offsets(size, self.fov, self.supersample) if self.supersample > 1 else None
            self._dir_cache[size] = (centre, sub)
        return self._dir_cache[size]

    def render(self, index: int, yaw: Optional[float] = None, pitch: Optional[float] = None,
               img_size: Optional[int] = None) -> dict:
        """Render head `index` (at its own pose unless yaw/pitch are given).

        Returns image (3, S, S) in [-1, 1], depth (S, S) (distance along the unit ray;
        background = ray_end), mask (S, S) bool, cam2world (4, 4), yaw, pitch.
        """
        size = int(img_size or self.img_size)
        if yaw is None or pitch is None:
            own_yaw, own_pitch = self.pose_of(index)
            yaw = own_yaw if yaw is None else yaw
            pitch = own_pitch if pitch is None else pitch
        head = self.head(index)
        cam2world = cam2world_from_poses(torch.tensor([float(yaw)]), torch.tensor([float(pitch)]))[0]
        rotation, origin = cam2world[:3, :3], cam2world[:3, 3]
        centre_dirs, sub_dirs = self._directions(size)

        dirs = centre_dirs @ rotation.T                                     # (S*S, 3) world
        colour, t, hit, label = head.radiance(origin, dirs)
        mask = hit.reshape(size, size)
        depth = torch.where(hit, t, torch.full_like(t, self.background_depth)).reshape(size, size)

        if sub_dirs is not None:
            # Adaptive supersampling: re-render pixels whose 3x3 neighbourhood crosses an
            # edge (silhouette, eye, hairline ...) with k x k rays and box-filter them.
            labels = F.pad(label.reshape(1, 1, size, size).float(), (1, 1, 1, 1), mode="replicate")
            spread = F.max_pool2d(labels, 3, stride=1) + F.max_pool2d(-labels, 3, stride=1)
            edge = (spread.reshape(-1) != 0).nonzero().squeeze(1)           # (E,)
            if edge.numel():
                sub = (sub_dirs[edge] @ rotation.T).reshape(-1, 3)          # (E*k*k, 3)
                sub_colour = head.radiance(origin, sub)[0]
                colour[edge] = sub_colour.reshape(edge.numel(), -1, 3).mean(1)
        image = colour.T.reshape(3, size, size) * 2 - 1
        return {"image": image, "depth": depth, "mask": mask, "cam2world": cam2world,
                "yaw": float(yaw), "pitch": float(pitch)}

    def __getitem__(self, key):
        """`key` is an index (flipped by a fixed coin per index when built with `flip`) or
        (index, flip) as the training sampler yields it."""
        index, flip = key if isinstance(key, tuple) else (key, self.flip and bool(_seed(self.seed, key, 2) & 1))
        if not 0 <= index < self.length:
            raise IndexError(index)
        image = self.render(index)["image"]
        return (image.flip(-1) if flip else image), 0
