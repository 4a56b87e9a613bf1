"""Extract meshes from a checkpoint: density on a cube grid, marching cubes, PLY files.

    python extract_shapes.py --path CKPT --output_dir shapes --seeds 0 1 --voxel_resolution 256

For each seed: the generator's raw density (psi-truncated, EMA weights by default) on
a voxel_resolution^3 grid over a cube centred at the origin, the iso-surface at
`--level` (skimage marching cubes), vertex coordinates in world units, written as
`shape_{seed}.ply` (binary little-endian, or ASCII with --ascii) and, with
--save_npy, the density volume `density_{seed}.npy` (indexed [x, y, z]).

The level is a raw density sigma of the SIREN, in 1 / world units: a layer of
thickness t at density sigma lets exp(-sigma * t) of the light through (sigma 10
over the 0.02 spacing of 12 samples in the faces' 0.24 ray range: 18 % absorbed).
The default 10 is pi-GAN's. A seed whose volume never crosses the level gets no
mesh (the message names its density range) rather than a mesh of some other level.
Entry points: `main(argv)`, `density_volume`, `extract_mesh`, `write_ply`, `read_ply`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import numpy as np
from tqdm import tqdm

from utils.rendering_cli import (WORK_FAILED, CLIError, HelpFormatter, LoadedModel, add_codes_argument,
                                 add_model_arguments, available_memory_bytes, finite_float, latent_for_seed,
                                 load_fitted_codes, load_model, run_cli)

DEFAULT_LEVEL = 10.0          # pi-GAN's sigma threshold for shapes (raw density, 1 / world units)
HOST_BYTES_PER_VOXEL = 16     # float32 volume, marching cubes' working copy, headroom for the mesh
DEVICE_BYTES_PER_VOXEL = 4    # the float32 density grid on the device (the SIREN chunk comes on top)


class Mesh(NamedTuple):
    vertices: np.ndarray  # (V, 3) float32, world units (x, y, z)
    faces: np.ndarray     # (F, 3) int32 vertex indices, outward winding
    level: float          # the iso-level actually used


def default_cube_size(metadata) -> float:
    """Side of the cube that holds every point a frontal ray samples: 2 * max(1 - ray_start, ray_end - 1)."""
    return 2.0 * max(1.0 - float(metadata["ray_start"]), float(metadata["ray_end"]) - 1.0)


def density_volume(model: LoadedModel, seed, resolution: int, cube_size: float, psi: float,
                   max_batch_size: int) -> np.ndarray:
    """Raw density (float32, (R, R, R), indexed [x, y, z]) of the seed's z (or of a `FittedCodes`'
    codes) on the cube grid."""
    z = latent_for_seed(model, seed)
    sigma = model.generator.density_grid(z, resolution, psi=psi, half_extent=cube_size / 2,
                                         max_batch_size=max_batch_size)
    return sigma[0].float().cpu().numpy()


def check_level(density: np.ndarray, level: float) -> float:
    """`level` if the volume crosses it; otherwise ValueError naming the volume's density range.

    No fall-back to another level: a level the volume barely reaches (such as its mean,
    for a nearly empty field) triangulates the noise and writes meshes of millions of faces.
    """
    low, high = float(density.min()), float(density.max())
    if not low < high:
        raise ValueError(f"the density volume is constant ({low:g}): there is no surface to extract")
    if not low < level < high:
        raise ValueError(f"level {level:g} is outside this volume's density range [{low:g}, {high:g}]; "
                         "choose a level inside it (--save_npy writes the volume to look at)")
    return float(level)


def memory_needed(resolution: int) -> dict:
    """Approximate bytes the extraction of one seed holds: {"host": ..., "device": ...}."""
    voxels = resolution ** 3
    return {"host": voxels * HOST_BYTES_PER_VOXEL, "device": voxels * DEVICE_BYTES_PER_VOXEL}


def check_memory(resolution: int, device) -> None:
    """CLIError when a resolution^3 extraction will not fit in the memory available now."""
    import torch

    needed = memory_needed(resolution)
    available = {"host": available_memory_bytes()}
    if torch.device(device).type == "cuda":
        available["device"] = torch.cuda.mem_get_info(torch.device(device))[0]
    for where, free in available.items():
        if free is not None and needed[where] > free:
            largest = int((free * resolution ** 3 / needed[where]) ** (1 / 3))  # same bytes per voxel
            raise CLIError(f"--voxel_resolution {resolution} needs about {needed[where] / 2**30:.1f} GiB of "
                           f"{'GPU' if where == 'device' else 'main'} memory, {free / 2**30:.1f} GiB is "
                           f"available; use --voxel_resolution {largest} or less")


def extract_mesh(density: np.ndarray, level: float, cube_size: float) -> Mesh:
    """Marching cubes of a (R, R, R) density indexed [x, y, z] on the grid
    linspace(-cube_size/2, cube_size/2, R) per axis; vertices in the same world units.

    The solid is where density > level; faces wind so their normals point outwards.
    """
    from skimage.measure import marching_cubes  # heavy import, only needed here

    density = np.asarray(density, dtype=np.float32)
    if density.ndim != 3 or min(density.shape) < 2:
        raise ValueError(f"density must be a 3D volume with at least 2 samples per axis, got {density.shape}")
    level = check_level(density, level)
    spacing = tuple(cube_size / (n - 1) for n in density.shape)
    # gradient_direction "descent": the object is the region of values above the level.
    vertices, faces, _, _ = marching_cubes(density, level=level, spacing=spacing, gradient_direction="descent")
    vertices = (vertices - cube_size / 2).astype(np.float32)
    # skimage winds these faces clockwise seen from outside (in our right-handed [x, y, z]
    # indexing); reverse them so face normals (right-hand rule) point out of the solid.
    return Mesh(vertices, np.ascontiguousarray(faces[:, ::-1], dtype=np.int32), level)


# ------------------------------------------------------------------------ PLY
def write_ply(path, vertices: np.ndarray, faces: np.ndarray, binary: bool = True) -> Path:
    """A PLY file with float x, y, z vertices and triangle faces (`vertex_indices`, uchar count, int indices)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    vertices = np.asarray(vertices, dtype="<f4").reshape(-1, 3)
    faces = np.asarray(faces, dtype="<i4").reshape(-1, 3)
    header = "\n".join([
        "ply",
        f"format {'binary_little_endian' if binary else 'ascii'} 1.0",
        "comment MVCGAN extract_shapes.py",
        f"element vertex {len(vertices)}",
        "property float x", "property float y", "property float z",
        f"element face {len(faces)}",
        "property list uchar int vertex_indices",
        "end_header",
    ]) + "\n"
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        if binary:
            f.write(vertices.tobytes())
            records = np.empty(len(faces), dtype=[("count", "u1"), ("indices", "<i4", (3,))])  # packed, 13 bytes
            records["count"], records["indices"] = 3, faces
            f.write(records.tobytes())
        else:
            np.savetxt(f, vertices, fmt="%.7g")
            np.savetxt(f, np.concatenate([np.full((len(faces), 1), 3, np.int32), faces], axis=1), fmt="%d")
    return path


