"""Render images, depth maps, videos, style mixes and interpolations from a checkpoint (docs/METHOD.md §11).

    python render_multiview_image.py --path CKPT --output_dir render_dir --curriculum FFHQ

Default mode `multiview`: for each seed, one z rendered from 7 yaw offsets
(+0.6, +0.5, +0.3, 0, -0.3, -0.5, -0.6) around the curriculum's mean pose, with the
EMA weights, psi = 0.5, no NeRF noise, no auxiliary view and eval_last_back, saved as
one row `image_{seed}.png`. Sizes and samples per ray default to the stage the
checkpoint was last trained in (`generators.pretrained.trained_stage`). `--depth` adds
the colour-mapped depth of the same views with a near/far colour bar
(`depth_{seed}.png`), `--video` a looping yaw/pitch sweep (`video_{seed}.gif`), and
`--geometry` the geometry turntable: the same views as a grey surface shaded from the
normals of the NeRF's depth (`geometry_{seed}.png`, with `--video` `geometry_{seed}.gif`;
`utils.shading`).
`--mode style_mix` renders NeRF geometry from one seed with the decoder style of
another; `--mode interpolate` walks between the codes of consecutive seeds.
Files already in `--output_dir` under the names a run writes are not replaced unless `--overwrite`
(the run is refused before the checkpoint is loaded); other files there are left alone.
Entry point: `main(argv)`; the multiview rows and videos are `generators.pretrained.render`'s (the
Python API), the other render_* functions here are importable.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from generators.generators import LatentCodes, RenderOptions
from generators.inference import RENDER_BATCH_SIZE, batch_slices
from generators.pretrained import (MULTIVIEW_YAW_OFFSETS, LoadedModel, cameras_around_mean, codes_for_seed, codes_name,
                                   decoder_alpha, latent_for_seed, load_fitted_codes, load_model, render,
                                   render_options, video_offsets)
from utils.cli import CLIError, HelpFormatter, finite_float, run_cli, seed_value
from utils.cpu_runtime import set_threads
from utils.images import depth_row, make_grid, make_row, resize, save_gif, save_image, to_uint8
from utils.rendering_cli import (add_codes_argument, add_model_arguments, add_overwrite_argument, check_memory,
                                 output_files, prepare_output_dir, render_memory_bytes)
from utils.run_dir import OutputFiles
from utils.shading import geometry_images

MAX_DEFAULT_GEOMETRY_SIZE = 256  # the geometry turntable's NeRF size defaults to the output size, at most this


# ------------------------------------------------------------------ rendering
def render_geometry(model: LoadedModel, seed: int, options: RenderOptions, psi: float, max_batch_size: int,
                    size: int, yaw_offsets: Sequence[float] = MULTIVIEW_YAW_OFFSETS,
                    pitch_offsets: Optional[Sequence[float]] = None, batch_size: int = 8) -> np.ndarray:
    """The seed's surface from the given offsets around the mean pose, shaded from the normals of the
    NeRF's depth rendered at `size` px (no decoder): uint8 (n, size, size, 3), white where transparent."""
    device = model.device
    geometry_options = options.replace(rays=replace(options.rays, img_size=size))
    cameras = cameras_around_mean(options, yaw_offsets, pitch_offsets, device=device)
    with torch.no_grad():
        codes = codes_for_seed(model, seed, psi)
        images = []
        for part in batch_slices(cameras.shape[0], batch_size):
            cams = cameras[part]
            view = model.generator.render_view(LatentCodes(*(c.expand(cams.shape[0], -1) for c in codes)), cams,
                                               geometry_options, max_batch_size=max_batch_size)
            images.append(geometry_images(view.depth.cpu(), view.opacity.cpu(), options.rays.fov,
                                          options.rays.ray_end if options.integration.last_back else None))
    return np.concatenate(images)


def render_style_mix(model: LoadedModel, geometry_seed: int, style_seeds: Sequence[int], options: RenderOptions,
                     psi: float, max_batch_size: int, batch_size: int = RENDER_BATCH_SIZE) -> np.ndarray:
    """NeRF geometry (FiLM codes) of `geometry_seed` decoded with the style of each style seed,
    at the mean pose: uint8 (len(style_seeds), out, out, 3)."""
    device = model.device
    z_style_all = torch.cat([latent_for_seed(model, s) for s in style_seeds])
    z_geometry = latent_for_seed(model, geometry_seed)
    alpha = decoder_alpha(model, options)
    images = []
    for part in batch_slices(len(style_seeds), batch_size):
        z_style = z_style_all[part]
        n = z_style.shape[0]
        out = model.generator.style_mix_forward(
            z_geometry.expand(n, -1), z_style, options, psi=psi,
            cam2world=cameras_around_mean(options, [0.0] * n, device=device), max_batch_size=max_batch_size,
            alpha=alpha)
        images.append(to_uint8(out.image))
    return np.concatenate(images)


