"""How well does inversion put a picture in 3D? Held-out procedural images against their ground truth.

    python benchmarks/bench_inversion.py --path runs/demo --num_heads 8 --threads 2
    python benchmarks/bench_inversion.py --path runs/demo --variants frontal_codes,camera_w --num_heads 2
    python benchmarks/bench_inversion.py --path runs/onecritter --variants mean,frontal_codes,camera_codes

The checkpoint must be trained on a procedural data set (`Synthetic` heads or `Critters`). Images
the checkpoint never saw are rendered at their own poses, drawn from the training pose
distribution, at the checkpoint's output size. Which images those are depends on the curriculum's
`synthetic_objects`:

* 0 (every image its own object: Synthetic, the Critters family): objects of another
  `synthetic_seed`, `--held_out_seed` (the training seed is refused);
* N > 0 (a finite set of objects, e.g. OneCritter's one critter): the training objects at new poses,
  the training seed's indices from `synthetic_size` on (beyond the training set, so their poses
  were never drawn for training; index i shows object i % N as in training).

Each is inverted from that one view (invert.py's code, `inversion.fitting`) by every variant:

* `mean`: the mean codes at the frontal camera (no fitting: the floor);
* `frontal_codes`: pi-GAN's inverse_render recipe: the codes space at a fixed frontal camera;
* `frontal_w`: the w space at a fixed frontal camera;
* `camera_w`, `camera_codes`: codes and camera from several starting poses, in either space;
* `tuned`: `camera_codes`, then pivotal tuning of the generator (`--tune_steps`).

Every fitting variant takes the same number of steps on the start it keeps (the fixed-camera
variants get the search steps too). The camera search's starts are InversionSettings' defaults
(yaw -0.4 ... 0.4, pitch -0.15 ... 0.15 rad around the mean pose, made for Synthetic's spread)
scaled by the checkpoint's pose spread, yaw starts x h_stddev / 0.3 and pitch starts x
v_stddev / 0.155, rounded to 6 decimals (so Synthetic's are exactly the defaults; OneCritter's
yaw starts span +-1.6 rad); `--set yaw_starts=...` / `--set pitch_starts=...` replace them.
Scores, per head, averaged:

* pose error: the angle (degrees) between the fitted and the true camera directions (a fixed
  camera is the frontal one, the mean pose: for a critter the side view); directions, so a yaw
  and the same yaw +- 2 pi are the same camera;
* input PSNR: the reconstruction at the fitted camera against the input;
* held-out PSNR and SSIM: renders at three other poses (the training distribution's mean yaw and
  mean +-1 sigma, i.e. h_mean + (-1, 0, 1) x h_stddev, at the mean pitch: -0.3, 0, +0.3 rad for
  Synthetic, +-1.2 rad for Critters) against the true object there
  (SSIM: scikit-image's, 7x7 windows, on the [0, 1] images);
* depth error: mean |rendered - true depth| over the true head's pixels at those poses (NeRF size);
* seconds per image (wall clock, `--threads` torch threads).

Prints a table and one JSON line per variant; `--example_dir` writes `example.png` for the most
turned head (largest angular |yaw - mean yaw|; `--example_head` picks another): rows the truth,
then each fitting variant; columns the input view
(the reconstruction at the fitted camera in the variants' rows) and the three held-out views, then
the depth at the three held-out views.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = ("mean", "frontal_codes", "frontal_w", "camera_w", "camera_codes", "tuned")
DEFAULT_VARIANTS = "mean,frontal_codes,camera_codes,tuned,frontal_w,camera_w"
HELD_OUT_SIGMAS = (-1.0, 0.0, 1.0)  # held-out yaws: the mean yaw + these x h_stddev, at the mean pitch
SYNTHETIC_SPREAD = (0.3, 0.155)     # (h_stddev, v_stddev) that InversionSettings' default starts were made for
COLUMNS = ("pose_error_deg", "input_psnr", "held_out_psnr", "held_out_ssim", "depth_error", "seconds")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--path", default="runs/demo",
                   help="a checkpoint or run directory trained on a procedural data set (Synthetic or Critters)")
    p.add_argument("--train", action="store_true",
                   help="when --path has no checkpoint, train the faces demo there first (main.py --curriculum "
                        "Synthetic --threads 1, as the README gives it: about 40 minutes on one core)")
    p.add_argument("--num_heads", type=int, default=8, help="held-out heads to invert")
    p.add_argument("--held_out_seed", type=int, default=1000,
                   help="synthetic_seed of the held-out objects when the curriculum's synthetic_objects is 0; "
                        "must differ from the checkpoint's (training) seed (with synthetic_objects > 0 the held-out "
                        "images are the training objects at new poses and this is unused)")
    p.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"comma-separated, of {', '.join(VARIANTS)}")
    p.add_argument("--search_steps", type=int, default=None, help="steps per start (default: invert.py's)")
    p.add_argument("--steps", type=int, default=None, help="steps of the kept start (default: invert.py's)")
    p.add_argument("--tune_steps", type=int, default=30, help="pivotal tuning steps of the `tuned` variant")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override an InversionSettings field for every fitting variant (a Python literal)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--example_dir", default=None, help="write example.png (the most turned head) here")
    p.add_argument("--example_head", type=int, default=None,
                   help="the head (0 .. num_heads-1) that example.png shows instead of the most turned one")
    p.add_argument("--full_model_steps", type=int, default=0,
                   help="instead of the benchmark: time this many fit steps (one start, codes and camera) of the "
                        "paper's full generator (FFHQ widths, untrained) at its 64 px NeRF, 16 samples, 64 px out")
    p.add_argument("--device", default="cpu", help="device of --full_model_steps (cpu or cuda)")
    return p.parse_args(argv)


def scaled_starts(starts, spread: float, reference: float) -> tuple:
    """Search starts (radians from the mean pose) scaled by spread / reference, rounded to 6 decimals."""
    return tuple(round(float(s) * spread / reference, 6) for s in starts)


def settings_for(variant: str, args, pose_spread=SYNTHETIC_SPREAD):
    """The InversionSettings of a fitting variant (None for `mean`). Unless `--set` gives them, the
    yaw and pitch starts are the defaults scaled by `pose_spread` (h_stddev, v_stddev) / Synthetic's."""
    import ast
    from dataclasses import fields

    from inversion.fitting import InversionSettings, search_rounds

    if variant == "mean":
        return None
    base = InversionSettings()
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in {f.name for f in fields(InversionSettings)}:
            raise SystemExit(f"error: --set {item}: no InversionSettings field {key!r}")
        try:
            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key] = value
    if "yaw_starts" not in overrides:
        overrides["yaw_starts"] = scaled_starts(base.yaw_starts, pose_spread[0], SYNTHETIC_SPREAD[0])
    if "pitch_starts" not in overrides:
        overrides["pitch_starts"] = scaled_starts(base.pitch_starts, pose_spread[1], SYNTHETIC_SPREAD[1])
    search = args.search_steps if args.search_steps is not None else overrides.get("search_steps", base.search_steps)
    steps = args.steps if args.steps is not None else overrides.get("steps", base.steps)
    overrides.update(search_steps=search, steps=steps)
    space = "w" if variant.endswith("_w") else "codes"
    if variant.startswith("frontal"):
        # One start: it gets the search rounds' steps as well, so every variant takes as many steps on the
        # start it keeps.
        starts = len(overrides.get("yaw_starts", base.yaw_starts)) * len(overrides.get("pitch_starts", base.pitch_starts))
        return InversionSettings(**{**overrides, "latent_space": space, "fit_camera": False, "search_steps": 0,
                                    "steps": search * search_rounds(starts) + steps})
    return InversionSettings(**{**overrides, "latent_space": space,
                                "tune_steps": args.tune_steps if variant == "tuned" else 0})


