"""`ImplicitGenerator3d`: the MVCGAN generator (docs/METHOD.md §4).

Four seams, each its own module: cameras/rays (`cameras.py`, the point sampler),
the FiLM-SIREN field (`siren/`, the point embedder), volume integration
(`volume_rendering.py`, the point integrator) and the 2D upsampler (`decoder.py`,
the post neural renderer). The stereo warp and mixup live in `warp.py`.

Entry points: `forward` (training: primary + auxiliary view), `staged_forward`
(inference with truncation), `style_mix_forward`, `interpolate_forward`,
`density_grid` (for meshes). Options come in a `RenderOptions`, built once per
stage from the curriculum's metadata with `RenderOptions.from_metadata`. Every random
number of a training forward (poses, depth jitter, density noise, mixup ratios) is drawn by
`sample_draws` into a `ForwardDraws`, which `forward` also accepts as given: a forward pass
is then a pure function of its inputs (replayed steps, reproducible renders).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping, NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from generators.cameras import (PoseDistribution, RaySampling, cam2world_from_poses, jitter_draws,
                                rays_for_cameras, sample_poses)
from generators.decoder import Decoder
from generators.volume_rendering import IntegrationOptions, importance_depths, integrate
from generators.precision import full_precision
from generators.warp import stereo_mixup, stereo_warp
from siren.siren import SIRENS

# What the discriminator sees: the 2D decoder's output (the published MVCGAN) or the field's own
# volume-rendered RGB, resized to output_size (pi-GAN's training; the Critters curriculum, where the
# decoder could otherwise draw every view without any 3D in the field: docs/METHOD.md §13).
IMAGE_SOURCES = ("decoder", "nerf")

TRUNCATION_SAMPLES = 10000


@dataclass(frozen=True)
class RenderOptions:
    """Everything a forward pass needs to know about cameras, rays and outputs."""

    pose: PoseDistribution
    rays: RaySampling
    integration: IntegrationOptions
    output_size: int
    max_mixup_ratio: float = 0.0
    stereo_auxiliary: bool = True
    hierarchical_sample: bool = False
    lock_view_dependence: bool = False
    warp_projection: str = "ray_norm"  # generators.warp.WARP_PROJECTIONS; the published scale by default
    image_source: str = "decoder"      # IMAGE_SOURCES; the published decoder by default

    @classmethod
    def from_metadata(cls, metadata: Mapping, *, evaluation: bool = False, nerf_noise: float = 0.0,
                      img_size: Optional[int] = None, num_steps: Optional[int] = None,
                      output_size: Optional[int] = None, lock_view_dependence: bool = False) -> "RenderOptions":
        """Training options (`evaluation` False) or inference options (no noise, eval_last_back)."""
        return cls(
            pose=PoseDistribution.from_metadata(metadata, evaluation=evaluation),
            rays=RaySampling.from_metadata(metadata, img_size=img_size, num_steps=num_steps),
            integration=IntegrationOptions.from_metadata(
                metadata, nerf_noise=0.0 if evaluation else nerf_noise, evaluation=evaluation),
            output_size=int(output_size if output_size is not None else metadata["output_size"]),
            max_mixup_ratio=float(metadata["max_mixup_ratio"]),
            stereo_auxiliary=bool(metadata["stereo_auxiliary"]),
            hierarchical_sample=bool(metadata["hierarchical_sample"]),
            lock_view_dependence=lock_view_dependence or bool(metadata["lock_view_dependence"]),
            warp_projection=str(metadata["warp_projection"]),
            image_source=str(metadata["image_source"]),
        )

    def replace(self, **changes) -> "RenderOptions":
        return replace(self, **changes)


def sample_z(n: int, latent_dim: int, z_dist: str = "gaussian", device="cpu",
             generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Latents (n, latent_dim): N(0, I), or U(-1, 1) when the curriculum's z_dist is 'uniform'."""
    if z_dist == "uniform":
        return torch.rand(n, latent_dim, device=device, generator=generator) * 2 - 1
    return torch.randn(n, latent_dim, device=device, generator=generator)


