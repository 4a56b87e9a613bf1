"""Meshes of a generator's density: the volume on a cube grid, marching cubes, vertex colours.

For one object's codes (`generators.pretrained.codes_for_seed`): `density_volume` samples the raw
density (sigma, 1 / world units) on a cube grid, `extract_mesh` runs marching cubes at a level
(`check_level` refuses a level the volume never crosses), and `coloured_mesh` does both and colours
the vertices (docs/METHOD.md §11): from the field's RGB as a ray entering the surface along the
inward normal sees it (`vertex_colours`, "ray"), at the vertex itself ("point"), or from the decoded
images of views around the object (`image_colours`, `project_colours`, "image"). `shapes.ply` writes
the result; `extract_shapes.py` is the command line.

The level is a raw density sigma of the SIREN: a layer of thickness t at density sigma lets
exp(-sigma * t) of the light through. The default 10 is pi-GAN's.
"""
from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple, Optional

import numpy as np
import torch
import torch.nn.functional as F

from generators.cameras import camera_origins, project_to_camera
from generators.generators import LatentCodes
from generators.pretrained import LoadedModel, cameras_around_mean, codes_for_seed, decoder_alpha, render_options
from generators.volume_rendering import IntegrationOptions, integrate
from utils.rendering_cli import available_memory_bytes, check_memory

DEFAULT_LEVEL = 10.0          # pi-GAN's sigma threshold for shapes (raw density, 1 / world units)
COLOUR_MODES = ("ray", "point", "image", "none")
# "image" colours: the decoded images of views around the object, as yaw and pitch offsets (radians)
# from the mean pose: every 45 degrees all the way round at the mean pitch, and from 1 rad above and
# below at the front, the sides and the back; every direction is within 45 degrees of a view.
_ROUND, _QUARTERS = (0.0, 0.785, -0.785, 1.571, -1.571, 2.356, -2.356, 3.142), (0.0, 1.571, -1.571, 3.142)
IMAGE_VIEW_YAWS = _ROUND + _QUARTERS * 2
IMAGE_VIEW_PITCHES = (0.0,) * 8 + (-1.0,) * 4 + (1.0,) * 4
IMAGE_DEPTH_TOLERANCE = 0.15  # of the ray range: a vertex is visible in a view within this of its depth
COLOUR_SAMPLES = 16           # samples per vertex ray of the "ray" colours
COLOUR_POINTS_PER_CHUNK = 2 ** 16  # field queries per chunk of vertex colours: (chunk, H) features stay small
HOST_BYTES_PER_VOXEL = 16     # float32 volume, marching cubes' working copy, headroom for the mesh
DEVICE_BYTES_PER_VOXEL = 4    # the float32 density grid on the device (the SIREN chunk comes on top)


class Mesh(NamedTuple):
    vertices: np.ndarray  # (V, 3) float32, world units (x, y, z)
    faces: np.ndarray     # (F, 3) int32 vertex indices, outward winding
    level: float          # the iso-level actually used
    normals: Optional[np.ndarray] = None  # (V, 3) float32 outward unit normals (the density's gradient)
    colours: Optional[np.ndarray] = None  # (V, 3) uint8 RGB, or None for a grey mesh


def default_cube_size(metadata) -> float:
    """Side of the cube that holds every point a frontal ray samples: 2 * max(1 - ray_start, ray_end - 1)."""
    return 2.0 * max(1.0 - float(metadata["ray_start"]), float(metadata["ray_end"]) - 1.0)


def density_volume(model: LoadedModel, seed, resolution: int, cube_size: float, psi: float,
                   max_batch_size: int, codes=None) -> np.ndarray:
    """Raw density (float32, (R, R, R), indexed [x, y, z]) of the seed's z (or of a `FittedCodes`, or
    of `codes`) on the cube grid."""
    codes = codes_for_seed(model, seed, psi) if codes is None else codes
    sigma = model.generator.density_grid(None, resolution, half_extent=cube_size / 2,
                                         max_batch_size=max_batch_size, codes=codes)
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


def check_voxel_memory(resolution: int, device) -> None:
    """CLIError when a resolution^3 extraction will not fit in the memory available now."""
    host = available_memory_bytes()
    voxels = [host / HOST_BYTES_PER_VOXEL] if host is not None else []
    if torch.device(device).type == "cuda":
        voxels.append(torch.cuda.mem_get_info(torch.device(device))[0] / DEVICE_BYTES_PER_VOXEL)
    largest = int(min(voxels) ** (1 / 3)) if voxels else resolution  # the smaller room decides
    check_memory(memory_needed(resolution), device, f"--voxel_resolution {resolution}",
                 f"use --voxel_resolution {largest} or less", host_available=host)


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
    vertices, faces, normals, _ = marching_cubes(density, level=level, spacing=spacing,
                                                 gradient_direction="descent")
    vertices = (vertices - cube_size / 2).astype(np.float32)
    # skimage's normals follow the density's descent: out of the solid.
    normals = normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    # skimage winds these faces clockwise seen from outside (in our right-handed [x, y, z]
    # indexing); reverse them so face normals (right-hand rule) point out of the solid.
    return Mesh(vertices, np.ascontiguousarray(faces[:, ::-1], dtype=np.int32), level, normals.astype(np.float32))


