"""Tests for the mesh library (shapes/: marching cubes on analytic densities, vertex colours, the PLY writer)
and its command line, extract_shapes.py."""
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import extract_shapes as es
import shapes.mesh
from float_tolerance import network_atol
from generators.pretrained import codes_for_seed, load_model
from shapes.mesh import (IMAGE_VIEW_PITCHES, IMAGE_VIEW_YAWS, check_level, coloured_mesh, default_cube_size,
                         density_volume, extract_mesh, project_colours, vertex_colours)
from shapes.ply import PLY_TYPES, write_ply


def read_ply(path, colours: bool = False):
    """Read back what `shapes.ply.write_ply` writes: (vertices (V, 3) float32, faces (F, 3) int32), and
    with `colours` a third item, the (V, 3) uint8 vertex colours or None when the file has none. Only the
    tests need it (users open the meshes in MeshLab, Blender or trimesh)."""
    data = Path(path).read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    counts = {line.split()[1]: int(line.split()[2]) for line in header if line.startswith("element")}
    num_vertices, num_faces = counts["vertex"], counts["face"]
    vertex_lines = header[header.index(next(l for l in header if l.startswith("element vertex"))) + 1:]
    properties = []
    for line in vertex_lines:
        if not line.startswith("property"):
            break
        _, kind, name = line.split()
        properties.append((name, PLY_TYPES[kind]))
    vertex_dtype = np.dtype(properties)
    body = data[end:]
    if "format binary_little_endian 1.0" in header:
        records = np.frombuffer(body, dtype=vertex_dtype, count=num_vertices)
        face_records = np.frombuffer(body, dtype=[("count", "u1"), ("indices", "<i4", (3,))], count=num_faces,
                                     offset=vertex_dtype.itemsize * num_vertices)
        if num_faces and not (face_records["count"] == 3).all():
            raise ValueError(f"{path}: only triangle faces are supported")
        faces = face_records["indices"].astype(np.int32)
    else:
        lines = body.decode("ascii").split("\n")
        values = np.array([[float(v) for v in line.split()] for line in lines[:num_vertices]]).reshape(-1, len(properties))
        records = np.empty(num_vertices, dtype=vertex_dtype)
        for column, (name, _) in enumerate(properties):
            records[name] = values[:, column]
        faces = np.array([[int(v) for v in line.split()[1:]]
                          for line in lines[num_vertices:num_vertices + num_faces]], dtype=np.int32).reshape(-1, 3)
    vertices = np.stack([records["x"], records["y"], records["z"]], axis=1).astype(np.float32)
    if not colours:
        return vertices, faces
    names = vertex_dtype.names
    rgb = (np.stack([records["red"], records["green"], records["blue"]], axis=1).astype(np.uint8)
           if {"red", "green", "blue"} <= set(names) else None)
    return vertices, faces, rgb


def sphere_density(resolution, cube_size, radius, scale=100.0):
    """Density scale * (radius - |p|) on the extract_shapes grid (indexed [x, y, z]); off-centre in x
    by a quarter of the radius so a swapped axis would show."""
    axis = np.linspace(-cube_size / 2, cube_size / 2, resolution)
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    return scale * (radius - np.sqrt((x - radius / 4) ** 2 + y ** 2 + z ** 2)), np.array([radius / 4, 0, 0])


def parse_ply(path):
    """Independent reader: header fields and the body size; checks the body matches the header."""
    data = path.read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii")
    num_vertices = int(re.search(r"element vertex (\d+)", header).group(1))
    num_faces = int(re.search(r"element face (\d+)", header).group(1))
    return header, num_vertices, num_faces, data[end:]


def edge_counts(faces):
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    return counts


def signed_volume(vertices, faces):
    a, b, c = (vertices[faces[:, i]].astype(np.float64) for i in range(3))
    return np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6