def angle_between_cameras(yaw_a: float, pitch_a: float, yaw_b: float, pitch_b: float) -> float:
    """Degrees between two camera directions from the origin."""
    from generators.cameras import camera_origins

    a = camera_origins(torch.tensor([yaw_a]), torch.tensor([pitch_a]))[0].double()
    b = camera_origins(torch.tensor([yaw_b]), torch.tensor([pitch_b]))[0].double()
    return math.degrees(float(torch.arccos(torch.clamp(a @ b, -1.0, 1.0))))


def yaw_difference(yaw: float, reference: float) -> float:
    """yaw - reference wrapped to [-pi, pi): the angle between the two around the vertical axis."""
    return (yaw - reference + math.pi) % (2 * math.pi) - math.pi


def psnr(image: torch.Tensor, reference: torch.Tensor) -> float:
    """PSNR (dB) of [0, 1] images."""
    mse = float((image.clamp(0, 1) - reference).square().mean())
    return 10 * math.log10(1 / max(mse, 1e-12))


def ssim(image: torch.Tensor, reference: torch.Tensor) -> float:
    """scikit-image's SSIM (7x7 windows) of (3, H, W) [0, 1] images."""
    from skimage.metrics import structural_similarity

    return float(structural_similarity(image.clamp(0, 1).permute(1, 2, 0).numpy(),
                                       reference.permute(1, 2, 0).numpy(), channel_axis=2, data_range=1.0))


