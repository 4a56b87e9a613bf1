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


def ray_ellipsoid_depths(origin: torch.Tensor, dirs: torch.Tensor, centres: torch.Tensor,
                         radii: torch.Tensor) -> torch.Tensor:
    """Distance t (R, K) float64 from origin (3,) along unit rays dirs (R, 3) to the nearest hit on
    each of K axis-aligned ellipsoids centres (K, 3), semi-axes radii (K, 3); inf on a miss.

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
    return torch.where((disc > 0) & (t > 0), t, torch.full_like(t, math.inf))


def ray_ellipsoid_hits(origin: torch.Tensor, dirs: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor):
    """Nearest hit of rays origin (3,) + t * dirs (R, 3, unit) on the union of axis-aligned ellipsoids
    centres (K, 3), semi-axes radii (K, 3): t (R,) (inf on a miss), ellipsoid id (R,), hit (R,)."""
    t_min, prim = ray_ellipsoid_depths(origin, dirs, centres, radii).min(dim=1)   # (R,)
    return t_min.to(dirs.dtype), prim, torch.isfinite(t_min)


class ProceduralShape:
    """Axis-aligned ellipsoids with colours, shaded Lambertian under a fixed world-space light.

    Subclasses build `centres` (K, 3), `radii` (K, 3), `colours` (K, 3) and `background` (3,) from
    uniform draws in [0, 1) consumed in a fixed order (`_uniform`), and may override `albedo`.
    `mean()` is the family's average member: every draw at 0.5.
    """

    NUM_DRAWS = 48
    LIGHT = _LIGHT  # unit direction toward the light, world space

    @staticmethod
    def _uniform(generator: Optional[torch.Generator], draws):
        """u(lo, hi) over draws from `generator` (all in one call: fast and reproducible) or given `draws`."""
        values = iter(torch.rand(ProceduralShape.NUM_DRAWS, generator=generator, dtype=torch.float64).tolist()
                      if draws is None else list(draws))

        def u(lo, hi):
            return lo + (hi - lo) * next(values)
        return u

    @classmethod
    def mean(cls) -> "ProceduralShape":
        return cls(draws=[0.5] * cls.NUM_DRAWS)

    def cast(self, origin: torch.Tensor, dirs: torch.Tensor):
        """Nearest hit of rays origin + t*dirs (dirs (R, 3) unit): t (R,), primitive id (R,), hit (R,)."""
        return ray_ellipsoid_hits(origin, dirs, self.centres, self.radii)

    def albedo(self, points: torch.Tensor, prim: torch.Tensor):
        """Albedo (H, 3) and region label (H,) (0 is background) of hit points (H, 3) on primitives prim (H,)."""
        return self.colours[prim], prim + 1

    def radiance(self, origin: torch.Tensor, dirs: torch.Tensor):
        """Colour in [0, 1] (R, 3), depth t (R,), hit (R,) and a region label (R,) per ray.

        Lambertian + ambient shading under a fixed world-space light, so colours do not
        depend on the viewpoint. A change of label between neighbouring pixels marks an edge.
        """
        t, prim, hit = self.cast(origin, dirs)
        colour = self.background.expand(dirs.shape[0], 3).clone()
        label = torch.zeros(dirs.shape[0], dtype=torch.long)
        points = origin + t[hit, None] * dirs[hit]                          # (H, 3)
        p = prim[hit]
        normals = F.normalize((points - self.centres[p]) / self.radii[p] ** 2, dim=-1)
        albedo, region = self.albedo(points, p)
        light = _AMBIENT + (1 - _AMBIENT) * (normals @ self.LIGHT).clamp_min(0)
        colour[hit] = albedo * light[:, None]
        label[hit] = region
        return colour, t, hit, label


class Head(ProceduralShape):
    """One procedural head: axis-aligned ellipsoids with colours, plus a hair rule.

    Primitive 0 is the skull; the rest (eyes, nose, mouth, ears) have flat albedo.
    Everything lies inside [-0.12, 0.12]^3; the face looks toward +z.
    """

    HAIR_PALETTE = ((0.05, 0.04, 0.03), (0.25, 0.15, 0.08), (0.55, 0.38, 0.2),
                    (0.8, 0.65, 0.4), (0.55, 0.2, 0.08), (0.6, 0.6, 0.6))

    def __init__(self, generator: Optional[torch.Generator] = None, draws=None):
        u = self._uniform(generator, draws)

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

    def albedo(self, points: torch.Tensor, prim: torch.Tensor):
        """Hair covers the skull above a hairline that drops toward the back of the head; its label is K + 1."""
        local = (points - self.skull_centre) / self.skull_axes            # unit sphere for the skull
        hair = (prim == 0) & (local[:, 1] > self.hairline - self.hair_slope * (1 - local[:, 2]))
        albedo = torch.where(hair[:, None], self.hair.expand(prim.shape[0], 3), self.colours[prim])
        return albedo, torch.where(hair, len(self.centres) + 1, prim + 1)


class Critter(ProceduralShape):
    """One procedural four-legged animal (the `Critters` data set): body, head with snout, ears and eyes,
    four legs and a tail, all axis-aligned ellipsoids, heading toward +x, standing on y = -ground.

    Elongated (about 2.5x longer than wide), front-back asymmetric (head against tail) and with
    protrusions (legs, ears, snout) and concavities (between the legs, under the neck): a sphere,
    an ellipsoid, a wall or a billboard is visibly wrong from the side, the front or above. The
    body and tail carry stripes across x so that views can be matched. Proportions vary between
    critters; everything lies inside a sphere of radius 0.115 (the curriculum's depth range).
    """

    FUR_PALETTE = ((0.55, 0.35, 0.18), (0.75, 0.55, 0.3), (0.35, 0.3, 0.28), (0.85, 0.8, 0.7),
                   (0.6, 0.25, 0.1), (0.45, 0.45, 0.5))
    MAX_RADIUS = 0.115
    # From above and a little in front: seen from all around, every side is lit (the heads' light,
    # from the front, leaves the back at the ambient level).
    LIGHT = torch.tensor([0.25, 1.0, 0.35]) / math.sqrt(0.25 ** 2 + 1.0 + 0.35 ** 2)

    def __init__(self, generator: Optional[torch.Generator] = None, draws=None):
        u = self._uniform(generator, draws)
        bl, bh, bw = u(0.050, 0.068), u(0.024, 0.034), u(0.022, 0.030)   # body semi-axes (x, y, z)
        leg_h, leg_r = u(0.018, 0.030), u(0.008, 0.011)                   # leg half-height, radius
        hr = u(0.018, 0.024)                                              # head radius
        neck = u(0.2, 0.9)                                                # head raised by neck * hr
        snout, ear = u(0.6, 1.2), u(0.8, 1.6)
        tail = u(0.014, 0.032)                                            # tail half-length
        body_y = 2 * leg_h * 0.85 + bh
        head = (bl + 0.55 * hr, body_y + 0.8 * bh + neck * hr, 0.0)
        parts = [((0.0, body_y, 0.0), (bl, bh, bw))]                      # 0 body
        for sx in (-1.0, 1.0):                                            # 1-4 legs
            for sz in (-1.0, 1.0):
                parts.append(((sx * 0.65 * bl, leg_h, sz * 0.6 * bw), (leg_r, leg_h, leg_r)))
        parts.append((head, (1.15 * hr, hr, 0.95 * hr)))                  # 5 head
        parts.append(((head[0] + 0.95 * hr, head[1] - 0.3 * hr, 0.0),      # 6 snout
                      (0.6 * hr * snout, 0.45 * hr, 0.5 * hr)))
        for sz in (-1.0, 1.0):                                            # 7, 8 ears
            parts.append(((head[0] - 0.25 * hr, head[1] + 0.85 * hr + 0.3 * hr * ear, sz * 0.5 * hr),
                          (0.28 * hr, 0.5 * hr * ear, 0.18 * hr)))
        for sz in (-1.0, 1.0):                                            # 9, 10 eyes
            parts.append(((head[0] + 0.62 * hr, head[1] + 0.3 * hr, sz * 0.55 * hr), (0.24 * hr,) * 3))
        parts.append(((-bl - 0.75 * tail, body_y + 0.45 * bh, 0.0), (tail, 0.22 * bh, 0.22 * bh)))  # 11 tail
        centres = torch.tensor([c for c, _ in parts], dtype=torch.float64)
        radii = torch.tensor([r for _, r in parts], dtype=torch.float64)
        # Centre the bounding box on the origin, then shrink to fit the depth range if needed.
        low, high = (centres - radii).min(0).values, (centres + radii).max(0).values
        centres = centres - (low + high) / 2
        corner = torch.maximum((centres - radii).abs(), (centres + radii).abs())
        scale = min(1.0, self.MAX_RADIUS / float(torch.linalg.vector_norm(corner, dim=1).max()))
        self.centres, self.radii = (centres * scale).float(), (radii * scale).float()

        fur = torch.tensor(self.FUR_PALETTE[min(int(u(0, len(self.FUR_PALETTE))), len(self.FUR_PALETTE) - 1)])
        fur = (fur * u(0.85, 1.15)).clamp(0, 1)
        self.stripe_colour = (fur * u(0.35, 0.6)).clamp(0, 1)
        self.stripe_frequency = u(2.5, 4.5) * math.pi / (bl * scale)      # 2.5-4.5 stripes along the body
        self.stripe_phase = u(0.0, 2 * math.pi)
        legs = (fur * 0.7).tolist()
        colours = [fur.tolist()] + [legs] * 4 + [(fur * 1.05).clamp(0, 1).tolist(),
                                                  (fur * 0.5 + 0.45).clamp(0, 1).tolist()]
        colours += [(fur * 0.6).tolist()] * 2 + [(0.05, 0.05, 0.05)] * 2 + [fur.tolist()]
        self.colours = torch.tensor(colours).clamp(0, 1)                  # (K, 3) albedo
        # White, as pi-GAN's CARLA cars: a known background (the curriculum's white_back) leaves the field no
        # colour to paint behind the critter, so only density can draw its silhouette.
        self.background = torch.ones(3)

    def albedo(self, points: torch.Tensor, prim: torch.Tensor):
        """Stripes across x on the body (0) and the tail (11); each stripe is its own region."""
        striped = (prim == 0) | (prim == len(self.centres) - 1)
        band = torch.sin(points[:, 0] * self.stripe_frequency + self.stripe_phase) > 0.3
        dark = striped & band
        albedo = torch.where(dark[:, None], self.stripe_colour.expand(prim.shape[0], 3), self.colours[prim])
        return albedo, torch.where(dark, len(self.centres) + 1, prim + 1)


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


class ProceduralDataset(Dataset):
    """Procedural 3D shapes (`SHAPE`) rendered by exact ray casting; deterministic per index.

    Each index has its own camera pose drawn from the curriculum's pose distribution and shows
    object `index % objects` (shape, colours, background), or its own object when `objects` is 0:
    N objects can be seen from any number of poses. `render` re-renders an object from any pose
    with exact depth, mask and camera; background pixels get depth = metadata['ray_end'] and
    mask False.
    Pixels on edges (silhouette, eyes, hairline, stripes ...) are supersampled with
    `supersample`**2 rays and box-filtered; elsewhere, and for depth and mask, one
    ray through the pixel centre is used.

    `metadata` is a curriculum's (`curriculums.extract_metadata`): its camera (fov, ray_end,
    the pose distribution) and, unless `length`, `seed` and `objects` are given, synthetic_size,
    synthetic_seed and synthetic_objects.
    """

    SHAPE = ProceduralShape
    # A horizontal flip shows the mirrored shape; for a shape symmetric about x = 0 (a head facing +z) that
    # is the view from yaw pi - yaw, inside the same pose distribution.
    FLIPS = True

    def __init__(self, img_size: int, metadata: Mapping, length: Optional[int] = None,
                 seed: Optional[int] = None, flip: bool = False, supersample: int = 2,
                 objects: Optional[int] = None):
        self.img_size = int(img_size)
        self.length = int(metadata["synthetic_size"] if length is None else length)
        self.seed = int(metadata["synthetic_seed"] if seed is None else seed)
        self.objects = int(metadata.get("synthetic_objects", 0) if objects is None else objects)
        self.flip = flip
        self.supersample = max(1, int(supersample))
        self.fov = float(metadata["fov"])
        self.background_depth = float(metadata["ray_end"])
        self.pose = PoseDistribution.from_metadata(metadata)
        self._dir_cache = {}

    def __len__(self) -> int:
        return self.length

    def object_of(self, index: int) -> int:
        """Which object index `index` shows."""
        return index % self.objects if self.objects else index

    def shape(self, index: int) -> ProceduralShape:
        """The object shown at `index`."""
        generator = torch.Generator().manual_seed(_seed(self.seed, self.object_of(index), 0))
        return self.SHAPE(generator)

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
        """Render the object of `index` (at its own pose unless yaw/pitch are given).

        Returns image (3, S, S) in [-1, 1], depth (S, S) (distance along the unit ray;
        background = ray_end), mask (S, S) bool, cam2world (4, 4), yaw, pitch.
        """
        size = int(img_size or self.img_size)
        if yaw is None or pitch is None:
            own_yaw, own_pitch = self.pose_of(index)
            yaw = own_yaw if yaw is None else yaw
            pitch = own_pitch if pitch is None else pitch
        return self.render_shape(self.shape(index), yaw, pitch, size)

    def render_shape(self, shape: ProceduralShape, yaw: float, pitch: float, size: int) -> dict:
        """`render` of a given shape (the metric's mean object, for one)."""
        cam2world = cam2world_from_poses(torch.tensor([float(yaw)]), torch.tensor([float(pitch)]))[0]
        rotation, origin = cam2world[:3, :3], cam2world[:3, 3]
        centre_dirs, sub_dirs = self._directions(size)

        dirs = centre_dirs @ rotation.T                                     # (S*S, 3) world
        colour, t, hit, label = shape.radiance(origin, dirs)
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
                sub_colour = shape.radiance(origin, sub)[0]
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
        flip = flip and self.FLIPS
        view = self.render(index)
        yaw = math.pi - view["yaw"] if flip else view["yaw"]
        pose = torch.tensor([view["pitch"], yaw], dtype=torch.float32)  # the label: (pitch, yaw), as G's poses
        return (view["image"].flip(-1) if flip else view["image"]), pose


class Synthetic(ProceduralDataset):
    """Procedural heads (`Head`), seen over the face curricula's narrow frontal poses."""

    SHAPE = Head

    def head(self, index: int) -> Head:
        return self.shape(index)


class Critters(ProceduralDataset):
    """Procedural four-legged animals (`Critter`), seen from all around (the `Critters` curriculum)."""

    SHAPE = Critter
    # Never flipped: a critter is symmetric about z = 0, so its mirror image is the view from -yaw, the other
    # side; flips would make the pose density two-sided and leave the orientation free.
    FLIPS = False


PROCEDURAL_DATASETS = {"Synthetic": Synthetic, "Critters": Critters}
