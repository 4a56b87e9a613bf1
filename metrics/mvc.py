"""`mvc`: multi-view consistency of a generator (docs/METHOD.md §10).

Two views of the same z, a yaw step apart; view b is warped into view a with view a's
depth (`generators.warp.stereo_warp`) and the photometric error over valid pixels is
reported (L1 on [0, 1] images, and PSNR), for the NeRF images and for the final
upsampled images, with the fraction of opaque NeRF pixels beside it (an empty NeRF is
trivially "consistent"). Entry points: `multiview_consistency`, `warp_consistency`.
"""
from __future__ import annotations

import math
from typing import Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F

from generators.cameras import PoseDistribution, cam2world_from_poses
from generators.generators import RenderOptions
from generators.inference import RENDER_BATCH_SIZE, render_in_batches
from generators.warp import stereo_warp
from metrics.metric_utils import OPACITY_THRESHOLD, latents

MVC_YAW_STEP = 0.3                    # radians between the two views of the mvc metric
MVC_MIN_OPAQUE = 0.05                 # below this opaque-pixel fraction mvc says nothing about 3D


def _warp_errors(image_a, image_b, depth_a, cam_a, cam_b, fov, mask=None):
    """Sums behind `warp_consistency`: (sum |d|, sum d^2, number of valid values, valid mask)."""
    image_a, image_b = image_a.float(), image_b.float()
    size = image_a.shape[-1]
    depth_a = depth_a.float()
    if depth_a.shape[-1] != size:  # NeRF depth (n, S, S) -> (n, R, R)
        depth_a = F.interpolate(depth_a[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    # "pinhole", the exact projection of the cameras the views were rendered with: the metric measures
    # the views' consistency, not the published warp's half-pixel corner error (generators/warp.py)
    warped, valid = stereo_warp(image_b, depth_a, cam_a.float().to(image_a.device),
                                cam_b.float().to(image_a.device), fov, "pinhole")  # (n, C, R, R), (n, R, R)
    if mask is not None:
        valid = valid & mask.to(valid.device).bool()
    difference = (warped - image_a) * valid[:, None]
    count = float(valid.sum()) * image_a.shape[1]
    return float(difference.abs().sum()), float(difference.pow(2).sum()), count, valid


def _scores(abs_sum: float, sq_sum: float, count: float):
    """(mean L1, PSNR) from error sums; NaN without valid pixels."""
    if count == 0:
        return float("nan"), float("nan")
    return float(abs_sum / count), float(10 * math.log10(1 / max(sq_sum / count, 1e-10)))


def warp_consistency(image_a: torch.Tensor, image_b: torch.Tensor, depth_a: torch.Tensor, cam_a: torch.Tensor,
                     cam_b: torch.Tensor, fov: float, mask: Optional[torch.Tensor] = None) -> dict:
    """Photometric error between view a and view b warped into view a with a's depth.

    image_a, image_b (n, 3, R, R) in [0, 1]; depth_a (n, S, S) distance along the unit
    ray (bilinearly resized to R when S != R); cam_a, cam_b (n, 4, 4) camera-to-world;
    fov in degrees; mask (n, R, R) bool restricts the pixels of view a (e.g. the
    foreground). Pixels count when they land inside view b's image, in front of it.
    Returns dict(l1 = mean |warped b - a| over valid pixels and channels,
    psnr = 10 log10(1 / MSE) over the same, valid_fraction of view a's pixels).
    Occlusions are not modelled: a small yaw step keeps them rare.
    """
    abs_sum, sq_sum, count, valid = _warp_errors(image_a, image_b, depth_a, cam_a, cam_b, fov, mask)
    l1, psnr = _scores(abs_sum, sq_sum, count)
    return {"l1": l1, "psnr": psnr, "valid_fraction": float(valid.float().mean())}


def multiview_consistency(generator, metadata: Mapping, num_samples: int = 256, psi: float = 1.0,
                          yaw_step: float = MVC_YAW_STEP, batch_size: int = RENDER_BATCH_SIZE,
                          max_batch_size: Optional[int] = None, seed: int = 0, alpha: float = 1.0,
                          device=None) -> dict:
    """The `mvc` metric: two views of each z at h_mean -/+ yaw_step/2 (pitch v_mean).

    Returns mvc_nerf_l1/psnr (NeRF RGB warped with its own depth at S) and
    mvc_image_l1/psnr (final images mapped to [0, 1], depth bilinearly upsampled to
    the output size), pooled over the valid pixels of all samples,
    mvc_nerf_valid/mvc_image_valid (the fractions of valid pixels), mvc_nerf_opaque
    (the fraction of opaque NeRF pixels) and, when that is below MVC_MIN_OPAQUE, mvc_warning.
    """
    options = RenderOptions.from_metadata(metadata, evaluation=True)
    pose = PoseDistribution.from_metadata(metadata, evaluation=True)
    z = latents(num_samples, generator.z_dim, metadata, seed)
    pitch = torch.full((num_samples,), pose.v_mean)
    cam_a, cam_b = (cam2world_from_poses(torch.full((num_samples,), pose.h_mean + offset), pitch)
                    for offset in (-yaw_step / 2, yaw_step / 2))  # (n, 4, 4) each
    render = dict(psi=psi, alpha=alpha, batch_size=batch_size, max_batch_size=max_batch_size, device=device)
    totals = {key: np.zeros(4) for key in ("nerf", "image")}  # sum |d|, sum d^2, valid values, all values
    opaque_pixels = total_pixels = 0
    batches = zip(render_in_batches(generator, z, cam_a, options, **render),
                  render_in_batches(generator, z, cam_b, options, **render))
    for view_a, view_b in batches:
        pairs = {"nerf": (view_a.nerf_rgb, view_b.nerf_rgb),
                 "image": ((view_a.image.clamp(-1, 1) + 1) / 2, (view_b.image.clamp(-1, 1) + 1) / 2)}
        for key, (image_a, image_b) in pairs.items():
            abs_sum, sq_sum, count, _ = _warp_errors(image_a, image_b, view_a.depth, view_a.cam2world,
                                                     view_b.cam2world, options.rays.fov)
            totals[key] += (abs_sum, sq_sum, count, image_a.numel())
        opaque_pixels += int((view_a.opacity > OPACITY_THRESHOLD).sum())
        total_pixels += view_a.opacity.numel()

    results = {}
    for key, (abs_sum, sq_sum, count, total) in totals.items():
        results[f"mvc_{key}_l1"], results[f"mvc_{key}_psnr"] = _scores(abs_sum, sq_sum, count)
        results[f"mvc_{key}_valid"] = float(count / total) if total else 0.0
    results["mvc_nerf_opaque"] = opaque_pixels / max(total_pixels, 1)
    if results["mvc_nerf_opaque"] < MVC_MIN_OPAQUE:
        results["mvc_warning"] = (f"only {100 * results['mvc_nerf_opaque']:.1f}% of NeRF pixels are opaque "
                                  f"(opacity > {OPACITY_THRESHOLD}): a nearly empty field is trivially "
                                  f"consistent, so these mvc scores say nothing about 3D structure")
    return results


def summary_lines(results: Mapping) -> list:
    """Readable lines for the mvc keys present in `results`."""
    if "mvc_nerf_l1" not in results:
        return []
    lines = [f"mvc, {name:<14} L1 {results[f'mvc_{key}_l1']:.4f}  PSNR {results[f'mvc_{key}_psnr']:.2f} dB  "
             f"({100 * results[f'mvc_{key}_valid']:.0f} % of pixels valid)"
             for key, name in (("nerf", "NeRF image"), ("image", "final image"))]
    lines.append(f"mvc, opaque NeRF pixels {100 * results['mvc_nerf_opaque']:.1f} %  "
                 f"({results['num_mvc']} latents, yaw step {results['mvc_yaw_step']:g} rad; keys mvc_*)")
    return lines
