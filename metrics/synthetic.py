"""`synthetic`: ground truth for a generator trained on the embedded `Synthetic` heads (docs/METHOD.md §10).

Needs no download. At poses drawn from the training distribution it compares generated
heads with real heads at the same poses: silhouette IoU (NeRF opacity > 0.5 against the
true mask), depth error where both are foreground, and KID on 16x16 pixels for
appearance. It also reports the same scores for real heads against other real heads (the
ceiling) and for an untrained generator of the same architecture (the floor), and how much
of that gap the generator closes. Entry points: `synthetic_scores`, `summary_lines`.
"""
from __future__ import annotations

import json
import math
from typing import Mapping, NamedTuple, Optional

import numpy as np
import torch
import torch.nn.functional as F

from generators.cameras import camera_ray_directions
from synthetic_heads import PROCEDURAL_DATASETS, ray_ellipsoid_depths
from generators.cameras import cam2world_from_poses
from generators.generators import RenderOptions, build_generator
from generators.inference import RENDER_BATCH_SIZE, render_in_batches
from metrics.fid_kid import kid
from metrics.metric_utils import OPACITY_THRESHOLD, eval_poses, latents

SYNTHETIC_KID_SIZE = 16               # appearance is compared on 16x16 pixel vectors


class HeadMaps(NamedTuple):
    """What the synthetic metric compares, for n heads at n poses."""

    mask: torch.Tensor   # (n, S, S) bool foreground
    depth: torch.Tensor  # (n, S, S) distance along the unit ray
    image: torch.Tensor  # (n, 3, R, R) in [0, 1]


def _cat_maps(parts) -> HeadMaps:
    return HeadMaps(*(torch.cat(fields) for fields in zip(*parts)))


def real_head_maps(metadata: Mapping, yaw: torch.Tensor, pitch: torch.Tensor, first_index: int = 0) -> HeadMaps:
    """Synthetic heads first_index, first_index + 1, ... rendered exactly at the given poses."""
    options = RenderOptions.from_metadata(metadata, evaluation=True)
    img_size, output_size = options.rays.img_size, options.output_size
    dataset = procedural_dataset(metadata, img_size, length=first_index + len(yaw))
    parts = []
    for offset, (y, p) in enumerate(zip(yaw.tolist(), pitch.tolist())):
        view = dataset.render(first_index + offset, y, p)
        image = view["image"] if output_size == img_size else \
            dataset.render(first_index + offset, y, p, img_size=output_size)["image"]
        parts.append(HeadMaps(view["mask"][None], view["depth"][None], (image[None] + 1) / 2))
    return _cat_maps(parts)


def procedural_dataset(metadata: Mapping, img_size: int, length: int):
    """The curriculum's procedural data set (Synthetic heads, Critters) at img_size, `length` images."""
    return PROCEDURAL_DATASETS[metadata["dataset"]](img_size, metadata=metadata, length=length,
                                                   seed=int(metadata["synthetic_seed"]))


def mean_object_maps(metadata: Mapping, yaw: torch.Tensor, pitch: torch.Tensor) -> HeadMaps:
    """The family's average member (every random draw at its middle) at each pose: a fixed shape that
    knows the family but not the object."""
    options = RenderOptions.from_metadata(metadata, evaluation=True)
    dataset = procedural_dataset(metadata, options.rays.img_size, length=1)
    shape = dataset.SHAPE.mean()
    parts = []
    for y, p in zip(yaw.tolist(), pitch.tolist()):
        view = dataset.render_shape(shape, y, p, options.rays.img_size)
        parts.append(HeadMaps(view["mask"][None], view["depth"][None], (view["image"][None] + 1) / 2))
    return _cat_maps(parts)


# The fitted baselines' grids: semi-axes (world units) of spheres and axis-aligned ellipsoids centred
# on the origin, where every procedural object's bounding box is centred. Every object fits in [-0.12, 0.12]^3.
BASELINE_RADII = torch.linspace(0.02, 0.12, 21, dtype=torch.float64)
BASELINE_AXES = torch.linspace(0.02, 0.12, 11, dtype=torch.float64)


