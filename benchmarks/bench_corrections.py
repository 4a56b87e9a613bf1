"""How much each opt-in correction changes what training sees (docs/METHOD.md §13).

    python benchmarks/bench_corrections.py

Three numbers per correction, all on data the repository ships (no download, seconds on a CPU):

* `photometric_input` "unit" vs the published "shifted": the ratio of the photometric loss's
  gradient norms (with respect to both NeRF RGB maps), on the primary and warped auxiliary RGB
  of the published step fixture (tests/fixtures/published_step, step 5000) and on generated
  pairs at three contrast levels;
* `warp_projection` "pinhole" vs the published "ray_norm": how far the two grids put each
  primary pixel in the auxiliary image, in pixels, at 64 px and the faces' fov 12 for
  auxiliary poses from the training distribution;
* `real_resize` "antialias" vs the published "nearest": the mean and largest per-pixel
  difference (in [-1, 1] units) of the real images of tests/fixtures/published_data at 64 px.
Prints one JSON line.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from datasets import image_transform  # noqa: E402
from generators.cameras import PoseDistribution, cam2world_from_poses, sample_poses  # noqa: E402
from generators.warp import warp_grid  # noqa: E402
from losses import photometric_input_mapping, photometric_loss  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"


def gradient_ratio(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """||grad of the 'unit' loss|| / ||grad of the 'shifted' loss||, w.r.t. both maps."""
    norms = []
    for mapping in ("unit", "shifted"):
        p, t = prediction.clone().requires_grad_(), target.clone().requires_grad_()
        to_input = photometric_input_mapping(mapping)
        photometric_loss(to_input(p), to_input(t)).backward()
        norms.append(torch.cat([p.grad.flatten(), t.grad.flatten()]).norm().item())
    return norms[0] / norms[1]


def photometric_effect() -> dict:
    step = torch.load(FIXTURES / "published_step" / "expected_float64.pt", weights_only=True)["steps"][0]["g"]
    chunk = step["chunks"][0]
    result = {"published_fixture_step_5000": round(gradient_ratio(chunk["gen_warp_imgs"], chunk["gen_init_imgs"]), 3)}
    g = torch.Generator().manual_seed(0)
    for contrast in (0.05, 0.3, 1.0):  # generated images: a mid-grey field with this much texture
        base = 0.5 + contrast * (torch.rand(4, 3, 16, 16, generator=g, dtype=torch.float64) - 0.5)
        shifted = 0.5 + contrast * (torch.rand(4, 3, 16, 16, generator=g, dtype=torch.float64) - 0.5)
        warped = 0.7 * base + 0.3 * shifted  # a partly consistent warp
        result[f"texture_{contrast}"] = round(gradient_ratio(warped, base), 3)
    return result


def warp_effect(size: int = 64, fov: float = 12.0, pairs: int = 256) -> dict:
    pose = PoseDistribution(h_stddev=0.3, v_stddev=0.155, sample_dist="gaussian")
    g = torch.Generator().manual_seed(0)
    primary = cam2world_from_poses(*sample_poses(pairs, pose, generator=g)).double()
    aux = cam2world_from_poses(*sample_poses(pairs, pose, generator=g)).double()
    depth = torch.full((pairs, size, size), 1.0, dtype=torch.float64)  # the faces' mid depth
    pinhole, valid = warp_grid(depth, primary, aux, fov, "pinhole")
    published, _ = warp_grid(depth, primary, aux, fov, "ray_norm")
    shift = (published - pinhole).norm(dim=-1)[valid] * (size - 1) / 2  # grid units -> pixels
    return {"mean_px": round(shift.mean().item(), 4), "max_px": round(shift.max().item(), 4)}


def resize_effect(size: int = 64) -> dict:
    result = {}
    for dataset in ("FFHQ", "Cat"):
        diffs = []
        for image in ("img_a", "img_b", "img_c"):
            with Image.open(FIXTURES / "published_data" / f"{image}.png") as pil:
                nearest = image_transform(dataset, size, real_resize="nearest")(pil)
                antialias = image_transform(dataset, size, real_resize="antialias")(pil)
            diffs.append((nearest - antialias).abs())
        diff = torch.stack(diffs)
        result[dataset] = {"mean": round(diff.mean().item(), 4), "max": round(diff.max().item(), 4)}
    return result


def main() -> int:
    torch.set_num_threads(1)
    print(json.dumps({"photometric_gradient_ratio_unit_over_shifted": photometric_effect(),
                      "warp_pinhole_vs_ray_norm_at_64px": warp_effect(),
                      "real_resize_antialias_vs_nearest_at_64px": resize_effect()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
