"""Put a photo in 3D: fit a checkpoint's latent codes and camera to one picture (docs/METHOD.md §11.1).

    python invert.py --path CKPT --image photo.png --output_dir inv/
    python invert.py --path ffhq.pth --image selfie.jpg --align --tune_generator 100 --output_dir inv/

Fits the codes (FiLM frequencies, phases and the decoder's style by default, or the 256-d "w"
mapping code; starting from the mean) and the camera (yaw, pitch; a search from 15 starting
poses, so that a turned head is not caught in the frontal minimum) with the photometric loss of training (SSIM + L1), then, with
`--tune_generator STEPS`, tunes a copy of the generator around the fitted codes (pivotal
tuning, with a regulariser that keeps other latents' renders unchanged). Writes to --output_dir:

* `comparison.png`: the input as the model sees it | the reconstruction at the fitted camera;
* `multiview.png`, `depth.png`: the 7-view row and its depth row (render_multiview_image.py's);
* `turntable.gif`: a looping yaw/pitch sweep;
* `shape.ply`: the marching-cubes mesh of the density (extract_shapes.py's);
* `codes.pth`: the fitted codes and camera (and the tuned weights), loadable with
  `torch.load(weights_only=True)`; `render_multiview_image.py --codes` and `extract_shapes.py
  --codes` render it with the same checkpoint.

An --output_dir that holds an earlier inversion's files is refused; `--start_over` moves them to
`previous_<time>/` inside it first (main.py's rule for run directories, utils/run_dir.py).

Entry point: `main(argv)`; `invert_photo(args)` does the work and returns the written paths.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from generators.cameras import cam2world_from_poses
from generators.pretrained import (MULTIVIEW_YAW_OFFSETS, LoadedModel, cameras_around_mean, decoder_alpha, load_model,
                                   render_options, render_views, video_offsets)
from inversion.codes_file import save_codes
from inversion.fitting import LATENT_SPACES, TUNABLE, InversionSettings, invert, search_rounds
from inversion.photo import align_face, prepare_target, read_photo
from shapes.mesh import DEFAULT_LEVEL, check_voxel_memory, default_cube_size, extract_mesh
from shapes.ply import write_ply
from utils.cli import WORK_FAILED, CLIError, HelpFormatter, finite_float, run_cli, seed_value
from utils.cpu_runtime import set_threads
from utils.images import depth_row, make_row, save_gif, save_image, to_uint8
from utils.rendering_cli import add_model_arguments, prepare_output_dir
from utils.run_dir import EarlierOutput, make_room

# What an inversion writes to --output_dir: files an earlier inversion left there are not replaced silently.
OUTPUT_GLOBS = ("codes.pth", "comparison.png", "multiview.png", "depth.png", "turntable.gif", "shape.ply")


def floats(text: str) -> List[float]:
    """argparse type: comma-separated finite numbers."""
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"needs one or more finite numbers, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    defaults = InversionSettings()
    parser = argparse.ArgumentParser(
        description="Fit an MVCGAN checkpoint's latent codes and camera to one picture, optionally tune the "
                    "generator around them, and write the reconstruction, novel views, depth, a turntable GIF, "
                    "a mesh and the fitted codes.",
        formatter_class=HelpFormatter)
    add_model_arguments(parser, psi=None)
    parser.add_argument("--image", required=True,
                        help="the picture to invert (PNG, JPEG, ...): framed like the checkpoint's training data "
                             "(an aligned face crop for CelebAHQ/FFHQ, a cat-face crop for Cat), or use --align")
    parser.add_argument("--output_dir", default="inversion",
                        help="folder the files are written to; one that holds an earlier inversion's files is "
                             "refused unless --start_over")
    parser.add_argument("--start_over", action="store_true",
                        help="write into an --output_dir that holds an earlier inversion's files after moving them "
                             "to previous_<time>/ inside it (as main.py --start_over does with a run's files)")
    parser.add_argument("--align", action="store_true",
                        help="face checkpoints: find the largest frontal face (scikit-image's LBP cascade, shipped "
                             "with scikit-image) and crop it the way FFHQ frames faces")
    parser.add_argument("--latent_space", choices=LATENT_SPACES, default=defaults.latent_space,
                        help="w: the 256-d mapping code, which also gives the FiLM codes (every generated sample "
                             "lies in it); codes: FiLM frequencies, phases and decoder style as free tensors "
                             "(pi-GAN's space, 18*hidden_dim + 256 numbers)")
    parser.add_argument("--fixed_camera", action="store_true",
                        help="do not fit the camera: keep the curriculum's mean (frontal) pose, as pi-GAN's "
                             "inverse_render does")
    parser.add_argument("--yaw_starts", type=floats, default=list(defaults.yaw_starts),
                        help="starting yaw offsets from the mean pose, radians, comma-separated (with a negative "
                             "first value write --yaw_starts=-0.3,0,0.3)")
    parser.add_argument("--pitch_starts", type=floats, default=list(defaults.pitch_starts),
                        help="starting pitch offsets from the mean pose, radians, comma-separated (every "
                             "yaw/pitch pair is a start)")
    parser.add_argument("--search_steps", type=int, default=defaults.search_steps,
                        help="camera search by successive halving: steps per round, after which the better half "
                             "of the starts goes on (0: no search, the start nearest the mean pose)")
    parser.add_argument("--steps", type=int, default=defaults.steps,
                        help="further steps of the start the search kept")
    parser.add_argument("--lr", type=finite_float, default=defaults.lr,
                        help="Adam learning rate of the codes, in units of their standard deviation over random z")
    parser.add_argument("--camera_lr", type=finite_float, default=defaults.camera_lr,
                        help="Adam learning rate of yaw and pitch, radians")
    parser.add_argument("--prior_weight", type=finite_float, default=defaults.prior_weight,
                        help="weight of the mean squared code offset (in standard deviations) added to the loss")
    parser.add_argument("--ssim_weight", type=finite_float, default=defaults.ssim_weight,
                        help="loss = ssim_weight * SSIM dissimilarity + (1 - ssim_weight) * L1")
    parser.add_argument("--tune_generator", type=int, default=0, metavar="STEPS",
                        help="after the fit, tune a copy of the generator for STEPS steps around the fitted codes "
                             "(pivotal tuning); 0 skips it")
    parser.add_argument("--tune_lr", type=finite_float, default=defaults.tune_lr,
                        help="Adam learning rate of the generator's weights when tuning")
    parser.add_argument("--tune_parameters", choices=sorted(TUNABLE), default=defaults.tune_parameters,
                        help="which weights tuning changes: all, field (SIREN and mapping) or decoder")
    parser.add_argument("--locality_weight", type=finite_float, default=defaults.locality_weight,
                        help="tuning: weight of the L1 between the tuned and the original generator's renders of "
                             "other (random) latents at random poses, which keeps them unchanged")
    parser.add_argument("--image_size", type=int, default=None,
                        help="NeRF resolution to fit at (default: the checkpoint's trained stage's)")
    parser.add_argument("--output_size", type=int, default=None,
                        help="image size to fit at: image_size * 2^n, n at most the trained decoder blocks "
                             "(default: the trained stage's output size)")
    parser.add_argument("--num_steps", type=int, default=None,
                        help="depth samples per ray (default: the trained stage's)")
    parser.add_argument("--seed", type=seed_value, default=0, help="seed of the random draws (tuning's other latents)")
    parser.add_argument("--display_size", type=int, default=128,
                        help="pictures are enlarged (nearest neighbour, by a whole factor) to at least this many "
                             "pixels; 0 keeps the model's size")
    parser.add_argument("--num_frames", type=int, default=48, help="frames of turntable.gif")
    parser.add_argument("--fps", type=finite_float, default=24.0, help="turntable.gif frame rate")
    parser.add_argument("--voxel_resolution", type=int, default=128,
                        help="density samples per axis for shape.ply (memory grows with its cube)")
    parser.add_argument("--level", type=finite_float, default=DEFAULT_LEVEL,
                        help="iso-level of shape.ply, a raw density sigma in 1/world units (extract_shapes.py's "
                             "--level); when the density never crosses it, no mesh is written and the exit code is 1")
    parser.add_argument("--no_mesh", action="store_true", help="do not write shape.ply")
    return parser


def validate(args) -> None:
    """CLIError for values no inversion can run with."""
    for name in ("search_steps", "tune_generator"):
        if getattr(args, name) < 0:
            raise CLIError(f"--{name} must be >= 0, got {getattr(args, name)}")
    for name in ("steps", "num_frames", "max_batch_size", "voxel_resolution"):
        if getattr(args, name) < 1 + (name == "voxel_resolution"):
            raise CLIError(f"--{name} must be at least {1 + (name == 'voxel_resolution')}, got {getattr(args, name)}")
    for name in ("lr", "camera_lr", "tune_lr", "fps"):
        if not getattr(args, name) > 0:
            raise CLIError(f"--{name} must be positive, got {getattr(args, name)}")
    for name in ("prior_weight", "locality_weight", "display_size"):
        if getattr(args, name) < 0:
            raise CLIError(f"--{name} must be >= 0, got {getattr(args, name)}")
    if not 0 <= args.ssim_weight <= 1:
        raise CLIError(f"--ssim_weight must be in [0, 1], got {args.ssim_weight}")


def enlarge(image: np.ndarray, display_size: int) -> np.ndarray:
    """A uint8 (H, W, 3) picture scaled up by the whole factor that makes its height >= display_size."""
    factor = max(1, math.ceil(display_size / image.shape[0])) if display_size else 1
    if factor == 1:
        return image
    return np.asarray(np.kron(image, np.ones((factor, factor, 1), dtype=np.uint8)))


class Progress:
    """One tqdm bar over every optimisation step (search, fit, tuning) showing the phase and loss."""

    def __init__(self, total: int):
        self.bar = tqdm(total=total, desc="inverting", unit="step")

    def __call__(self, phase: str, step: int, steps: int, loss: float) -> None:
        self.bar.set_postfix_str(f"{phase} loss {loss:.4f}", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def write_outputs(model: LoadedModel, result, target: torch.Tensor, options, args, output_dir: Path) -> List[Path]:
    """Every picture, the GIF and the mesh of a finished inversion; returns the written paths (`args.no_mesh_reason`
    is set when the density had no surface at --level)."""
    generator = model.generator
    model.generator = result.generator  # render_views renders model.generator: the tuned copy, if any
    written = []
    try:
        size, near, far = options.output_size, options.rays.ray_start, options.rays.ray_end
        camera = cam2world_from_poses(torch.tensor([result.yaw]), torch.tensor([result.pitch])).to(model.device)
        fitted = render_views(model, result.codes, camera, options, 1.0, args.max_batch_size)
        pair = make_row([to_uint8(target[0], (0.0, 1.0)), to_uint8(fitted.image[0])])
        written.append(save_image(enlarge(pair, args.display_size), output_dir / "comparison.png"))
        views = render_views(model, result.codes, cameras_around_mean(options, MULTIVIEW_YAW_OFFSETS, device=model.device),
                             options, 1.0, args.max_batch_size)
        written.append(save_image(enlarge(make_row(to_uint8(views.image)), args.display_size),
                                  output_dir / "multiview.png"))
        written.append(save_image(depth_row(views.depth, near, far, max(size, args.display_size)),
                                  output_dir / "depth.png"))
        yaw, pitch = video_offsets(args.num_frames)
        frames = render_views(model, result.codes, cameras_around_mean(options, yaw, pitch, device=model.device),
                              options, 1.0, args.max_batch_size)
        written.append(save_gif([enlarge(f, args.display_size) for f in to_uint8(frames.image)],
                                output_dir / "turntable.gif", fps=args.fps))
        args.no_mesh_reason = None
        if not args.no_mesh:
            cube = default_cube_size(model.metadata)
            density = result.generator.density_grid(None, args.voxel_resolution, half_extent=cube / 2, codes=result.codes,
                                                    max_batch_size=args.max_batch_size)[0].float().cpu().numpy()
            try:
                mesh = extract_mesh(density, args.level, cube)
                written.append(write_ply(output_dir / "shape.ply", mesh.vertices, mesh.faces))
            except ValueError as error:
                args.no_mesh_reason = str(error)
    finally:
        model.generator = generator
    return written


def invert_photo(args) -> List[Path]:
    """Everything main() does after parsing: load, prepare the picture, fit, write; returns the written paths."""
    validate(args)
    output_dir = prepare_output_dir(args.output_dir)
    try:
        note = make_room(output_dir, args.start_over, OUTPUT_GLOBS, what="an earlier inversion", move_all=False)
    except EarlierOutput as error:
        raise CLIError(str(error)) from None
    if note:
        print(note, file=sys.stderr)
    set_threads(args.threads)
    model = load_model(args.path, args.curriculum, use_ema=not args.no_ema, device=args.device)
    options = render_options(model, args.image_size, args.output_size, args.num_steps)
    if not args.no_mesh:
        check_voxel_memory(args.voxel_resolution, model.device)
    dataset = str(model.metadata.get("dataset"))
    image, notes = read_photo(args.image)
    if args.align:
        image, align_notes = align_face(image, dataset)
        notes += align_notes
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if min(image.size) < options.output_size:
        print(f"note: the picture ({image.size[0]}x{image.size[1]}) is smaller than the {options.output_size} px the "
              "model renders; it is enlarged", file=sys.stderr)
    target = prepare_target(image, dataset, options.output_size).to(model.device)
    settings = InversionSettings(
        latent_space=args.latent_space, fit_camera=not args.fixed_camera, yaw_starts=tuple(args.yaw_starts),
        pitch_starts=tuple(args.pitch_starts), search_steps=args.search_steps, steps=args.steps, lr=args.lr,
        camera_lr=args.camera_lr, ssim_weight=args.ssim_weight, prior_weight=args.prior_weight,
        tune_steps=args.tune_generator, tune_lr=args.tune_lr, tune_parameters=args.tune_parameters,
        locality_weight=args.locality_weight)
    starts = 1 if args.fixed_camera else len(args.yaw_starts) * len(args.pitch_starts)
    print(f"{model.checkpoint_path}: step {model.step}, curriculum {model.curriculum_name or '(unnamed)'}, "
          f"{'EMA' if model.use_ema else 'raw'} weights; fitting {settings.latent_space} codes"
          f"{'' if args.fixed_camera else f' and the camera from {starts} starts'} at {options.rays.img_size} px NeRF "
          f"x {options.rays.num_steps} steps -> {options.output_size} px on {model.device}")
    progress = Progress(settings.search_steps * search_rounds(starts) + settings.steps + settings.tune_steps)
    try:
        result = invert(model.generator, target, options, settings, alpha=decoder_alpha(model, options),
                        seed=args.seed, progress=progress)
    finally:
        progress.close()
    written = [save_codes(output_dir / "codes.pth", result.codes, result.yaw, result.pitch,
                          base_generator=model.generator, tuned_generator=result.generator if result.tuned else None,
                          w=result.w, latent_space=settings.latent_space, loss=result.loss,
                          checkpoint=model.checkpoint_path, step=model.step, use_ema=model.use_ema,
                          image_size=options.rays.img_size, output_size=options.output_size,
                          num_steps=options.rays.num_steps)]
    written += write_outputs(model, result, target, options, args, output_dir)
    pose = options.pose
    print(f"fitted camera: yaw {math.degrees(result.yaw - pose.h_mean):+.1f} deg, pitch "
          f"{math.degrees(result.pitch - pose.v_mean):+.1f} deg from the mean pose; loss {result.loss:.4f}; "
          + ", ".join(f"{phase} {seconds:.1f} s" for phase, seconds in result.seconds.items()))
    print(f"wrote {len(written)} file(s) to {output_dir}/: " + ", ".join(p.name for p in written))
    if args.no_mesh_reason:
        print(f"error: no mesh written: {args.no_mesh_reason} (--level, or --no_mesh)", file=sys.stderr)
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    args.no_mesh_reason = None
    code = run_cli(lambda: invert_photo(args))
    if code == 0 and args.no_mesh_reason:
        return WORK_FAILED
    return code


if __name__ == "__main__":
    sys.exit(main())