def _fitted_ellipsoids(metadata: Mapping, cam2world: torch.Tensor, radii: torch.Tensor,
                       reference: HeadMaps) -> tuple:
    """IoU and depth_l1_fg (each (K,)) of each of K fixed ellipsoids with semi-axes radii (K, 3), centred on
    the origin, rendered at every camera like the reference (empty rays at ray_end)."""
    options = RenderOptions.from_metadata(metadata, evaluation=True)
    size, ray_end = options.rays.img_size, float(metadata["ray_end"])
    directions = camera_ray_directions(size, options.rays.fov).double()     # (S*S, 3) camera space
    centres = torch.zeros_like(radii)
    inter = torch.zeros(len(radii), dtype=torch.float64)
    union = torch.zeros_like(inter)
    depth_error = torch.zeros_like(inter)
    for camera, mask, depth in zip(cam2world.double(), reference.mask, reference.depth):
        t = ray_ellipsoid_depths(camera[:3, 3], directions @ camera[:3, :3].T, centres, radii)  # (S*S, K)
        hit = torch.isfinite(t)
        truth = mask.reshape(-1, 1)
        inter += (hit & truth).sum(0)
        union += (hit | truth).sum(0)
        rendered = torch.where(hit, t, torch.full_like(t, ray_end))
        depth_error += ((rendered - depth.reshape(-1, 1).double()).abs() * truth).sum(0)
    return inter / union, depth_error / reference.mask.sum()


def generated_head_maps(generator, metadata: Mapping, z: torch.Tensor, cam2world: torch.Tensor,
                        psi: float = 1.0, batch_size: int = RENDER_BATCH_SIZE, max_batch_size: Optional[int] = None,
                        alpha: float = 1.0, device=None) -> HeadMaps:
    """Generated silhouettes (NeRF opacity > 0.5), depths and final images at the given cameras."""
    options = RenderOptions.from_metadata(metadata, evaluation=True)
    parts = [HeadMaps((out.opacity > OPACITY_THRESHOLD).cpu(), out.depth.float().cpu(),
                      ((out.image.float().clamp(-1, 1) + 1) / 2).cpu())
             for out in render_in_batches(generator, z, cam2world, options, psi=psi, alpha=alpha,
                                          batch_size=batch_size, max_batch_size=max_batch_size, device=device)]
    return _cat_maps(parts)


def _pixel_features(images: torch.Tensor) -> np.ndarray:
    """(n, 3, R, R) in [0, 1] -> (n, 3 * 16 * 16) antialiased 16x16 pixels in [-1, 1]."""
    small = F.interpolate(images.float(), size=(SYNTHETIC_KID_SIZE, SYNTHETIC_KID_SIZE), mode="bilinear",
                          antialias=True, align_corners=False)
    return (small * 2 - 1).flatten(1).numpy()


def compare_depth(candidate: HeadMaps, reference: HeadMaps) -> float:
    """Mean |depth difference| over the reference's foreground (compare_head_maps' depth_l1_fg), alone."""
    return float((candidate.depth - reference.depth).abs()[reference.mask].mean())


def compare_head_maps(candidate: HeadMaps, reference: HeadMaps, seed: int = 0) -> dict:
    """iou: silhouette IoU pooled over all pixels. depth_l1: mean |depth difference| where both
    are foreground (NaN when they never are). depth_l1_fg: the same over every pixel of the
    reference's foreground; the candidate's rendered depth counts there even where it is empty
    (an empty ray renders at ray_end, like real background), so it is defined for any generator
    and charges missing geometry. kid: pixel KID. opaque: candidate's foreground fraction."""
    both = candidate.mask & reference.mask
    union = candidate.mask | reference.mask
    difference = (candidate.depth - reference.depth).abs()
    kid_value, _ = kid(_pixel_features(candidate.image), _pixel_features(reference.image), num_subsets=50,
                       seed=seed)
    return {"iou": float(both.sum() / union.sum()) if union.any() else float("nan"),
            "depth_l1": float(difference[both].mean()) if both.any() else float("nan"),
            "depth_l1_fg": compare_depth(candidate, reference),
            "kid": kid_value, "opaque": float(candidate.mask.float().mean())}


def _gap_closed(value: float, floor: float, ceiling: float) -> float:
    """(value - floor) / (ceiling - floor): 0 at the floor, 1 at the ceiling."""
    if not all(math.isfinite(v) for v in (value, floor, ceiling)) or ceiling == floor:
        return float("nan")
    return (value - floor) / (ceiling - floor)