# --------------------------------------------------------------------- colours
def vertex_colours(field, vertices: np.ndarray, normals: np.ndarray, view_origin, span: float,
                   integration, mode: str = "ray", num_samples: int = COLOUR_SAMPLES) -> np.ndarray:
    """uint8 (V, 3) colours of mesh vertices (V, 3) with outward normals (V, 3), from a radiance field.

    `field(points (M, 3), directions (M, 3))` returns (rgb (M, 3) in [0, 1], raw density (M,)),
    torch tensors. The colour branch is asked for the colour seen from `view_origin` (3,) (the
    curriculum's mean camera: the directions it was trained around).
    mode "ray": a ray enters the surface at the vertex along its inward normal, from `span`
    outside to `span` inside, `num_samples` samples, integrated like the images
    (`volume_rendering.integrate` with `integration`, IntegrationOptions; the weight left after the
    last sample goes to it): the colour a camera looking straight at the vertex sees.
    mode "point": the field's rgb at the vertex itself.
    """
    if mode not in ("ray", "point"):
        raise ValueError(f"mode must be 'ray' or 'point', got {mode!r}")
    vertices = torch.as_tensor(np.asarray(vertices, np.float32))
    normals = torch.as_tensor(np.asarray(normals, np.float32))
    origin = torch.as_tensor(np.asarray(view_origin, np.float32)).reshape(1, 3)
    samples = num_samples if mode == "ray" else 1
    depths = torch.linspace(0.0, 2 * span, samples)                      # along the inward normal
    integration = replace(integration, last_back=True, white_back=False, nerf_noise=0.0)
    colours = []
    chunk = max(1, COLOUR_POINTS_PER_CHUNK // samples)
    for start in range(0, len(vertices), chunk):
        v, n = vertices[start:start + chunk], normals[start:start + chunk]
        if mode == "point":
            points = v[:, None, :]                                        # (m, 1, 3)
        else:
            points = v[:, None, :] + (span - depths)[None, :, None] * n[:, None, :]  # (m, K, 3) outside -> in
        directions = torch.nn.functional.normalize(points - origin, dim=-1)
        rgb, sigma = field(points.reshape(-1, 3), directions.reshape(-1, 3))
        rgb, sigma = rgb.float().reshape(len(v), samples, 3), sigma.float().reshape(len(v), samples)
        if mode == "point":
            colours.append(rgb[:, 0])
        else:
            colours.append(integrate(rgb[None], sigma[None], depths.expand(1, len(v), samples),
                                     options=integration).rgb[0])
    colour = torch.cat(colours) if colours else torch.zeros(0, 3)
    return (colour.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def generator_field(generator, codes, max_batch_size: Optional[int] = None):
    """The `field` of `vertex_colours` for a generator's codes (batch 1)."""
    def field(points, directions):
        rgb, sigma, _ = generator.query_field(codes, points[None], directions[None], max_batch_size)
        return rgb[0], sigma[0]
    return field


def project_colours(vertices: np.ndarray, normals: np.ndarray, images, depths, opacities, cam2world,
                    fov: float, depth_tolerance: float) -> np.ndarray:
    """uint8 (V, 3) colours of vertices (V, 3) with outward normals (V, 3) from rendered views:
    decoded images (n, 3, out, out) in [0, 1], NeRF depth and opacity (n, S, S), cameras (n, 4, 4).

    A view colours a vertex that projects inside it, faces it (normal towards the camera), lies
    within `depth_tolerance` of the view's depth there and where the view is opaque (> 0.5); the
    views are averaged with weights cos^2 of the angle between normal and view ray, so the most
    frontal views dominate. A vertex no view sees so (a pocket) takes the facing views without the
    depth test, and one that faces none the mean colour of the rest.
    """
    images, depths, opacities = images.float().cpu(), depths.float().cpu(), opacities.float().cpu()
    cam2world = cam2world.float().cpu()
    n, size = depths.shape[0], depths.shape[-1]
    points = torch.as_tensor(np.asarray(vertices, np.float32))[None].expand(n, -1, 3)       # (n, V, 3)
    grid, z = project_to_camera(points, cam2world, fov)                                       # (n, V, 2), (n, V)
    rays = points - cam2world[:, None, :3, 3]
    distance = torch.linalg.vector_norm(rays, dim=-1)                                          # t along the unit ray
    facing = -(F.normalize(rays, dim=-1) * torch.as_tensor(np.asarray(normals, np.float32))[None]).sum(-1)
    # S x S maps have their pixel centres at the rays (align_corners=True); the decoded image spans
    # half a NeRF pixel more on each side (each NeRF pixel becomes a block of out/S pixels).
    sample = lambda maps, coords, corners: F.grid_sample(maps, coords[:, :, None, :], align_corners=corners)[..., 0]
    depth = sample(depths[:, None], grid, True)[:, 0]                                          # (n, V)
    opaque = sample(opacities[:, None], grid, True)[:, 0] > 0.5
    colour = sample(images, grid * (size - 1) / size, False)                                   # (n, 3, V)
    inside = (grid.abs() <= 1).all(-1) & (z < 0) & (facing > 0)
    visible = inside & opaque & ((distance - depth).abs() < depth_tolerance)
    result = torch.zeros(points.shape[1], 3)
    assigned = torch.zeros(points.shape[1], dtype=torch.bool)
    for mask in (visible, inside):
        weights = torch.where(mask, facing.clamp(min=0) ** 2, torch.zeros_like(facing))      # (n, V)
        total = weights.sum(0)
        new = (total > 0) & ~assigned
        result[new] = (torch.einsum("nv,ncv->vc", weights, colour) / total.clamp(min=1e-12)[:, None])[new]
        assigned |= new
    if assigned.any() and not assigned.all():
        result[~assigned] = result[assigned].mean(0)
    return (result.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def image_colours(model: LoadedModel, codes, mesh: Mesh, max_batch_size: Optional[int] = None,
                  batch_size: int = 4) -> np.ndarray:
    """uint8 (V, 3) vertex colours from the decoded images (what the rendering scripts and the viewer show)
    of the object's codes from the IMAGE_VIEW_* cameras at the checkpoint's trained stage (`project_colours`)."""
    options = render_options(model)
    cameras = cameras_around_mean(options, IMAGE_VIEW_YAWS, IMAGE_VIEW_PITCHES, device=model.device)
    outputs = []
    with torch.no_grad():
        for start in range(0, len(cameras), batch_size):
            cams = cameras[start:start + batch_size]
            out = model.generator.render_codes(LatentCodes(*(c.expand(len(cams), -1) for c in codes)), options, cams,
                                               decoder_alpha(model, options), max_batch_size)
            outputs.append(((out.image + 1) / 2, out.depth, out.opacity))
    images, depths, opacities = (torch.cat(parts).cpu() for parts in zip(*outputs))
    tolerance = IMAGE_DEPTH_TOLERANCE * (options.rays.ray_end - options.rays.ray_start)
    return project_colours(mesh.vertices, mesh.normals, images, depths, opacities, cameras.cpu(), options.rays.fov,
                           tolerance)


def coloured_mesh(model: LoadedModel, codes, resolution: int, cube_size: float, level: float,
                  colour: str = "ray", max_batch_size: Optional[int] = None, density: np.ndarray = None) -> Mesh:
    """The mesh of one object's codes (LatentCodes, batch 1) with vertex colours (`colour` "ray" or
    "point": the field's RGB, `vertex_colours`; "image": the decoded images', `image_colours`; "none":
    a grey mesh). `density`: its volume, when already computed.
    Raises ValueError when the volume does not cross `level`."""
    if density is None:
        density = model.generator.density_grid(None, resolution, half_extent=cube_size / 2,
                                               max_batch_size=max_batch_size, codes=codes)[0].float().cpu().numpy()
    mesh = extract_mesh(density, level, cube_size)
    if colour == "none":
        return mesh
    if colour == "image":
        return mesh._replace(colours=image_colours(model, codes, mesh, max_batch_size))
    metadata = model.metadata
    view_origin = camera_origins(torch.tensor([float(metadata["h_mean"])]), torch.tensor([float(metadata["v_mean"])]))
    # one sample spacing of the images' rays on either side of the surface
    span = (float(metadata["ray_end"]) - float(metadata["ray_start"])) / max(1, int(metadata["num_steps"]) - 1)
    device = model.device
    field = generator_field(model.generator, codes, max_batch_size)
    colours = vertex_colours(lambda p, d: tuple(t.cpu() for t in field(p.to(device), d.to(device))),
                             mesh.vertices, mesh.normals, view_origin[0].numpy(), span,
                             IntegrationOptions.from_metadata(metadata, evaluation=True), mode=colour)
    return mesh._replace(colours=colours)