class LatentCodes(NamedTuple):
    """What the mapping network produces for a z: FiLM (raw) frequencies, phases, decoder style."""

    frequencies: torch.Tensor  # (n, 9H)
    phases: torch.Tensor       # (n, 9H)
    style: torch.Tensor        # (n, 256)

    def lerp(self, other: "LatentCodes", weight) -> "LatentCodes":
        return LatentCodes(*(torch.lerp(a, b, weight) for a, b in zip(self, other)))


class RenderedView(NamedTuple):
    """One rendered NeRF view, as image-shaped maps."""

    rgb: torch.Tensor        # (n, 3, S, S) in [0, 1]
    features: torch.Tensor   # (n, H, S, S)
    depth: torch.Tensor      # (n, S, S) distance along the unit ray
    cam2world: torch.Tensor  # (n, 4, 4)
    opacity: torch.Tensor    # (n, S, S) accumulated opacity before last_back (see `integrate`)


class ViewDraws(NamedTuple):
    """The random numbers behind one training view."""

    yaw: torch.Tensor                      # (n,) camera pose, radians
    pitch: torch.Tensor                    # (n,)
    jitter: torch.Tensor                   # (n, S*S, N) U[0, 1): depth t + (u - 1/2)·Δt
    density_noise: Optional[torch.Tensor]  # (n, S*S, N') N(0, 1), times nerf_noise; None when it is 0


class ForwardDraws(NamedTuple):
    """Every random number of one training forward (`ImplicitGenerator3d.sample_draws`)."""

    primary: ViewDraws
    aux: Optional[ViewDraws]      # None without stereo_auxiliary
    mixup: Optional[torch.Tensor]  # (n,) U[0, 1): the mixup ratio is u · max_mixup_ratio


class GeneratorOutput(NamedTuple):
    image: torch.Tensor                   # (B, 3, out, out), roughly in [-1, 1]
    pose: torch.Tensor                    # (B, 2): pitch, yaw of the primary camera
    primary: RenderedView                 # the primary NeRF view (rgb in [0, 1], depth, camera)
    aux: Optional[RenderedView]           # the auxiliary view, None without stereo_auxiliary
    warped_aux_rgb: Optional[torch.Tensor]  # (B, 3, S, S): aux RGB warped into the primary view
    mixup_ratio: Optional[torch.Tensor]   # (B,): weight of the warped aux features

    @property
    def primary_rgb(self) -> torch.Tensor:
        """(B, 3, S, S) in [0, 1]: the primary view's NeRF RGB."""
        return self.primary.rgb


class StagedOutput(NamedTuple):
    image: torch.Tensor      # (B, 3, out, out)
    depth: torch.Tensor      # (B, S, S)
    nerf_rgb: torch.Tensor   # (B, 3, S, S) in [0, 1]
    cam2world: torch.Tensor  # (B, 4, 4)
    opacity: torch.Tensor    # (B, S, S) NeRF opacity in [0, 1]: > 0.5 is the generated silhouette