def _calibration(metadata: Mapping, yaw, pitch, z, cam2world, render: dict, seed: int, reference: HeadMaps):
    """The scores of the baselines against the reference heads: real heads against other real heads
    (_ceiling), an untrained generator without a sphere prior (_floor) and, when the curriculum
    has a prior, the same untrained weights with it (_prior)."""
    num_samples = len(yaw)
    with torch.random.fork_rng(devices=[]):  # the baselines' init must not move the caller's RNG
        torch.manual_seed(seed)
        untrained = build_generator(dict(metadata, sphere_prior_density=0.0)).to(render["device"]).eval()
        with_prior = build_generator(metadata)
    calibration = {
        "_ceiling": compare_head_maps(real_head_maps(metadata, yaw, pitch, first_index=num_samples), reference,
                                      seed),
        "_floor": compare_head_maps(generated_head_maps(untrained, metadata, z, cam2world, **render), reference,
                                    seed)}
    if with_prior.has_sphere_prior:
        with_prior.load_state_dict(untrained.state_dict())
        with_prior = with_prior.to(render["device"]).eval()
        calibration["_prior"] = compare_head_maps(generated_head_maps(with_prior, metadata, z, cam2world, **render),
                                                  reference, seed)
    return calibration


def _trivial_baselines(reference: HeadMaps, metadata: Mapping, yaw: torch.Tensor, pitch: torch.Tensor,
                       cam2world: torch.Tensor) -> dict:
    """What a score does not prove, each answer fitted at its best to these very poses: the IoU of fog
    and of one fixed blob, the depth error of a wall, the scores of the best single sphere and the best
    single ellipsoid, and of the family's mean object. The best of them is what a generator must beat
    for its shape to count as learned (synthetic_*_best_trivial)."""
    # A field that is opaque everywhere already matches the heads' area this well: IoU near
    # this value with synthetic_opaque near 1 means fog, not silhouettes.
    results = {"synthetic_iou_fog": float(reference.mask.float().mean())}
    # One blob where most heads are, whatever the head and pose: silhouettes that do not beat
    # this follow neither the head nor the camera.
    blob = (reference.mask.float().mean(0) > 0.5).expand_as(reference.mask)
    results["synthetic_iou_blob"] = float((blob & reference.mask).sum() / (blob | reference.mask).sum())
    # Likewise a flat wall at the best single depth (the median of the true foreground depths):
    # depth_l1_fg near or above this means no head shape in the depth, only its distance.
    foreground_depth = reference.depth[reference.mask]
    results["synthetic_depth_l1_plane"] = float((foreground_depth - foreground_depth.median()).abs().mean())
    # One fixed sphere, one fixed axis-aligned ellipsoid, each centred on the origin, the best of a grid
    # (for IoU and for depth separately, which favours the baseline).
    sphere_iou, sphere_depth = _fitted_ellipsoids(metadata, cam2world, BASELINE_RADII[:, None].expand(-1, 3),
                                                  reference)
    axes = torch.cat([torch.cartesian_prod(BASELINE_AXES, BASELINE_AXES, BASELINE_AXES),  # (K, 3), the spheres too
                      BASELINE_RADII[:, None].expand(-1, 3)])
    ellipsoid_iou, ellipsoid_depth = _fitted_ellipsoids(metadata, cam2world, axes, reference)
    results.update(synthetic_iou_sphere=float(sphere_iou.max()), synthetic_depth_l1_sphere=float(sphere_depth.min()),
                   synthetic_iou_ellipsoid=float(ellipsoid_iou.max()),
                   synthetic_depth_l1_ellipsoid=float(ellipsoid_depth.min()))
    mean_object = compare_head_maps(mean_object_maps(metadata, yaw, pitch), reference)
    results.update(synthetic_iou_mean_object=mean_object["iou"],
                   synthetic_depth_l1_mean_object=mean_object["depth_l1_fg"])
    results["synthetic_iou_best_trivial"] = max(results[f"synthetic_iou_{name}"] for name in TRIVIAL_IOU)
    results["synthetic_depth_l1_best_trivial"] = min(results[f"synthetic_depth_l1_{name}"] for name in TRIVIAL_DEPTH)
    return results


TRIVIAL_IOU = ("fog", "blob", "sphere", "ellipsoid", "mean_object")
TRIVIAL_DEPTH = ("plane", "sphere", "ellipsoid", "mean_object")