def render_interpolation(model: LoadedModel, seed_a: int, seed_b: int, weights: Sequence[float],
                         options: RenderOptions, psi: float, max_batch_size: int,
                         batch_size: int = RENDER_BATCH_SIZE) -> np.ndarray:
    """Lerp of the truncated codes of two seeds (weight 0 -> seed_a, 1 -> seed_b) at the mean pose:
    uint8 (len(weights), out, out, 3)."""
    device = model.device
    z1, z2 = latent_for_seed(model, seed_a), latent_for_seed(model, seed_b)
    all_weights = torch.tensor([float(w) for w in weights], device=device)[:, None]  # (n, 1)
    alpha = decoder_alpha(model, options)
    images = []
    for part in batch_slices(len(weights), batch_size):
        w = all_weights[part]
        # A (n, 1) weight broadcasts the (1, .) codes of z1 and z2 into n interpolated codes.
        out = model.generator.interpolate_forward(
            z1, z2, w, options, psi=psi, cam2world=cameras_around_mean(options, [0.0] * w.shape[0], device=device),
            max_batch_size=max_batch_size, alpha=alpha)
        images.append(to_uint8(out.image))
    return np.concatenate(images)


# ---------------------------------------------------------------- file names
def multiview_files(args, seed) -> dict:
    """The files --mode multiview writes for one seed (or a `FittedCodes`), by kind: those the flags ask for."""
    files = {"image": f"image_{seed}.png"}
    if args.depth:
        files["depth"] = f"depth_{seed}.png"
    if args.video:
        files["video"] = f"video_{seed}.gif"
    if args.geometry:
        files["geometry"] = f"geometry_{seed}.png"
        if args.video:
            files["geometry_video"] = f"geometry_{seed}.gif"
    return files


STYLE_MIX_GRID = "style_mix.png"


def style_mix_file(seed) -> str:
    return f"style_mix_{seed}.png"


def interpolation_files(args, a, b) -> dict:
    """The files --mode interpolate writes for the seed pair (a, b), by kind."""
    return {"row": f"interp_{a}_{b}.png", **({"video": f"interp_{a}_{b}.gif"} if args.video else {})}


def planned_files(args) -> List[str]:
    """Every file name the run of `args` will write (before the checkpoint is loaded: a `--codes` file's
    name stands in for the seeds), so that one already in the folder is refused before the work."""
    seeds = [codes_name(args.codes)] if args.codes else args.seeds
    if args.mode == "multiview":
        return [name for seed in seeds for name in multiview_files(args, seed).values()]
    if args.mode == "style_mix":
        return [style_mix_file(seed) for seed in seeds] + [STYLE_MIX_GRID]
    return [name for a, b in zip(seeds[:-1], seeds[1:]) for name in interpolation_files(args, a, b).values()]


# ----------------------------------------------------------------------- modes
def run_multiview(model: LoadedModel, options: RenderOptions, args, files: OutputFiles) -> List[Path]:
    written = []
    near, far = options.rays.ray_start, options.rays.ray_end
    for seed in tqdm(args.seeds, desc="seeds", unit="seed"):
        names = multiview_files(args, seed)
        out = render(model, seed, options=options, psi=args.psi, max_batch_size=args.max_batch_size,
                     batch_size=args.batch_size)
        written.append(save_image(make_row(to_uint8(out.image)), files.path(names["image"])))
        if args.depth:
            written.append(save_image(depth_row(out.depth, near, far, options.output_size),
                                      files.path(names["depth"])))
        if args.video:
            loop = render(model, seed, *video_offsets(args.num_frames), options=options, psi=args.psi,
                          max_batch_size=args.max_batch_size, batch_size=args.batch_size)
            written.append(save_gif(list(to_uint8(loop.image)), files.path(names["video"]), fps=args.fps))
        if args.geometry:
            size = geometry_size(args, options)
            row = render_geometry(model, seed, options, args.psi, args.max_batch_size, size,
                                  batch_size=args.batch_size)
            # Nearest-upscaled to the images' size when smaller, so the rows line up; never shrunk.
            shown = max(size, options.output_size)
            written.append(save_image(make_row([resize(im, shown) for im in row]), files.path(names["geometry"])))
            if args.video:
                yaw, pitch = video_offsets(args.num_frames)
                frames = render_geometry(model, seed, options, args.psi, args.max_batch_size, size, yaw, pitch,
                                         args.batch_size)
                written.append(save_gif([resize(f, shown) for f in frames], files.path(names["geometry_video"]),
                                        fps=args.fps))
    return written