def test_sphere_mesh():
    cube, radius, resolution = 0.24, 0.08, 40
    density, centre = sphere_density(resolution, cube, radius)
    mesh = extract_mesh(density, level=0.0, cube_size=cube)
    assert mesh.level == 0.0 and len(mesh.faces) > 100
    assert mesh.vertices.dtype == np.float32 and mesh.faces.dtype == np.int32
    assert np.abs(mesh.vertices).max() <= cube / 2 + 1e-6
    r = np.linalg.norm(mesh.vertices - centre, axis=1)
    voxel = cube / (resolution - 1)
    assert np.abs(r - radius).max() < 0.25 * voxel
    assert (edge_counts(mesh.faces) == 2).all()  # closed surface: every edge shared by two faces
    # Outward winding: positive signed volume close to the sphere's.
    assert signed_volume(mesh.vertices, mesh.faces) == pytest.approx(4 / 3 * np.pi * radius ** 3, rel=0.03)


def test_sphere_normals_point_outwards():
    cube, radius, resolution = 0.24, 0.08, 40
    density, centre = sphere_density(resolution, cube, radius)
    mesh = extract_mesh(density, level=0.0, cube_size=cube)
    radial = (mesh.vertices - centre) / np.linalg.norm(mesh.vertices - centre, axis=1, keepdims=True)
    np.testing.assert_allclose(np.linalg.norm(mesh.normals, axis=1), 1, atol=1e-5)
    assert (mesh.normals * radial).sum(1).min() > 0.99


def test_level_outside_the_density_range_is_refused():
    """No silent fall-back to another level (the mean of a nearly empty field meshes its noise)."""
    density, _ = sphere_density(16, 0.24, 0.08)
    low, high = float(density.min()), float(density.max())
    with pytest.raises(ValueError, match=re.escape(f"range [{low:g}, {high:g}]")):
        extract_mesh(density, level=1e6, cube_size=0.24)
    with pytest.raises(ValueError, match="constant"):
        extract_mesh(np.ones((8, 8, 8)), level=0.5, cube_size=0.24)
    assert check_level(density, 0.0) == 0.0


@pytest.mark.parametrize("binary", [True, False])
def test_ply_round_trip(tmp_path, binary):
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1.5]], np.float32)
    faces = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]], np.int32)
    path = write_ply(tmp_path / "t.ply", vertices, faces, binary=binary)
    header, nv, nf, body = parse_ply(path)
    assert (nv, nf) == (4, 4)
    assert ("binary_little_endian" in header) == binary
    if binary:
        assert len(body) == 12 * nv + 13 * nf
    v, f = read_ply(path)
    np.testing.assert_array_equal(v, vertices)
    np.testing.assert_array_equal(f, faces)


@pytest.mark.parametrize("binary", [True, False])
def test_coloured_ply_round_trip(tmp_path, binary):
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1.5]], np.float32)
    faces = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]], np.int32)
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [7, 128, 250]], np.uint8)
    path = write_ply(tmp_path / "t.ply", vertices, faces, binary=binary, colours=colours)
    header, nv, nf, body = parse_ply(path)
    assert "property float z\nproperty uchar red\nproperty uchar green\nproperty uchar blue\n" in header
    if binary:
        assert len(body) == 15 * nv + 13 * nf
    else:  # one "x y z r g b" line per vertex, as MeshLab and Blender read them
        assert body.decode().splitlines()[3] == "0 0 1.5 7 128 250"
    v, f, c = read_ply(path, colours=True)
    np.testing.assert_array_equal(v, vertices)
    np.testing.assert_array_equal(f, faces)
    np.testing.assert_array_equal(c, colours)
    assert read_ply(write_ply(tmp_path / "grey.ply", vertices, faces, binary=binary), colours=True)[2] is None
    with pytest.raises(ValueError, match="3 colours for 4 vertices"):
        write_ply(tmp_path / "bad.ply", vertices, faces, colours=colours[:3])


def sphere_field(centre, radius, colour, slope=2000.0):
    """A radiance field: density slope * (radius - |p - c|) (the level-0 surface is the sphere), rgb = colour(p)."""
    centre_t = torch.as_tensor(centre, dtype=torch.float32)

    def field(points, directions):
        return colour(points), slope * (radius - torch.linalg.vector_norm(points - centre_t, dim=-1))
    return field