def _require_procedural(metadata: Mapping) -> None:
    if metadata["dataset"] not in PROCEDURAL_DATASETS:
        raise ValueError(f"the synthetic metric needs a generator trained on a procedural dataset "
                         f"({', '.join(PROCEDURAL_DATASETS)}), not {metadata.get('dataset')!r}")


# What depends only on the stage and the sampling, not on the generator's weights, computed once per process
# (training evaluates repeatedly; `synthetic` and `synthetic_aligned` share the truth). One entry each.
_SYNTHETIC_TRUTH: dict = {}        # {key: (reference HeadMaps, trivial baselines)}
_SYNTHETIC_CALIBRATION: dict = {}  # {key: ceiling, floor and prior scores}


def _cache_key(metadata: Mapping, *sampling) -> str:
    return json.dumps([sorted((str(k), str(v)) for k, v in metadata.items()), *sampling])


def _truth(metadata: Mapping, yaw: torch.Tensor, pitch: torch.Tensor, num_samples: int, seed: int) -> tuple:
    """(the true objects at the poses eval_poses(num_samples, metadata, seed) drew, the trivial baselines
    fitted to them)."""
    key = _cache_key(metadata, num_samples, seed)
    if key not in _SYNTHETIC_TRUTH:
        _SYNTHETIC_TRUTH.clear()
        reference = real_head_maps(metadata, yaw, pitch)
        _SYNTHETIC_TRUTH[key] = reference, _trivial_baselines(reference, metadata, yaw, pitch,
                                                              cam2world_from_poses(yaw, pitch))
    return _SYNTHETIC_TRUTH[key]


def synthetic_scores(generator, metadata: Mapping, num_samples: int = 256, psi: float = 1.0,
                     batch_size: int = RENDER_BATCH_SIZE, max_batch_size: Optional[int] = None, seed: int = 0,
                     alpha: float = 1.0, device=None) -> dict:
    """The `synthetic` metric: `generator` against the true heads at training poses, calibrated.

    Real heads 0..n-1 are rendered at n poses drawn (with `seed`) from the training pose
    distribution. The generator renders n latents at the same poses. The same comparison
    is made for real heads n..2n-1 (the ceiling: what a perfect generator of *other*
    heads scores) and for an untrained generator of the same architecture without a sphere
    prior (the floor: a field that has learned nothing and is given nothing).
    Keys: synthetic_{iou,depth_l1,depth_l1_fg,kid,opaque}, the same with _ceiling and _floor,
    and synthetic_{iou,depth,kid}_closed = share of the floor-to-ceiling gap the generator
    closes (depth on depth_l1_fg: an untrained generator has no foreground for depth_l1).
    Trivial baselines say what a score does not prove: synthetic_iou_fog is the IoU of a
    field opaque everywhere (the heads' area fraction), synthetic_iou_blob that of one fixed
    silhouette for every head and pose (the pixels that most heads cover), and
    synthetic_depth_l1_plane the depth error of a flat wall at the best single depth. When
    the curriculum gives the field a sphere prior, the same scores with _prior are those of
    the untrained generator with it: what the prior alone gives, before any training.
    """
    _require_procedural(metadata)
    device = next(generator.parameters()).device if device is None else device
    yaw, pitch = eval_poses(num_samples, metadata, seed)
    cam2world = cam2world_from_poses(yaw, pitch)  # (n, 4, 4)
    z = latents(num_samples, generator.z_dim, metadata, seed)
    render = dict(psi=psi, batch_size=batch_size, max_batch_size=max_batch_size, alpha=alpha, device=device)
    reference, trivial = _truth(metadata, yaw, pitch, num_samples, seed)
    key = _cache_key(metadata, num_samples, seed, psi, alpha)
    if key not in _SYNTHETIC_CALIBRATION:
        _SYNTHETIC_CALIBRATION.clear()
        _SYNTHETIC_CALIBRATION[key] = _calibration(metadata, yaw, pitch, z, cam2world, render, seed, reference)
    calibration = _SYNTHETIC_CALIBRATION[key]
    scores = {"": compare_head_maps(generated_head_maps(generator, metadata, z, cam2world, **render), reference,
                                    seed), **calibration}
    results = {f"synthetic_{name}{suffix}": value
               for suffix, values in scores.items() for name, value in values.items()}
    for name, key in (("iou", "iou"), ("depth", "depth_l1_fg"), ("kid", "kid")):
        results[f"synthetic_{name}_closed"] = _gap_closed(scores[""][key], scores["_floor"][key],
                                                           scores["_ceiling"][key])
    results.update(trivial)
    # Learned shape: beats the best trivial answer (ratio < 1; the rungs ask <= 0.3 and <= 0.5).
    results["synthetic_depth_vs_trivial"] = results["synthetic_depth_l1_fg"] / results["synthetic_depth_l1_best_trivial"]
    # NaN where a trivial answer already scores at or above the ceiling (a family scored against *other*
    # objects at each pose: the mean object's IoU beats real against real), so the IoU cannot show learning
    ceiling = results["synthetic_iou_ceiling"]
    results["synthetic_iou_vs_trivial"] = float("nan") if ceiling <= results["synthetic_iou_best_trivial"] else \
        _gap_closed(results["synthetic_iou"], results["synthetic_iou_best_trivial"], ceiling)
    results["num_synthetic"] = int(num_samples)
    return results