def read_ply(path):
    """Read back what `write_ply` writes: (vertices (V, 3) float32, faces (F, 3) int32)."""
    data = Path(path).read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    counts = {line.split()[1]: int(line.split()[2]) for line in header if line.startswith("element")}
    num_vertices, num_faces = counts["vertex"], counts["face"]
    body = data[end:]
    if "format binary_little_endian 1.0" in header:
        vertices = np.frombuffer(body, dtype="<f4", count=3 * num_vertices).reshape(-1, 3)
        records = np.frombuffer(body, dtype=[("count", "u1"), ("indices", "<i4", (3,))], count=num_faces,
                                offset=12 * num_vertices)
        if num_faces and not (records["count"] == 3).all():
            raise ValueError(f"{path}: only triangle faces are supported")
        return vertices.copy(), records["indices"].astype(np.int32)
    lines = body.decode("ascii").split("\n")
    vertices = np.array([[float(v) for v in line.split()] for line in lines[:num_vertices]],
                        dtype=np.float32).reshape(-1, 3)
    faces = np.array([[int(v) for v in line.split()[1:]] for line in lines[num_vertices:num_vertices + num_faces]],
                     dtype=np.int32).reshape(-1, 3)
    return vertices, faces


# ------------------------------------------------------------------------ CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Extract marching-cubes meshes (PLY) of generated shapes from an MVCGAN checkpoint.",
        formatter_class=HelpFormatter)
    add_model_arguments(parser)
    add_codes_argument(parser)
    parser.add_argument("--output_dir", default="shapes", help="folder the files are written to")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3],
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
    return parser


def extract(args) -> list:
    """Everything main() does after parsing; returns the written paths. Seeds without a mesh
    are reported and skipped; `args.skipped` lists them."""
    if args.voxel_resolution < 2:
        raise CLIError(f"--voxel_resolution must be at least 2, got {args.voxel_resolution}")
    if args.max_batch_size < 1:
        raise CLIError(f"--max_batch_size must be at least 1, got {args.max_batch_size}")
    model = load_model(args.path, args.curriculum, use_ema=not args.no_ema, device=args.device)
    check_memory(args.voxel_resolution, model.device)
    if args.codes:
        args.seeds = [load_fitted_codes(model, args.codes)]  # the fitted codes stand in for the seeds
    cube_size = args.cube_size if args.cube_size is not None else default_cube_size(model.metadata)
    if not cube_size > 0:
        raise CLIError(f"--cube_size must be positive, got {cube_size}")
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    print(f"{model.checkpoint_path}: step {model.step}, {'EMA' if model.use_ema else 'raw'} weights, "
          f"psi {args.psi}, {args.voxel_resolution}^3 voxels over a {cube_size:g} cube on {model.device}")
    written, args.skipped = [], []
    for seed in tqdm(args.seeds, desc="seeds", unit="seed"):
        density = density_volume(model, seed, args.voxel_resolution, cube_size, args.psi, args.max_batch_size)
        if args.save_npy:
            npy = output_dir / f"density_{seed}.npy"
            np.save(npy, density)
            written.append(npy)
        try:
            mesh = extract_mesh(density, args.level, cube_size)
        except ValueError as error:
            tqdm.write(f"seed {seed}: no mesh written: {error}", file=sys.stderr)
            args.skipped.append(seed)
            continue
        written.append(write_ply(output_dir / f"shape_{seed}.ply", mesh.vertices, mesh.faces, binary=not args.ascii))
        tqdm.write(f"seed {seed}: {len(mesh.vertices)} vertices, {len(mesh.faces)} faces at level {mesh.level:g}")
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