def geometry_size(args, options: RenderOptions) -> int:
    """--geometry_size, else the output size (so the rows line up) up to MAX_DEFAULT_GEOMETRY_SIZE."""
    return args.geometry_size or min(options.output_size, MAX_DEFAULT_GEOMETRY_SIZE)


def run_style_mix(model: LoadedModel, options: RenderOptions, args, files: OutputFiles) -> List[Path]:
    style_seeds = args.style_seeds if args.style_seeds else args.seeds
    written, rows = [], []
    for seed in tqdm(args.seeds, desc="geometry seeds", unit="seed"):
        row = render_style_mix(model, seed, style_seeds, options, args.psi, args.max_batch_size, args.batch_size)
        rows.extend(row)
        written.append(save_image(make_row(row), files.path(style_mix_file(seed))))
    # All rows together: rows = geometry seeds, columns = style seeds.
    written.append(save_image(make_grid(rows, ncols=len(style_seeds)), files.path(STYLE_MIX_GRID)))
    return written


def run_interpolate(model: LoadedModel, options: RenderOptions, args, files: OutputFiles) -> List[Path]:
    if len(args.seeds) < 2:
        raise CLIError("--mode interpolate needs at least two --seeds (it interpolates between consecutive ones)")
    written = []
    pairs = list(zip(args.seeds[:-1], args.seeds[1:]))
    for a, b in tqdm(pairs, desc="seed pairs", unit="pair"):
        names = interpolation_files(args, a, b)
        weights = np.linspace(0.0, 1.0, args.num_interp)
        row = render_interpolation(model, a, b, weights, options, args.psi, args.max_batch_size, args.batch_size)
        written.append(save_image(make_row(row), files.path(names["row"])))
        if args.video:
            # a -> b -> a with an eased weight, so the loop has no jump.
            t = np.arange(args.num_frames) / args.num_frames
            frames = render_interpolation(model, a, b, 0.5 - 0.5 * np.cos(2 * np.pi * t), options, args.psi,
                                          args.max_batch_size, args.batch_size)
            written.append(save_gif(list(frames), files.path(names["video"]), fps=args.fps))
    return written


MODES = {"multiview": run_multiview, "style_mix": run_style_mix, "interpolate": run_interpolate}


# ------------------------------------------------------------------------ CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Render multi-view images (and depth maps, videos, style mixes, interpolations) "
                    "from an MVCGAN checkpoint.",
        formatter_class=HelpFormatter)
    add_model_arguments(parser)
    add_codes_argument(parser)
    parser.add_argument("--output_dir", default="render_dir", help="folder the files are written to")
    add_overwrite_argument(parser)
    parser.add_argument("--mode", choices=sorted(MODES), default="multiview",
                        help="multiview: image_{seed}.png, a row of 7 yaw offsets per seed; "
                             "style_mix: style_mix_{seed}.png, geometry of each seed with the decoder style of "
                             "each --style_seeds, plus the whole grid style_mix.png; "
                             "interpolate: interp_{a}_{b}.png between consecutive seeds")
    parser.add_argument("--seeds", type=seed_value, nargs="+", default=[0, 1, 2, 3],
                        help="random seeds of the latent codes z (one z per seed)")
    parser.add_argument("--style_seeds", type=seed_value, nargs="+", default=None,
                        help="style_mix mode: seeds whose decoder style is used (default: --seeds)")
    parser.add_argument("--image_size", type=int, default=None,
                        help="resolution S of the NeRF feature map (the volume-rendered image) (default: the "
                             "img_size of the stage the checkpoint was last trained in)")
    parser.add_argument("--output_size", type=int, default=None,
                        help="resolution of the output images: image_size * 2^n, n at most the number of "
                             "decoder blocks the checkpoint trained (default: image_size * 2^that number, "
                             "i.e. the trained stage's output_size at its image_size)")
    parser.add_argument("--allow_untrained_blocks", action="store_true",
                        help="allow an --output_size that needs decoder blocks the checkpoint never trained "
                             "(they give noise; a warning is printed)")
    parser.add_argument("--num_steps", type=int, default=None,
                        help="depth samples per ray (default: the trained stage's num_steps)")
    parser.add_argument("--lock_view_dependence", action="store_true",
                        help="feed the fixed view direction (0, 0, -1) to the colour branch, so colours do not "
                             "change with the camera")
    parser.add_argument("--depth", action="store_true",
                        help="multiview mode: also write depth_{seed}.png, the depth of the same views in the "
                             "turbo colour map over [ray_start, ray_end] (dark red near, dark purple far), with "
                             "a colour bar labelled near/far below the row")
    parser.add_argument("--geometry", action="store_true",
                        help="multiview mode: also write geometry_{seed}.png, the geometry turntable: the same "
                             "views as a grey surface lit from the upper left, shaded from the normals of the "
                             "NeRF's depth (white where the NeRF is transparent); with --video also "
                             "geometry_{seed}.gif")
    parser.add_argument("--geometry_size", type=int, default=None,
                        help="NeRF resolution of the geometry turntable (only the field is rendered, not the "
                             f"decoder; default: the output size, at most {MAX_DEFAULT_GEOMETRY_SIZE}); a size "
                             "below the output size is nearest-upscaled to it so the rows line up")
    parser.add_argument("--video", action="store_true",
                        help="multiview: also write video_{seed}.gif, a looping yaw/pitch sweep; "
                             "interpolate: also write interp_{a}_{b}.gif, a -> b -> a")
    parser.add_argument("--num_frames", type=int, default=48, help="frames per GIF")
    parser.add_argument("--fps", type=finite_float, default=24.0, help="GIF frame rate")
    parser.add_argument("--num_interp", type=int, default=8,
                        help="interpolate mode: images per row of interp_{a}_{b}.png (seed a to seed b)")
    parser.add_argument("--batch_size", type=int, default=RENDER_BATCH_SIZE,
                        help="views rendered together; lower it if the 2D decoder runs out of memory at large "
                             "--output_size")
    return parser