# The aligned score: the search grid of turns about the vertical axis (with and without a mirror image).
ALIGN_TURNS = 24


def turned_maps(render_maps, yaw: torch.Tensor, pitch: torch.Tensor, turn: float, mirror: bool) -> HeadMaps:
    """The views at (yaw, pitch) of an object turned by `turn` about the vertical axis and, with `mirror`, mirrored
    about the plane x = 0, given `render_maps(yaw, pitch)` of the object itself: a turned object seen from yaw is
    the object seen from yaw + turn, and the mirror image seen from yaw is the object seen from pi - yaw, flipped
    left to right (as the data sets' flips label it). For a critter, which heads along x, the mirror swaps head
    and tail; with a half turn it is the critter's own symmetry z -> -z."""
    yaw = yaw + turn
    if not mirror:
        return render_maps(yaw, pitch)
    maps = render_maps(math.pi - yaw, pitch)
    return HeadMaps(maps.mask.flip(-1), maps.depth.flip(-1), maps.image.flip(-1))


def best_alignment(render_maps, reference: HeadMaps, yaw: torch.Tensor, pitch: torch.Tensor,
                   turns: int = ALIGN_TURNS) -> tuple:
    """(turn, mirror) of the grid (`turns` turns, each with and without the mirror image) whose views of the object
    that `render_maps` draws have the lowest depth error over the reference's true foreground."""
    candidates = [(2 * math.pi * k / turns, mirror) for mirror in (False, True) for k in range(turns)]
    errors = [compare_depth(turned_maps(render_maps, yaw, pitch, turn, mirror), reference)
              for turn, mirror in candidates]
    return candidates[int(np.argmin(errors))]