class ImplicitGenerator3d(nn.Module):
    def __init__(self, siren: str = "SPATIALSIRENBASELINE", z_dim: int = 256, hidden_dim: int = 256,
                 decoder_channels=(256, 256, 128, 64), sphere_prior_radius: float = 0.0,
                 sphere_prior_density: float = 0.0, density_scale: float = 1.0, sdf_beta: float = 0.0):
        super().__init__()
        if siren not in SIRENS:
            raise ValueError(f"unknown model {siren!r}; available: {sorted(SIRENS)}")
        if sphere_prior_radius < 0 or sphere_prior_density < 0:
            raise ValueError(f"sphere_prior_radius and sphere_prior_density must be >= 0, got "
                             f"{sphere_prior_radius} and {sphere_prior_density}")
        self.z_dim, self.hidden_dim = z_dim, hidden_dim
        # Not in the published code (docs/METHOD.md §4): off (0) for the published curricula.
        self.sphere_prior_radius, self.sphere_prior_density = float(sphere_prior_radius), float(sphere_prior_density)
        if not density_scale > 0:
            raise ValueError(f"density_scale must be > 0, got {density_scale}")
        # Not in the published code (docs/METHOD.md §13): 1 for the published curricula.
        self.density_scale = float(density_scale)
        if not sdf_beta >= 0:
            raise ValueError(f"sdf_beta must be >= 0, got {sdf_beta}")
        # Not in the published code (docs/METHOD.md §13): 0 (raw density) for the published curricula.
        self.sdf_beta = float(sdf_beta)
        self.siren = SIRENS[siren](z_dim=z_dim, hidden_dim=hidden_dim)
        self.decoder = Decoder(in_channels=hidden_dim, style_dim=self.siren.mapping_network.output_layer.in_features,
                               channels=tuple(decoder_channels))
        self._truncation_cache = None  # (weights key, mean LatentCodes): not part of the state dict

    # ----------------------------------------------------------------- latents
    def mapping(self, z: torch.Tensor) -> LatentCodes:
        return LatentCodes(*self.siren.mapping_network(z))

    def _mapping_key(self):
        return tuple((p.data_ptr(), p._version) for p in self.siren.mapping_network.parameters())

    @torch.no_grad()
    def average_codes(self) -> LatentCodes:
        """Mean codes over 10 000 random z; recomputed only when the mapping weights change."""
        key = self._mapping_key()
        if self._truncation_cache is None or self._truncation_cache[0] != key:
            device = next(self.parameters()).device
            seed = torch.Generator(device="cpu").manual_seed(0)
            z = torch.randn(TRUNCATION_SAMPLES, self.z_dim, generator=seed).to(device)
            with torch.autocast(device.type, enabled=False):
                codes = self.mapping(z)
            self._truncation_cache = (key, LatentCodes(*(c.mean(0, keepdim=True) for c in codes)))
        return self._truncation_cache[1]

    def truncated_mapping(self, z: torch.Tensor, psi: float = 1.0) -> LatentCodes:
        """Codes pulled towards the average: mean + psi * (code - mean)."""
        codes = self.mapping(z)
        if psi == 1:
            return codes
        return self.average_codes().lerp(codes, psi)

    # --------------------------------------------------------------- rendering
    @property
    def has_sphere_prior(self) -> bool:
        return bool(self.sphere_prior_radius and self.sphere_prior_density)

    def _with_prior(self, sigma: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Raw density (n, M) times density_scale, plus the sphere prior at points (n, M, 3):
        sphere_prior_density * (1 - |x| / sphere_prior_radius), positive inside the sphere and
        negative outside. A fixed term, not a parameter: the field learns the difference from a
        sphere instead of starting from (and settling in) an opaque wall (docs/METHOD.md §4).
        density_scale multiplies the SIREN's density head: at its initial scale and a GAN's learning
        rate the head needs thousands of steps to make a surface opaque at 16 px (docs/EXPERIMENTS.md,
        "Critters"). With sdf_beta > 0 the scaled head moves a signed distance instead (_sdf_density)."""
        if self.density_scale != 1.0:
            sigma = sigma * self.density_scale
        if self.sdf_beta:
            return self._sdf_density(sigma, points)
        if not self.has_sphere_prior:
            return sigma
        distance = torch.linalg.vector_norm(points, dim=-1)
        return sigma + self.sphere_prior_density * (1 - distance / self.sphere_prior_radius)

    def _sdf_density(self, head: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """sdf_beta > 0 (VolSDF, Yariv et al. 2021): the signed distance d = |x| - sphere_prior_radius - head
        (head: the density head times density_scale, so that more density is more inside), and the density
        (1 / beta) * Laplace CDF(-d / beta): 1 / beta well inside, 0 well outside, half of it on the surface.
        A surface then turns opaque within a few beta along a ray, where a raw density must grow large.
        Without a sphere prior (its radius or density 0, e.g. the synthetic metric's floor) d = |x| - head."""
        radius = self.sphere_prior_radius if self.has_sphere_prior else 0.0
        distance = torch.linalg.vector_norm(points, dim=-1) - radius - head
        scaled = distance / self.sdf_beta
        is_inside = scaled <= 0
        # each branch's exponent kept <= 0 (no overflow in the branch not taken), with its gradient on the surface
        exponent = torch.where(is_inside, scaled, -scaled)
        half_tail = 0.5 * torch.exp(exponent)
        return torch.where(is_inside, 1 - half_tail, half_tail) / self.sdf_beta

    def _query_field(self, codes: LatentCodes, points, directions, max_batch_size: Optional[int]):
        """SIREN on points (n, M, 3) with directions (n, M, 3), plus the sphere prior on the
        density; chunked so that at most `max_batch_size` points go through the network at once."""
        n, num_points = points.shape[:2]
        field_chunk = None if torch.is_grad_enabled() else self.siren.points_per_no_grad_chunk(points.device)
        if field_chunk is not None:
            # Nothing is kept for backward, so the field may run every layer on one small chunk
            # at a time (on CPU its (chunk, H) activations are then reused heap memory).
            max_batch_size = min(max_batch_size or field_chunk, field_chunk)
        if max_batch_size is None or n * num_points <= max_batch_size:
            rgb, sigma, feats = self.siren(points, codes.frequencies, codes.phases, directions)
        else:
            chunk = max(1, max_batch_size // n)
            outs = [self.siren(points[:, i:i + chunk], codes.frequencies, codes.phases, directions[:, i:i + chunk])
                    for i in range(0, num_points, chunk)]
            rgb, sigma, feats = (torch.cat(parts, dim=1) for parts in zip(*outs))
        return rgb, self._with_prior(sigma, points), feats

    def render_view(self, codes: LatentCodes, cam2world: torch.Tensor, options: RenderOptions,
                    draws: Optional[ViewDraws] = None, max_batch_size: Optional[int] = None,
                    generator: Optional[torch.Generator] = None) -> RenderedView:
        """Cast rays from the cameras, query the field, integrate; maps at S x S.

        `draws` jitter the depth samples and add density noise (training); without them the
        samples are evenly spaced and noise-free (inference). `generator` only drives
        hierarchical sampling's extra depths.
        """
        rays = options.rays
        n, size, steps = cam2world.shape[0], rays.img_size, rays.num_steps
        points, ray_directions, depths = rays_for_cameras(cam2world, rays, draws.jitter if draws else None)
        view_directions = ray_directions  # what the colour branch sees
        if options.lock_view_dependence:
            view_directions = torch.zeros_like(ray_directions)
            view_directions[..., 2] = -1
        num_rays = ray_directions.shape[1]

        def query(sample_points, sample_count):
            sample_dirs = view_directions[:, :, None, :].expand(n, num_rays, sample_count, 3)
            rgb, sigma, feats = self._query_field(
                codes, sample_points.reshape(n, -1, 3), sample_dirs.reshape(n, -1, 3), max_batch_size)
            # back to (n, R, N, .)
            return (rgb.reshape(n, num_rays, sample_count, 3), sigma.reshape(n, num_rays, sample_count),
                    feats.reshape(n, num_rays, sample_count, -1))

        rgb, sigma, feats = query(points, steps)
        if options.hierarchical_sample:
            with torch.no_grad():
                coarse = integrate(full_precision(rgb), full_precision(sigma), depths,
                                   options=replace(options.integration, nerf_noise=0.0))
            fine_depths = importance_depths(depths, coarse.weights, steps, deterministic=draws is None,
                                            generator=generator)
            fine_points = cam2world[:, None, None, :3, 3] + fine_depths[..., None] * ray_directions[:, :, None, :]
            fine_rgb, fine_sigma, fine_feats = query(fine_points, steps)
            depths, order = torch.sort(torch.cat([depths, fine_depths], dim=-1), dim=-1)
            rgb = torch.cat([rgb, fine_rgb], dim=-2).gather(-2, order[..., None].expand(-1, -1, -1, 3))
            sigma = torch.cat([sigma, fine_sigma], dim=-1).gather(-1, order)
            feats = torch.cat([feats, fine_feats], dim=-2).gather(
                -2, order[..., None].expand(-1, -1, -1, feats.shape[-1]))
        noise = draws.density_noise if draws else None
        result = integrate(rgb, sigma, depths, feats, options.integration, noise=noise)
        # (n, S*S, C) -> (n, C, S, S)
        to_map = lambda x: x.reshape(n, size, size, -1).permute(0, 3, 1, 2)
        return RenderedView(to_map(result.rgb), to_map(result.features), result.depth.reshape(n, size, size),
                            cam2world, result.opacity.reshape(n, size, size))

    @staticmethod
    def sample_draws(n: int, options: RenderOptions, device="cpu",
                     generator: Optional[torch.Generator] = None) -> ForwardDraws:
        """The random numbers of a training forward for n latents: per view a pose, depth jitter
        and (when options.integration.nerf_noise > 0) density noise, primary view first; then
        one mixup ratio per sample."""
        rays = options.rays
        num_rays = rays.img_size ** 2
        samples = rays.num_steps * (2 if options.hierarchical_sample else 1)  # noise for the merged samples

        def view() -> ViewDraws:
            yaw, pitch = sample_poses(n, options.pose, device=device, generator=generator)
            jitter = jitter_draws(n, num_rays, rays.num_steps, device, generator)
            noise = None
            if options.integration.nerf_noise > 0:
                noise = torch.randn((n, num_rays, samples), device=device, generator=generator)
            return ViewDraws(yaw, pitch, jitter, noise)

        primary = view()
        if not options.stereo_auxiliary:
            return ForwardDraws(primary, None, None)
        aux = view()
        return ForwardDraws(primary, aux, torch.rand((n,), device=device, generator=generator))

    def forward(self, z: torch.Tensor, alpha: float, options: RenderOptions, draws: Optional[ForwardDraws] = None,
                generator: Optional[torch.Generator] = None) -> GeneratorOutput:
        """Training forward: primary view, auxiliary view, stereo warp + mixup, decode.

        `draws` are this forward's random numbers (default: `sample_draws` from `generator`,
        or torch's global RNG).
        """
        if draws is None:
            draws = self.sample_draws(z.shape[0], options, z.device, generator)
        dtype = next(self.parameters()).dtype  # the poses' dtype: float64 in a float64 run
        codes = self.mapping(z)
        yaw, pitch = draws.primary.yaw.to(dtype), draws.primary.pitch.to(dtype)
        primary_cam = cam2world_from_poses(yaw, pitch)
        primary = self.render_view(codes, primary_cam, options, draws.primary, generator=generator)
        features, rgb, aux, warped_aux_rgb, ratio = primary.features, primary.rgb, None, None, None
        if options.stereo_auxiliary:
            aux_cam = cam2world_from_poses(draws.aux.yaw.to(dtype), draws.aux.pitch.to(dtype))
            aux = self.render_view(codes, aux_cam, options, draws.aux, generator=generator)
            field_image = options.image_source == "nerf"
            # The field's image mixes RGB only: its features need no warp (each channel warps on its own).
            warped, _ = stereo_warp(aux.rgb if field_image else torch.cat([aux.features, aux.rgb], dim=1),
                                    primary.depth, primary_cam, aux_cam, options.rays.fov, options.warp_projection)
            warped_aux_rgb = warped[:, -3:]
            ratio = draws.mixup.to(dtype) * options.max_mixup_ratio
            if field_image:
                rgb = stereo_mixup(primary.rgb, warped_aux_rgb, ratio)
            else:
                features = stereo_mixup(primary.features, warped[:, :-3], ratio)
        image = self.image_from(features, rgb, codes, options, alpha)
        pose = torch.stack([pitch, yaw], dim=-1)
        return GeneratorOutput(image, pose, primary, aux, warped_aux_rgb, ratio)

    def image_from(self, features: torch.Tensor, rgb: torch.Tensor, codes: LatentCodes, options: RenderOptions,
                   alpha: float) -> torch.Tensor:
        """The image (n, 3, out, out) in about [-1, 1] from a view's features (n, H, S, S) and RGB (n, 3, S, S)
        in [0, 1]: decoded (the published path), or the RGB itself (options.image_source "nerf"), bilinearly
        resized to the output size when it differs."""
        if options.image_source == "decoder":
            return self.decoder(features, codes.style, options.output_size, alpha)
        image = rgb * 2 - 1
        if image.shape[-1] != options.output_size:
            image = F.interpolate(image, size=(options.output_size, options.output_size), mode="bilinear",
                                  align_corners=False, antialias=image.shape[-1] > options.output_size)
        return image

    def render_codes(self, codes: LatentCodes, options: RenderOptions, cam2world: Optional[torch.Tensor] = None,
                     alpha: float = 1.0, max_batch_size: Optional[int] = 2400000,
                     generator: Optional[torch.Generator] = None) -> StagedOutput:
        """Inference rendering of given codes: no auxiliary view, no jitter."""
        n = codes.style.shape[0]
        if cam2world is None:
            cam2world = cam2world_from_poses(*sample_poses(n, options.pose, device=codes.style.device,
                                                           generator=generator))
        view = self.render_view(codes, cam2world.to(codes.style.device), options,
                                max_batch_size=max_batch_size, generator=generator)
        image = self.image_from(view.features, view.rgb, codes, options, alpha)
        return StagedOutput(image, view.depth, view.rgb, view.cam2world, view.opacity)

    @torch.no_grad()
    def staged_forward(self, z: torch.Tensor, options: RenderOptions, psi: float = 1.0,
                       max_batch_size: Optional[int] = 2400000, cam2world: Optional[torch.Tensor] = None,
                       alpha: float = 1.0, generator: Optional[torch.Generator] = None) -> StagedOutput:
        """Inference: truncated codes (psi), chunked field queries; returns image and depth."""
        return self.render_codes(self.truncated_mapping(z, psi), options, cam2world, alpha, max_batch_size,
                                 generator)

    @torch.no_grad()
    def style_mix_forward(self, z_geometry: torch.Tensor, z_style: torch.Tensor, options: RenderOptions,
                          psi: float = 1.0, **kwargs) -> StagedOutput:
        """NeRF (FiLM) codes from z_geometry, 2D decoder style from z_style."""
        geometry, style = self.truncated_mapping(z_geometry, psi), self.truncated_mapping(z_style, psi)
        return self.render_codes(LatentCodes(geometry.frequencies, geometry.phases, style.style), options, **kwargs)

    @torch.no_grad()
    def interpolate_forward(self, z1: torch.Tensor, z2: torch.Tensor, weight: float, options: RenderOptions,
                            psi: float = 1.0, **kwargs) -> StagedOutput:
        """Render the lerp (weight 0 -> z1, 1 -> z2) of the truncated codes of z1 and z2."""
        codes = self.truncated_mapping(z1, psi).lerp(self.truncated_mapping(z2, psi), weight)
        return self.render_codes(codes, options, **kwargs)

    @torch.no_grad()
    def query_field(self, codes: LatentCodes, points: torch.Tensor, directions: torch.Tensor,
                    max_batch_size: Optional[int] = 2400000):
        """The field at arbitrary points (n, M, 3) seen along directions (n, M, 3), without grad:
        (rgb (n, M, 3) in [0, 1], raw density with the sphere prior (n, M), features (n, M, H))."""
        return self._query_field(codes, points, directions, max_batch_size)

    @torch.no_grad()
    def density_grid(self, z: Optional[torch.Tensor], resolution: int, psi: float = 1.0, half_extent: float = 0.12,
                     max_batch_size: Optional[int] = 2400000, codes: Optional[LatentCodes] = None) -> torch.Tensor:
        """Raw density (the sphere prior included) on a resolution^3 cube grid spanning
        [-half_extent, half_extent]^3, of the truncated codes of z or, when given, of `codes`
        (then z and psi are not used).

        Returns (n, resolution, resolution, resolution) indexed [x, y, z]. Points are made
        and queried a chunk at a time and only the density is kept, so memory is the
        output (4 bytes per voxel and latent) plus one chunk.
        """
        codes = self.truncated_mapping(z, psi) if codes is None else codes
        n, device = codes.style.shape[0], codes.style.device
        axis = torch.linspace(-half_extent, half_extent, resolution, device=device)
        num_points = resolution ** 3
        chunk = num_points if max_batch_size is None else max(1, max_batch_size // n)
        sigma = torch.empty(n, num_points, device=device)
        for start in range(0, num_points, chunk):
            index = torch.arange(start, min(num_points, start + chunk), device=device)
            # flat index -> (x, y, z) grid indices, z fastest: the [x, y, z] memory layout
            points = torch.stack([axis[index // resolution ** 2], axis[index // resolution % resolution],
                                  axis[index % resolution]], dim=-1)                       # (m, 3)
            directions = torch.zeros_like(points)
            directions[:, 2] = -1
            _, sigma_chunk, _ = self._query_field(codes, points.expand(n, -1, 3), directions.expand(n, -1, 3),
                                                  max_batch_size=None)
            sigma[:, start:start + index.shape[0]] = sigma_chunk                             # (n, m)
        return sigma.reshape(n, resolution, resolution, resolution)


def sdf_beta_at(metadata: Mapping, step: Optional[int] = None) -> float:
    """The signed-distance width at a training step (0: the raw density). With sdf_beta_start > 0 it narrows
    geometrically from sdf_beta_start to sdf_beta over the first sdf_beta_anneal_steps steps: a narrow width
    from the first step can fill the frame with an opaque wall, deep inside which the density's gradient
    vanishes (docs/EXPERIMENTS.md, "A density from a signed distance"). A fixed path, not a learned width
    (VolSDF's), so that a run resumes exactly and a checkpoint's width follows from its step.
    `step` None: the width after the anneal, the trained generator's."""
    end, start = float(metadata["sdf_beta"]), float(metadata["sdf_beta_start"])
    if not (end > 0 and start > 0) or step is None:
        return end
    progress = min(1.0, max(0, step) / int(metadata["sdf_beta_anneal_steps"]))
    return start * (end / start) ** progress


def build_generator(metadata: Mapping, step: Optional[int] = None) -> ImplicitGenerator3d:
    """The generator a curriculum asks for (model, latent_dim, hidden_dim, decoder_channels, sphere prior),
    with its signed-distance width at training step `step` (sdf_beta_at; None: after any anneal)."""
    generator_name = metadata["generator"]
    if generator_name != "ImplicitGenerator3d":
        raise ValueError(f"unknown generator {generator_name!r}; available: ['ImplicitGenerator3d']")
    return ImplicitGenerator3d(siren=metadata["model"],
                               z_dim=int(metadata["latent_dim"]),
                               hidden_dim=int(metadata["hidden_dim"]),
                               decoder_channels=tuple(metadata["decoder_channels"]),
                               sphere_prior_radius=float(metadata["sphere_prior_radius"]),
                               sphere_prior_density=float(metadata["sphere_prior_density"]),
                               density_scale=float(metadata["density_scale"]),
                               sdf_beta=sdf_beta_at(metadata, step))