def ensure_checkpoint(args) -> Path:
    from utils.checkpoint import CheckpointError, resolve_checkpoint_path

    try:
        return resolve_checkpoint_path(args.path)
    except CheckpointError:
        if not args.train:
            raise SystemExit(f"error: no checkpoint at {args.path}; pass --train to train the demo there")
    import subprocess

    subprocess.run([sys.executable, str(ROOT / "main.py"), "--curriculum", "Synthetic", "--output_dir", args.path,
                    "--threads", "1", "--no_progress"], check=True, cwd=ROOT)  # the README's faces command
    return resolve_checkpoint_path(args.path)


class Truth:
    """One held-out image: its input view, and images and depths at the held-out poses (yaw
    mean_yaw + each of `offsets`, pitch mean_pitch)."""

    def __init__(self, dataset, nerf_dataset, index: int, mean_yaw: float, mean_pitch: float, offsets):
        self.index = index
        own = dataset.render(index)
        self.yaw, self.pitch = own["yaw"], own["pitch"]
        self.input = ((own["image"] + 1) / 2)[None]                           # (1, 3, out, out)
        self.views = [(mean_yaw + offset, mean_pitch) for offset in offsets]
        held = [dataset.render(index, y, p) for y, p in self.views]
        nerf = [nerf_dataset.render(index, y, p) for y, p in self.views]
        self.images = torch.stack([(h["image"] + 1) / 2 for h in held])     # (3, 3, out, out)
        self.depths = torch.stack([n["depth"] for n in nerf])               # (3, S, S)
        self.masks = torch.stack([n["mask"] for n in nerf])                 # (3, S, S)


@torch.no_grad()
def score(generator, codes, yaw: float, pitch: float, truth: Truth, options, alpha: float) -> dict:
    from generators.cameras import cam2world_from_poses
    from generators.generators import LatentCodes

    def render(yaws, pitches):
        n = len(yaws)
        expanded = LatentCodes(*(c.expand(n, -1) for c in codes))
        cams = cam2world_from_poses(torch.tensor(yaws, dtype=torch.float32), torch.tensor(pitches, dtype=torch.float32))
        return generator.render_codes(expanded, options, cams, alpha=alpha)

    fitted = render([yaw], [pitch])
    held = render([v[0] for v in truth.views], [v[1] for v in truth.views])
    images = (held.image + 1) / 2
    return {"pose_error_deg": angle_between_cameras(yaw, pitch, truth.yaw, truth.pitch),
            "input_psnr": psnr((fitted.image[0] + 1) / 2, truth.input[0]),
            "held_out_psnr": float(np.mean([psnr(i, t) for i, t in zip(images, truth.images)])),
            "held_out_ssim": float(np.mean([ssim(i, t) for i, t in zip(images, truth.images)])),
            "depth_error": float((held.depth - truth.depths).abs()[truth.masks].mean()),
            "_images": images, "_fitted": (fitted.image[0] + 1) / 2, "_depth": held.depth}


