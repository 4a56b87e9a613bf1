"""Extract meshes from a checkpoint: density on a cube grid, marching cubes, PLY files.

    python extract_shapes.py --path CKPT --output_dir shapes --seeds 0 1 --voxel_resolution 256

For each seed: the generator's raw density (psi-truncated, EMA weights by default) on
a voxel_resolution^3 grid over a cube centred at the origin, the iso-surface at
`--level` (skimage marching cubes), vertex coordinates in world units, written as
`shape_{seed}.ply` (binary little-endian, or ASCII with --ascii) and, with
--save_npy, the density volume `density_{seed}.npy` (indexed [x, y, z]).

Vertices carry colours (PLY red, green, blue; MeshLab and Blender show them) from the
field's RGB at the surface (`--colour`, docs/METHOD.md §11): by default the colour a ray
sees that enters the surface at the vertex along its inward normal, volume-rendered over
one sample spacing of the images' rays on either side (`vertex_colours`).

The level is a raw density sigma of the SIREN, in 1 / world units: a layer of
thickness t at density sigma lets exp(-sigma * t) of the light through (sigma 10
over the 0.02 spacing of 12 samples in the faces' 0.24 ray range: 18 % absorbed).
The default 10 is pi-GAN's. A seed whose volume never crosses the level gets no
mesh (the message names its density range) rather than a mesh of some other level.
Files already in `--output_dir` under the names a run writes are not replaced unless `--overwrite`
(the run is refused before the checkpoint is loaded); other files there are left alone.
Entry point: `main(argv)`; the mesh code is the library's, `shapes.mesh` (`density_volume`,
`extract_mesh`, `vertex_colours`, `coloured_mesh`) and `shapes.ply` (`write_ply`).
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import numpy as np
from tqdm import tqdm

from generators.pretrained import codes_for_seed, codes_name, load_fitted_codes, load_model
from shapes.mesh import (COLOUR_MODES, DEFAULT_LEVEL, HOST_BYTES_PER_VOXEL, check_voxel_memory, coloured_mesh,
                         default_cube_size, density_volume)
from shapes.ply import write_ply
from utils.cli import WORK_FAILED, CLIError, HelpFormatter, finite_float, run_cli, seed_value
from utils.cpu_runtime import set_threads
from utils.rendering_cli import (add_codes_argument, add_model_arguments, add_overwrite_argument, output_files,
                                 prepare_output_dir)

PLAIN_COLOUR_STD = 4.0        # vertex colours whose std is below this (of 255) in every channel are "plain": say so


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Extract marching-cubes meshes (PLY) of generated shapes from an MVCGAN checkpoint.",
        formatter_class=HelpFormatter)
    add_model_arguments(parser)
    add_codes_argument(parser)
    parser.add_argument("--output_dir", default="shapes", help="folder the files are written to")
    add_overwrite_argument(parser)
    parser.add_argument("--seeds", type=seed_value, nargs="+", default=[0, 1, 2, 3],
                        help="random seeds of the latent codes z (one shape per seed)")
    parser.add_argument("--voxel_resolution", type=int, default=256,
                        help="density samples per axis of the cube; memory grows with its cube (about "
                             f"{HOST_BYTES_PER_VOXEL} bytes per voxel: 256 takes 0.25 GiB, 1024 16 GiB), and a "
                             "resolution that does not fit in the available memory is refused")
    parser.add_argument("--cube_size", type=finite_float, default=None,
                        help="side of the cube (centred at the origin) the density is sampled in, world units "
                             "(default: the box the rays sample, 2 * max(1 - ray_start, ray_end - 1), "
                             "0.24 for the face curricula)")
    parser.add_argument("--level", type=finite_float, default=DEFAULT_LEVEL,
                        help="iso-level of the surface, a raw SIREN density sigma in 1/world units (a layer of "
                             "thickness t lets exp(-sigma t) of the light through; default: pi-GAN's 10). A seed "
                             "whose density never crosses it gets no mesh; the message names its range")
    parser.add_argument("--save_npy", action="store_true",
                        help="also write the density volume density_{seed}.npy (float32, indexed [x, y, z])")
    parser.add_argument("--ascii", action="store_true", help="write ASCII PLY instead of binary little-endian")
    parser.add_argument("--colour", choices=COLOUR_MODES, default="ray",
                        help="vertex colours (docs/METHOD.md §11): ray, the field's RGB as a ray entering the "
                             "surface at the vertex along its inward normal sees it (volume-rendered like the "
                             "images); point, the field's RGB at the vertex itself; image, the decoded images of "
                             "16 views around the object projected onto the vertices each view sees (the colours "
                             "the rendered pictures have; the field's can be plain); none, a grey mesh")
    return parser


def shape_files(args, seed) -> dict:
    """The files one seed (or a `FittedCodes`) gets, by kind: its mesh, and with --save_npy its density volume."""
    return {"mesh": f"shape_{seed}.ply", **({"density": f"density_{seed}.npy"} if args.save_npy else {})}


def planned_files(args) -> list:
    """Every file name the run of `args` may write (a `--codes` file's name stands in for the seeds)."""
    seeds = [codes_name(args.codes)] if args.codes else args.seeds
    return [name for seed in seeds for name in shape_files(args, seed).values()]


def extract(args) -> list:
    """Everything main() does after parsing; returns the written paths. Seeds without a mesh
    are reported and skipped; `args.skipped` lists them."""
    if args.voxel_resolution < 2:
        raise CLIError(f"--voxel_resolution must be at least 2, got {args.voxel_resolution}")
    if args.max_batch_size < 1:
        raise CLIError(f"--max_batch_size must be at least 1, got {args.max_batch_size}")
    files = output_files(args, planned_files(args))  # files of an earlier run: refused before anything is loaded
    set_threads(args.threads)
    model = load_model(args.path, args.curriculum, use_ema=not args.no_ema, device=args.device)
    check_voxel_memory(args.voxel_resolution, model.device)
    if args.codes:
        args.seeds = [load_fitted_codes(model, args.codes)]  # the fitted codes stand in for the seeds
    cube_size = args.cube_size if args.cube_size is not None else default_cube_size(model.metadata)
    if not cube_size > 0:
        raise CLIError(f"--cube_size must be positive, got {cube_size}")
    output_dir = prepare_output_dir(args.output_dir)
    print(f"{model.checkpoint_path}: step {model.step}, {'EMA' if model.use_ema else 'raw'} weights, "
          f"psi {args.psi}, {args.voxel_resolution}^3 voxels over a {cube_size:g} cube on {model.device}")
    written, args.skipped = [], []
    for seed in tqdm(args.seeds, desc="seeds", unit="seed"):
        names = shape_files(args, seed)
        codes = codes_for_seed(model, seed, args.psi)
        density = density_volume(model, seed, args.voxel_resolution, cube_size, args.psi, args.max_batch_size, codes)
        if args.save_npy:
            npy = files.path(names["density"])
            np.save(npy, density)
            written.append(npy)
        try:
            mesh = coloured_mesh(model, codes, args.voxel_resolution, cube_size, args.level, args.colour,
                                 args.max_batch_size, density=density)
        except ValueError as error:
            tqdm.write(f"seed {seed}: no mesh written: {error}", file=sys.stderr)
            args.skipped.append(seed)
            continue
        written.append(write_ply(files.path(names["mesh"]), mesh.vertices, mesh.faces, binary=not args.ascii,
                                 colours=mesh.colours))
        tqdm.write(f"seed {seed}: {len(mesh.vertices)} vertices, {len(mesh.faces)} faces at level {mesh.level:g}")
        if args.colour in ("ray", "point") and len(mesh.colours) and mesh.colours.std(0).max() < PLAIN_COLOUR_STD:
            rgb = ", ".join(str(int(round(c))) for c in mesh.colours.mean(0))
            tqdm.write(f"seed {seed}: note: the field's colours are plain (RGB {rgb} nearly everywhere): this "
                       "checkpoint's NeRF RGB does not carry the appearance; --colour image takes the decoded "
                       "images' colours", file=sys.stderr)
    if written:
        print(f"wrote {len(written)} file(s) to {output_dir}/: " + ", ".join(p.name for p in written))
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Exit code 0 when every seed got a mesh, 1 when some did not (see the messages), 2 for bad input."""
    args = build_parser().parse_args(argv)
    code = run_cli(lambda: extract(args))
    if code == 0 and args.skipped:
        print(f"error: no mesh for seed(s) {', '.join(map(str, args.skipped))} (see above)", file=sys.stderr)
        return WORK_FAILED
    return code


if __name__ == "__main__":
    sys.exit(main())