@pytest.mark.parametrize("mode", ["ray", "point"])
def test_vertex_colours_of_a_field_whose_colour_is_known(mode):
    """rgb = 0.5 + 0.5 * the unit vector from the centre: constant along each normal, so both
    modes must give it at every vertex; and it varies over the sphere like a normal map."""
    from generators.volume_rendering import IntegrationOptions

    cube, radius, resolution = 0.24, 0.08, 32
    density, centre = sphere_density(resolution, cube, radius)
    mesh = extract_mesh(density, level=0.0, cube_size=cube)
    centre_t = torch.as_tensor(centre, dtype=torch.float32)
    field = sphere_field(centre, radius, lambda p: 0.5 + 0.5 * torch.nn.functional.normalize(p - centre_t, dim=-1))
    colours = vertex_colours(field, mesh.vertices, mesh.normals, view_origin=(0, 0, 1), span=0.02,
                                integration=IntegrationOptions(clamp_mode="relu"), mode=mode)
    assert colours.shape == (len(mesh.vertices), 3) and colours.dtype == np.uint8
    radial = (mesh.vertices - centre) / np.linalg.norm(mesh.vertices - centre, axis=1, keepdims=True)
    expected = np.round((0.5 + 0.5 * radial) * 255)
    # 1 for rounding; the vertices sit on the grid's linear interpolation of the surface
    assert np.abs(colours.astype(float) - expected).max() <= 2
    assert colours.min(0).max() < 30 and colours.max(0).min() > 225  # every channel spans its range


def test_ray_colours_are_what_a_camera_sees_not_the_level_set():
    """A thin, nearly transparent red skin at the level surface over an opaque green inside: a
    camera sees green, and the "ray" colours say so; "point" colours read the skin's red."""
    from generators.volume_rendering import IntegrationOptions

    cube, radius, resolution = 0.24, 0.08, 32
    density, centre = sphere_density(resolution, cube, radius)
    mesh = extract_mesh(density, level=0.0, cube_size=cube)
    centre_t = torch.as_tensor(centre, dtype=torch.float32)

    def field(points, directions):
        depth_inside = radius - torch.linalg.vector_norm(points - centre_t, dim=-1)
        skin = depth_inside < 0.004
        rgb = torch.where(skin[:, None], torch.tensor([1.0, 0, 0]), torch.tensor([0, 1.0, 0]))
        sigma = torch.where(skin, torch.full_like(depth_inside, 5.0), torch.full_like(depth_inside, 5000.0))
        return rgb, torch.where(depth_inside < 0, torch.zeros_like(sigma), sigma)

    options = IntegrationOptions(clamp_mode="relu")
    ray = vertex_colours(field, mesh.vertices, mesh.normals, (0, 0, 1), 0.02, options, mode="ray")
    point = vertex_colours(field, mesh.vertices, mesh.normals, (0, 0, 1), 0.02, options, mode="point")
    assert np.median(ray[:, 1]) > 200 and np.median(ray[:, 0]) < 40
    assert np.median(point[:, 0]) > 200