def example_figure(truth: Truth, rows: dict, near: float, far: float, size: int) -> np.ndarray:
    """Rows: the truth, then each variant; columns: input view, the held-out views, their depths."""
    from utils.images import depth_to_uint8, make_grid, resize, to_uint8

    def row(first, images, depths):
        pictures = [to_uint8(first, (0.0, 1.0))] + list(to_uint8(images, (0.0, 1.0)))
        return pictures + [resize(d, size) for d in depth_to_uint8(depths, near, far)]

    cells = row(truth.input[0], truth.images, torch.where(truth.masks, truth.depths, torch.full_like(truth.depths, far)))
    for result in rows.values():
        cells += row(result["_fitted"], result["_images"], result["_depth"])
    return make_grid(cells, ncols=1 + 2 * len(truth.views))


def time_full_model(steps: int, threads: int, device: str = "cpu") -> dict:
    """Seconds per fit step of the paper's generator at its stage-0 size, one start (the search runs
    its starts as one batch: a round costs about this times the starts)."""
    from curriculums import extract_metadata, get_curriculum
    from generators.generators import RenderOptions, build_generator
    from inversion.fitting import InversionSettings, invert

    metadata = extract_metadata(get_curriculum("FFHQ"), 0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        generator = build_generator(metadata).to(device).eval()
    options = RenderOptions.from_metadata(metadata, evaluation=True)
    target = torch.rand(1, 3, options.output_size, options.output_size, device=device)
    settings = InversionSettings(yaw_starts=(0.0,), pitch_starts=(0.0,), steps=steps + 1)
    stamps = []

    def progress(phase, step, total, loss):  # called after each step: time between the first and the last
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    invert(generator, target, options, settings, progress=progress)
    record = {"full_model_sec_per_step": (stamps[-1] - stamps[0]) / steps, "steps": steps, "threads": threads,
              "device": device, "img_size": options.rays.img_size, "num_steps": options.rays.num_steps,
              "output_size": options.output_size}
    print(json.dumps(record))
    return record


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.full_model_steps:
        return time_full_model(args.full_model_steps, args.threads, args.device)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or args.num_heads < 1:
        raise SystemExit(f"error: unknown variants {unknown}; choose from {VARIANTS}" if unknown
                         else "error: --num_heads must be >= 1")
    if args.example_head is not None and not 0 <= args.example_head < args.num_heads:
        raise SystemExit(f"error: --example_head {args.example_head} is not one of the {args.num_heads} heads")
    from inversion.fitting import invert
    from generators.pretrained import decoder_alpha, load_model, render_options
    from synthetic_heads import PROCEDURAL_DATASETS

    model = load_model(ensure_checkpoint(args), device="cpu")
    name = model.metadata.get("dataset")
    if name not in PROCEDURAL_DATASETS:
        raise SystemExit(f"error: the benchmark needs a checkpoint trained on a procedural data set "
                         f"({' or '.join(sorted(PROCEDURAL_DATASETS))}), not {name}")
    dataset_class = PROCEDURAL_DATASETS[name]
    training_seed = int(model.metadata.get("synthetic_seed", 0))
    objects = int(model.metadata.get("synthetic_objects", 0))
    if objects > 0:  # a finite set of objects: the held-out images are those objects at poses never drawn
        seed, first = training_seed, int(model.metadata["synthetic_size"])
        rule = (f"the {objects} training object(s) at new poses: synthetic_seed {seed}, indices {first}.."
                f"{first + args.num_heads - 1} beyond the {first} training images")
    else:
        if args.held_out_seed == training_seed:
            raise SystemExit(f"error: --held_out_seed {args.held_out_seed} is the training seed: "
                             "those objects were trained on")
        seed, first = args.held_out_seed, 0
        rule = f"objects never trained on: synthetic_seed {seed}; trained on {training_seed}"
    options = render_options(model)
    alpha = decoder_alpha(model, options)
    pose = options.pose
    pose_spread = (float(model.metadata["h_stddev"]), float(model.metadata["v_stddev"]))
    offsets = [sigma * pose_spread[0] for sigma in HELD_OUT_SIGMAS]
    dataset = dataset_class(options.output_size, metadata=model.metadata, length=first + args.num_heads, seed=seed)
    nerf_dataset = dataset_class(options.rays.img_size, metadata=model.metadata, length=first + args.num_heads,
                                 seed=seed)
    settings = {v: settings_for(v, args, pose_spread) for v in variants}
    starts = next((s for s in settings.values() if s is not None and s.fit_camera), None)
    print(f"{model.checkpoint_path} (step {model.step}, {name}): {args.num_heads} held-out images ({rule}), "
          f"{options.rays.img_size} px NeRF -> {options.output_size} px, {args.threads} thread(s)", flush=True)
    print(f"held-out yaws: mean {pose.h_mean:.4f} + {[round(o, 4) for o in offsets]} rad (-1, 0, +1 x h_stddev "
          f"{pose_spread[0]}) at pitch {pose.v_mean:.4f}" + (
              f"; search starts: yaw {list(starts.yaw_starts)}, pitch {list(starts.pitch_starts)} rad from the mean"
              if starts is not None else ""), flush=True)
    totals = {v: {c: [] for c in COLUMNS} for v in variants}
    example, example_truth = {}, None
    for head, index in enumerate(range(first, first + args.num_heads)):
        truth = Truth(dataset, nerf_dataset, index, pose.h_mean, pose.v_mean, offsets)
        # the example is the most turned head (by the angle around the vertical): where a fixed frontal camera
        # is most wrong
        if args.example_head is not None:
            is_example = head == args.example_head
        else:
            is_example = example_truth is None or (abs(yaw_difference(truth.yaw, pose.h_mean))
                                                   > abs(yaw_difference(example_truth.yaw, pose.h_mean)))
        example_truth = truth if is_example else example_truth
        for variant in variants:
            started = time.perf_counter()
            if settings[variant] is None:
                generator, codes = model.generator, model.generator.average_codes()
                yaw, pitch = pose.h_mean, pose.v_mean
            else:
                result = invert(model.generator, truth.input, options, settings[variant], alpha=alpha, seed=head)
                generator, codes, yaw, pitch = result.generator, result.codes, result.yaw, result.pitch
            seconds = time.perf_counter() - started
            scores = score(generator, codes, yaw, pitch, truth, options, alpha)
            scores["seconds"] = seconds
            for column in COLUMNS:
                totals[variant][column].append(scores[column])
            if is_example:
                example[variant] = scores
            print(json.dumps({"head": head, "index": index, "variant": variant,
                              "true_yaw": yaw_difference(truth.yaw, pose.h_mean),
                              "true_pitch": truth.pitch - pose.v_mean, "yaw": yaw_difference(yaw, pose.h_mean),
                              "pitch": pitch - pose.v_mean,
                              **{c: round(scores[c], 4) for c in COLUMNS}}), flush=True)
    summary = {}
    print(f"{'variant':>14} " + " ".join(f"{c:>15}" for c in COLUMNS))
    for variant in variants:
        means = {c: float(np.mean(v)) for c, v in totals[variant].items()}
        spread = {f"{c}_std": float(np.std(v)) for c, v in totals[variant].items()}
        summary[variant] = {**means, **spread}
        print(f"{variant:>14} " + " ".join(f"{means[c]:>9.4g} ±{spread[c + '_std']:<5.2g}" for c in COLUMNS))
    for variant in variants:
        print(json.dumps({"variant": variant, "num_heads": args.num_heads, "threads": args.threads,
                          "checkpoint": model.checkpoint_path, "step": model.step, **summary[variant]}))
    if args.example_dir:
        from utils.images import save_image

        figure = example_figure(example_truth, {v: example[v] for v in variants if v != "mean"},
                                options.rays.ray_start, options.rays.ray_end, options.output_size)
        path = save_image(figure, Path(args.example_dir) / "example.png")
        print(f"wrote {path}")
    return summary


if __name__ == "__main__":
    main()
