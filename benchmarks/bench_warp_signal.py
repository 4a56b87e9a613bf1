"""Can the stereo warp tell a head's true shape from a sphere, at a given NeRF resolution?

    python benchmarks/bench_warp_signal.py                      # sizes 16, 32, 64; 64 heads
    python benchmarks/bench_warp_signal.py --sizes 16,64 --num_heads 16
    python benchmarks/bench_warp_signal.py --photometric_input unit --warp_projection pinhole  # the corrections

The warp's photometric loss (docs/METHOD.md §7) is what asks MVCGAN's field for a right depth.
This measures how much it can ask, on *real* `Synthetic` heads, where every depth is known:
each head is rendered at its own pose (primary) and at a second pose from the training
distribution (auxiliary); the auxiliary image is warped into the primary view with four depth
maps, and the loss is averaged over the primary's foreground pixels that land inside the
auxiliary image. The warp and the loss are the demo's (the Synthetic curriculum's
`warp_projection` and `photometric_input`: the published "ray_norm" and "shifted") unless
the flags ask for others:

* `true`:   the head's exact depth (the best a field can do; not 0: occlusion, resampling);
* `sphere`: a sphere of the curriculum's prior radius at the origin (what the demo's field keeps);
* `plane`:  a flat wall at the view's mean foreground depth;
* `none`:   no warp at all (the auxiliary image as it is).

If `sphere` and `plane` score like `true`, a field at that resolution gains nothing from
learning the head's shape. Prints a table and one JSON line per size (with the warp and
the loss it measured).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from generators.warp import WARP_PROJECTIONS  # noqa: E402
from losses import PHOTOMETRIC_INPUTS  # noqa: E402

DEPTHS = ("true", "sphere", "plane", "none")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="16,32,64", help="comma-separated NeRF resolutions to measure")
    p.add_argument("--num_heads", type=int, default=64, help="heads (primary/auxiliary pairs) per size")
    p.add_argument("--seed", type=int, default=0, help="seed of the auxiliary poses")
    p.add_argument("--sphere_radius", type=float, default=None,
                   help="radius of the sphere hypothesis (default: the Synthetic curriculum's sphere_prior_radius)")
    p.add_argument("--photometric_input", choices=PHOTOMETRIC_INPUTS, default=None,
                   help="how the loss sees the [0, 1] images (default: the Synthetic curriculum's)")
    p.add_argument("--warp_projection", choices=WARP_PROJECTIONS, default=None,
                   help="the warp's projection (default: the Synthetic curriculum's)")
    return p.parse_args(argv)


def sphere_depth(cam2world: torch.Tensor, size: int, fov: float, radius: float, far: float) -> torch.Tensor:
    """(S, S) distance along each unit ray to a sphere of `radius` at the origin; `far` on a miss."""
    from synthetic_heads import ray_ellipsoid_hits
    from generators.cameras import camera_ray_directions, to_world

    dirs = to_world(cam2world[None], camera_ray_directions(size, fov)[None], is_direction=True)[0]  # (S*S, 3)
    t, _, hit = ray_ellipsoid_hits(cam2world[:3, 3], dirs, torch.zeros(1, 3), torch.full((1, 3), radius))
    return torch.where(hit, t, torch.full_like(t, far)).reshape(size, size)


def measure(size: int, num_heads: int, seed: int, radius: float, metadata) -> dict:
    """Mean photometric loss per depth hypothesis over `num_heads` primary/auxiliary pairs."""
    from synthetic_heads import Synthetic
    from generators.cameras import PoseDistribution, sample_poses
    from generators.warp import stereo_warp
    from losses import photometric_input_mapping, photometric_loss

    fov, far = float(metadata["fov"]), float(metadata["ray_end"])
    to_loss_input, projection = photometric_input_mapping(metadata["photometric_input"]), metadata["warp_projection"]
    dataset = Synthetic(size, metadata=metadata, length=num_heads)
    aux_yaw, aux_pitch = sample_poses(num_heads, PoseDistribution.from_metadata(metadata),
                                      generator=torch.Generator().manual_seed(seed))
    totals = dict.fromkeys(DEPTHS, 0.0)
    for index in range(num_heads):
        primary = dataset.render(index)
        aux = dataset.render(index, float(aux_yaw[index]), float(aux_pitch[index]))
        foreground = primary["mask"]
        primary_rgb, aux_rgb = (primary["image"][None] + 1) / 2, (aux["image"][None] + 1) / 2  # (1, 3, S, S) in [0, 1]
        depths = {"true": primary["depth"],
                  "sphere": sphere_depth(primary["cam2world"], size, fov, radius, far),
                  "plane": torch.full_like(primary["depth"], float(primary["depth"][foreground].mean()))}
        def mean_loss(image, counted):  # photometric loss against the primary, over `counted` pixels
            loss = photometric_loss.per_pixel(to_loss_input(image), to_loss_input(primary_rgb))[0]
            return float((loss * counted).sum() / counted.float().sum().clamp_min(1))

        for name, depth in depths.items():
            warped, valid = stereo_warp(aux_rgb, depth[None], primary["cam2world"][None], aux["cam2world"][None], fov,
                                        projection)
            totals[name] += mean_loss(warped, foreground & valid[0])
        totals["none"] += mean_loss(aux_rgb, foreground)
    return {name: value / num_heads for name, value in totals.items()}


def main(argv=None) -> list:
    args = parse_args(argv)
    from curriculums import extract_metadata, get_curriculum

    metadata = extract_metadata(get_curriculum("Synthetic"), 0)
    for switch in ("photometric_input", "warp_projection"):
        if getattr(args, switch) is not None:
            metadata[switch] = getattr(args, switch)
    radius = args.sphere_radius if args.sphere_radius is not None else float(metadata["sphere_prior_radius"])
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if not sizes or min(sizes) < 4 or args.num_heads < 1:
        raise SystemExit("error: --sizes needs resolutions >= 4 and --num_heads >= 1")
    print(f"photometric_input {metadata['photometric_input']!r}, warp_projection {metadata['warp_projection']!r}",
          flush=True)
    print(f"{'size':>5} " + " ".join(f"{name:>8}" for name in DEPTHS) + "  sphere excess over true", flush=True)
    rows = []
    for size in sizes:
        losses = measure(size, args.num_heads, args.seed, radius, metadata)
        row = {"size": size, "num_heads": args.num_heads, "sphere_radius": radius,
               "photometric_input": metadata["photometric_input"], "warp_projection": metadata["warp_projection"],
               **losses}
        rows.append(row)
        excess = (losses["sphere"] - losses["true"]) / losses["true"]
        print(f"{size:>5} " + " ".join(f"{losses[name]:8.4f}" for name in DEPTHS) + f"  {excess:+.0%}", flush=True)
    for row in rows:
        print(json.dumps(row))
    return rows


if __name__ == "__main__":
    main()