def aligned_synthetic_scores(generator, metadata: Mapping, num_samples: int = 256, psi: float = 1.0,
                             batch_size: int = RENDER_BATCH_SIZE, max_batch_size: Optional[int] = None, seed: int = 0,
                             alpha: float = 1.0, device=None, turns: int = ALIGN_TURNS) -> dict:
    """`synthetic_aligned`: the synthetic metric's IoU and depth error after turning (and mirroring) the generated
    objects as a whole to fit the truth best. Under a pose density that pins the orientation only weakly, a
    generator may learn the object turned against the truth; the plain metric, which compares each view with the
    truth at the same camera, scores that like a blob, this one does not. One turn and mirror for the whole run,
    chosen on the first quarter of the poses by depth error from `turns` turns with and without the mirror image;
    scored on all of them. The trivial baselines are not turned: the sphere, the wall and the blob do not change
    under a turn, and the ellipsoids and the mean object are already aligned with the truth's axes."""
    _require_procedural(metadata)
    device = next(generator.parameters()).device if device is None else device
    yaw, pitch = eval_poses(num_samples, metadata, seed)
    z = latents(num_samples, generator.z_dim, metadata, seed)
    reference, trivial = _truth(metadata, yaw, pitch, num_samples, seed)
    render = dict(psi=psi, batch_size=batch_size, max_batch_size=max_batch_size, alpha=alpha, device=device)

    def render_maps(rows):
        return lambda y, p: generated_head_maps(generator, metadata, z[rows], cam2world_from_poses(y, p), **render)

    search = slice(0, max(1, num_samples // 4))
    turn, mirror = best_alignment(render_maps(search), HeadMaps(*(m[search] for m in reference)), yaw[search],
                                  pitch[search], turns)
    scores = compare_head_maps(turned_maps(render_maps(slice(None)), yaw, pitch, turn, mirror), reference, seed)
    return {"synthetic_aligned_iou": scores["iou"], "synthetic_aligned_depth_l1_fg": scores["depth_l1_fg"],
            "synthetic_aligned_kid": scores["kid"], "synthetic_aligned_turn": turn,
            "synthetic_aligned_mirror": bool(mirror),
            "synthetic_aligned_depth_vs_trivial": scores["depth_l1_fg"] / trivial["synthetic_depth_l1_best_trivial"],
            "synthetic_iou_best_trivial": trivial["synthetic_iou_best_trivial"],
            "synthetic_depth_l1_best_trivial": trivial["synthetic_depth_l1_best_trivial"],
            "num_synthetic": int(num_samples)}


def aligned_summary_lines(results: Mapping) -> list:
    if "synthetic_aligned_iou" not in results:
        return []
    return [f"synthetic, aligned (turned by {math.degrees(results['synthetic_aligned_turn']):.0f} degrees"
            f"{', mirrored' if results['synthetic_aligned_mirror'] else ''}): IoU {results['synthetic_aligned_iou']:.4g}"
            f" (best trivial {results['synthetic_iou_best_trivial']:.4g}), depth error "
            f"{results['synthetic_aligned_depth_l1_fg']:.4g} = {results['synthetic_aligned_depth_vs_trivial']:.3g}x the "
            f"best trivial {results['synthetic_depth_l1_best_trivial']:.4g}"]


# The README's table: its columns and rows, and the keys they show.
SUMMARY_COLUMNS = (("silhouette IoU ↑", "iou"), ("depth error, true foreground ↓", "depth_l1_fg"),
                   ("depth error, both foreground ↓", "depth_l1"), ("pixel KID ↓", "kid"))
SUMMARY_ROWS = (("ceiling: real vs other real heads", "_ceiling"),
                ("floor: untrained generator, no prior", "_floor"),
                ("the sphere prior alone (untrained generator with it)", "_prior"), ("this generator", ""))
_GAP_CLOSED_KEYS = {"iou": "synthetic_iou_closed", "depth_l1_fg": "synthetic_depth_closed",
                    "kid": "synthetic_kid_closed"}


def _cell(value: float, closed: Optional[float] = None) -> str:
    text = "—" if not math.isfinite(value) else f"{value:.4g}"
    return text if closed is None or not math.isfinite(closed) else f"{text} ({100 * closed:.0f} % of the gap)"


def summary_lines(results: Mapping) -> list:
    """The README's synthetic table for these results: one row per baseline and the generator."""
    if "synthetic_iou" not in results:
        return []
    rows = [[label] + [_cell(results[f"synthetic_{key}{suffix}"],
                             results.get(_GAP_CLOSED_KEYS.get(key)) if suffix == "" else None)
                       for _, key in SUMMARY_COLUMNS]
            for label, suffix in SUMMARY_ROWS if f"synthetic_iou{suffix}" in results]
    wall = _cell(results["synthetic_depth_l1_plane"])
    rows.insert(2, ["trivial: opaque everywhere / a flat wall at the best depth",
                    _cell(results["synthetic_iou_fog"]), wall, wall, "—"])
    rows.insert(3, ["trivial: one fixed blob where most heads are", _cell(results["synthetic_iou_blob"]),
                    "—", "—", "—"])
    for at, (label, name) in enumerate((("trivial: the best single sphere", "sphere"),
                                        ("trivial: the best single ellipsoid", "ellipsoid"),
                                        ("trivial: the family's mean object", "mean_object"))):
        if f"synthetic_iou_{name}" in results:
            depth = _cell(results[f"synthetic_depth_l1_{name}"])
            rows.insert(4 + at, [label, _cell(results[f"synthetic_iou_{name}"]), depth, "—", "—"])
    table = [[f"synthetic ({results['num_synthetic']} poses)"] + [name for name, _ in SUMMARY_COLUMNS]] + rows
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in table]