def validate_args(parser: argparse.ArgumentParser, args) -> None:
    for flag in ("depth", "geometry"):
        if getattr(args, flag) and args.mode != "multiview":
            parser.error(f"--{flag} only applies to --mode multiview")
    if args.geometry_size is not None and args.geometry_size < 2:
        parser.error("--geometry_size must be at least 2")
    for name in ("num_frames", "num_interp", "batch_size", "max_batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.num_interp < 2 and args.mode == "interpolate":
        parser.error("--num_interp must be at least 2")
    if args.fps <= 0:
        parser.error("--fps must be positive")
    if args.style_seeds and args.mode != "style_mix":
        parser.error("--style_seeds only applies to --mode style_mix")
    if args.codes and args.mode != "multiview":
        parser.error("--codes only applies to --mode multiview")


def check_render_memory(model: LoadedModel, options: RenderOptions, args) -> None:
    """Refuse sizes whose views cannot fit in the memory available, before anything is allocated."""
    views = min(args.batch_size, len(MULTIVIEW_YAW_OFFSETS) if args.mode == "multiview" else args.batch_size)
    sizes = {"--image_size": options}
    if args.geometry:
        size = geometry_size(args, options)
        sizes["--geometry_size"] = options.replace(rays=replace(options.rays, img_size=size), output_size=size)
    for flag, sized in sizes.items():
        needed = render_memory_bytes(model, sized, views)
        check_memory({"host": needed, "device": needed}, model.device,
                     f"{flag} {sized.rays.img_size} ({sized.rays.num_steps} samples per ray, {views} views at once)",
                     f"lower {flag} (or --batch_size, --num_steps)")


def render_files(args) -> List[Path]:
    """Everything main() does after parsing: load, validate, render, write; returns the written paths."""
    files = output_files(args, planned_files(args))  # files of an earlier run: refused before anything is loaded
    set_threads(args.threads)
    model = load_model(args.path, args.curriculum, use_ema=not args.no_ema, device=args.device)
    options = render_options(model, args.image_size, args.output_size, args.num_steps, args.lock_view_dependence,
                             args.allow_untrained_blocks)
    check_render_memory(model, options, args)
    if args.codes:
        args.seeds = [load_fitted_codes(model, args.codes)]  # the fitted codes stand in for the seeds
    output_dir = prepare_output_dir(args.output_dir)
    weights = "EMA" if model.use_ema else "raw"
    print(f"{model.checkpoint_path}: step {model.step} (trained {model.stage.img_size} -> "
          f"{model.stage.output_size} px), curriculum {model.curriculum_name or '(unnamed)'}, {weights} weights, "
          f"psi {args.psi}, {options.rays.img_size}px NeRF x {options.rays.num_steps} steps "
          f"-> {options.output_size}px on {model.device}")
    written = MODES[args.mode](model, options, args, files)
    print(f"wrote {len(written)} file(s) to {output_dir}/: " + ", ".join(p.name for p in written))
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    validate_args(parser, args)
    return run_cli(lambda: render_files(args))


if __name__ == "__main__":
    sys.exit(main())