def analytic_views(centre, radius, colour, size, out, fov=12.0):
    """What the generator's renders of a sphere with colours colour(points) would be, from the
    "image" colours' cameras: decoded images (n, 3, out, out) (black background), NeRF depth and
    opacity (n, S, S), cameras. The decoded pixels' rays follow the decoder's grid: each NeRF pixel
    a block of out / S pixels, so the image spans half a NeRF pixel beyond the outer rays."""
    from generators.cameras import cam2world_from_poses, camera_ray_directions, directions_through

    cams = cam2world_from_poses(torch.tensor([np.pi / 2 + a for a in IMAGE_VIEW_YAWS]),
                                torch.tensor([np.pi / 2 + a for a in IMAGE_VIEW_PITCHES]))
    c = torch.tensor(centre, dtype=torch.float32)

    def cast(directions, cam):
        d = directions.reshape(-1, 3) @ cam[:3, :3].T
        oc = cam[:3, 3] - c
        b = (d * oc).sum(-1)
        disc = b ** 2 - (oc @ oc - radius ** 2)
        t = -b - disc.clamp(min=0).sqrt()
        return torch.where(disc > 0, t, torch.full_like(t, 1.12)), disc > 0, cam[:3, 3] + t[:, None] * d

    images, depths, opacities = [], [], []
    decoded = ((2 * torch.arange(out) + 1) / out - 1) * size / (size - 1)   # decoded pixel centres, ray units
    for cam in cams:
        t, hit, _ = cast(camera_ray_directions(size, fov), cam)
        depths.append(t.reshape(size, size))
        opacities.append(hit.float().reshape(size, size))
        _, hit, points = cast(directions_through(decoded, fov), cam)
        images.append(torch.where(hit[:, None], colour(points), torch.zeros_like(points)).reshape(out, out, 3)
                      .permute(2, 0, 1))
    return torch.stack(images), torch.stack(depths), torch.stack(opacities), cams


def test_image_colours_project_the_views_onto_the_vertices_that_see_them():
    """Views of a sphere coloured 0.5 + 0.5 * its normal: every vertex gets its own normal's colour
    from the 16 views (median error 0.4, max 4 of 255 measured). Sampling the decoded image on the
    NeRF's pixel grid instead (half a NeRF pixel off at the border) measured median 2.5, max 22."""
    cube, radius, resolution, centre = 0.24, 0.07, 48, (0.02, -0.01, 0.0)
    axis = np.linspace(-cube / 2, cube / 2, resolution)
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    density = 100 * (radius - np.sqrt((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2))
    mesh = extract_mesh(density, 0.0, cube)
    centre_t = torch.tensor(centre, dtype=torch.float32)
    views = analytic_views(centre, radius, lambda p: 0.5 + 0.5 * torch.nn.functional.normalize(p - centre_t, dim=-1),
                           size=16, out=64)
    colours = project_colours(mesh.vertices, mesh.normals, *views, fov=12.0, depth_tolerance=0.036)
    radial = (mesh.vertices - centre) / np.linalg.norm(mesh.vertices - centre, axis=1, keepdims=True)
    error = np.abs(colours - (0.5 + 0.5 * radial) * 255).max(1)
    assert np.median(error) < 1.0 and error.max() < 10
    # what another surface hides in a view does not take its colour: a red wall at depth 0.85 in front
    # of the sphere in the front view; the front of the sphere is then coloured by the other views
    images, depths, opacities, cams = (v.clone() for v in views)
    images[0], depths[0], opacities[0] = torch.tensor([1.0, 0, 0])[:, None, None], 0.85, 1.0
    occluded = project_colours(mesh.vertices, mesh.normals, images, depths, opacities, cams, 12.0, 0.036)
    error = np.abs(occluded - (0.5 + 0.5 * radial) * 255).max(1)
    assert np.median(error) < 1.0 and error.max() < 10


def test_default_cube_size():
    assert default_cube_size({"ray_start": 0.88, "ray_end": 1.12}) == pytest.approx(0.24)
    assert default_cube_size({"ray_start": 0.8, "ray_end": 1.2}) == pytest.approx(0.4)


def test_cli_end_to_end(tmp_path, tiny_checkpoint):
    out = tmp_path / "shapes"
    # A random generator's density need not reach the default level: use the volume's median.
    model = load_model(tiny_checkpoint, device="cpu")
    level = float(np.median(density_volume(model, 0, 16, 0.3, psi=0.5, max_batch_size=10_000)))
    code = es.main(["--path", str(tiny_checkpoint.parent), "--output_dir", str(out), "--seeds", "0",
                    "--voxel_resolution", "16", "--level", str(level), "--save_npy", "--device", "cpu",
                    "--cube_size", "0.3"])
    assert code == 0
    density = np.load(out / "density_0.npy")
    assert density.shape == (16, 16, 16) and density.dtype == np.float32
    header, nv, nf, body = parse_ply(out / "shape_0.ply")
    # coloured by default: x, y, z floats and red, green, blue bytes per vertex
    assert "property uchar red\nproperty uchar green\nproperty uchar blue" in header
    assert nv > 0 and nf > 0 and len(body) == 15 * nv + 13 * nf
    vertices, faces, colours = read_ply(out / "shape_0.ply", colours=True)
    assert np.abs(vertices).max() <= 0.15 + 1e-6
    assert faces.min() >= 0 and faces.max() < nv
    assert colours.shape == (nv, 3) and colours.dtype == np.uint8


def test_cli_matches_library(tmp_path, tiny_checkpoint):
    """The saved volume is the generator's density_grid on the cube, and the mesh is its iso-surface."""
    out = tmp_path / "shapes"
    level = 0.0
    assert es.main(["--path", str(tiny_checkpoint), "--output_dir", str(out), "--seeds", "2", "--ascii",
                    "--voxel_resolution", "12", "--level", str(level), "--save_npy", "--device", "cpu",
                    "--psi", "0.7"]) == 0
    density = np.load(out / "density_2.npy")
    model = load_model(tiny_checkpoint, device="cpu")
    # the CLI queries the 12^3 points in one chunk, this in chunks of 1000: other GEMM blockings, equal
    # to float32 rounding (tests/float_tolerance.py)
    np.testing.assert_allclose(density, density_volume(model, 2, 12, 0.24, psi=0.7, max_batch_size=1000),
                               rtol=0, atol=network_atol(model.generator.siren, torch.from_numpy(density)))
    if (out / "shape_2.ply").exists():
        vertices, _ = read_ply(out / "shape_2.ply")
        expected = extract_mesh(density, level, 0.24).vertices
        np.testing.assert_allclose(vertices, expected, atol=1e-5)


def test_cli_colours_are_the_library_s_and_none_writes_a_grey_mesh(tmp_path, tiny_checkpoint, capsys):
    out = tmp_path / "shapes"
    model = load_model(tiny_checkpoint, device="cpu")
    codes = codes_for_seed(model, 1, 0.5)
    density = density_volume(model, 1, 16, 0.3, 0.5, 10_000, codes=codes)
    level = float(np.median(density))
    for colour in ("ray", "point", "image", "none"):
        assert es.main(["--path", str(tiny_checkpoint), "--output_dir", str(out / colour), "--seeds", "1",
                        "--voxel_resolution", "16", "--level", str(level), "--device", "cpu", "--cube_size", "0.3",
                        "--colour", colour]) == 0
        vertices, faces, colours = read_ply(out / colour / "shape_1.ply", colours=True)
        expected = coloured_mesh(model, codes, 16, 0.3, level, colour, density=density)
        np.testing.assert_allclose(vertices, expected.vertices, atol=1e-6)
        if colour == "none":
            assert colours is None
        else:
            np.testing.assert_array_equal(colours, expected.colours)
        # an untrained field's RGB is a plain grey (sigmoid of small values): the CLI says so
        plain = "the field's colours are plain" in capsys.readouterr().err
        assert plain == (colour in ("ray", "point")), colour


def test_cli_skips_a_seed_whose_volume_misses_the_level(tmp_path, tiny_checkpoint, capsys):
    out = tmp_path / "shapes"
    code = es.main(["--path", str(tiny_checkpoint), "--output_dir", str(out), "--seeds", "0", "--device", "cpu",
                    "--voxel_resolution", "8", "--level", "1e9"])
    assert code == 1  # the work failed for that seed
    err = capsys.readouterr().err
    assert "seed 0: no mesh written: level 1e+09 is outside this volume's density range [" in err
    assert "no mesh for seed(s) 0" in err
    assert not (out / "shape_0.ply").exists()


def test_cli_refuses_a_resolution_that_does_not_fit(tmp_path, tiny_checkpoint, capsys, monkeypatch):
    monkeypatch.setattr(shapes.mesh, "available_memory_bytes", lambda: 2 ** 30)  # 1 GiB free
    code = es.main(["--path", str(tiny_checkpoint), "--output_dir", str(tmp_path / "s"), "--device", "cpu",
                    "--voxel_resolution", "1024"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --voxel_resolution 1024 needs about 16.0 GiB") and "1.0 GiB is available" in err
    assert "use --voxel_resolution 406 or less" in err  # (2^30 / 16 bytes per voxel)^(1/3)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("flag", [["--level", "nan"], ["--cube_size", "inf"], ["--psi", "nan"]])
def test_cli_rejects_non_finite_floats(tmp_path, tiny_checkpoint, flag):
    with pytest.raises(SystemExit) as exit_info:
        es.main(["--path", str(tiny_checkpoint), "--output_dir", str(tmp_path / "s"), *flag])
    assert exit_info.value.code == 2


def test_cli_missing_checkpoint(tmp_path, capsys):
    code = es.main(["--path", str(tmp_path / "missing.pth"), "--output_dir", str(tmp_path / "s")])
    assert code == 2
    assert "not found" in capsys.readouterr().err


def test_every_flag_has_help():
    for action in es.build_parser()._actions:
        assert action.help, action.option_strings


def test_cli_into_a_read_only_folder_is_one_line_before_any_work(read_only_folder, tiny_checkpoint, capsys):
    code = es.main(["--path", str(tiny_checkpoint), "--output_dir", str(read_only_folder / "shapes"), "--seeds", "0",
                    "--device", "cpu", "--voxel_resolution", "8"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: --output_dir {read_only_folder / 'shapes'}: cannot write there (")


def test_every_seed_is_checked_before_a_mesh_is_written(tmp_path, tiny_checkpoint, capsys):
    """Issue 32: `--seeds -5 99999999999999999999` wrote the first mesh, then a traceback."""
    out = tmp_path / "shapes"
    with pytest.raises(SystemExit) as exit_info:
        es.main(["--path", str(tiny_checkpoint), "--output_dir", str(out), "--seeds", "-5", "99999999999999999999",
                 "--voxel_resolution", "16", "--threads", "1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --seeds: seed -5 is out of range" in err and "Traceback" not in err
    assert not out.exists()


def test_a_second_extraction_into_the_same_folder_is_refused_unless_overwrite(tmp_path, tiny_checkpoint, capsys,
                                                                              monkeypatch):
    """Issue 32: extracting the same seeds again into a folder replaced its meshes silently. Now the run is
    refused before the checkpoint is loaded, naming the first file and --overwrite; nothing is written."""
    out = tmp_path / "shapes"
    common = ["--path", str(tiny_checkpoint), "--output_dir", str(out), "--voxel_resolution", "12", "--level", "0",
              "--colour", "none", "--device", "cpu", "--threads", "1"]
    args = [*common, "--seeds", "1", "2", "--save_npy"]
    assert es.main(args) == 0
    planned = es.planned_files(es.build_parser().parse_args(args))
    assert planned == ["shape_1.ply", "density_1.npy", "shape_2.ply", "density_2.npy"]
    assert sorted(p.name for p in out.iterdir()) == sorted(planned)
    (out / "shape_7.ply").write_text("another seed's")
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    capsys.readouterr()
    with monkeypatch.context() as patched:
        patched.setattr(es, "load_model", lambda *a, **k: pytest.fail("the checkpoint was loaded"))
        assert es.main(args) == 2
    err = capsys.readouterr().err
    assert err == (f"error: --output_dir {out} already holds shape_1.ply (and 3 more of the files it would write), "
                   f"which this run would replace; pass --overwrite to replace them, or choose another --output_dir\n")
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()} == before
    # --save_npy off: only the meshes are planned; one of them is enough
    assert es.main([*common, "--seeds", "2", "3"]) == 2
    assert "already holds shape_2.ply, which" in capsys.readouterr().err
    assert es.main([*args, "--overwrite"]) == 0
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    assert after.keys() == before.keys() and after["shape_7.ply"] == before["shape_7.ply"]
    assert all(after[name][1] != before[name][1] for name in planned)
