"""Datasets: image folders (paths, transforms, bad files) and the procedural Synthetic heads."""
import logging
import math
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from curriculums import extract_metadata, get_curriculum
from datasets import (CelebAHQ, DatasetError, Synthetic, build_dataset, check_dataset,
                      image_transform, resolve_image_paths)
from generators.cameras import cam2world_from_poses, camera_ray_directions, to_world
from generators.warp import stereo_warp, unproject_depth


def _save(path, array):
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


def _framed(size, border, inner=(0, 200, 0), frame=(255, 0, 0)):
    """A size x size image: `inner` colour with a `border`-pixel frame of another colour."""
    img = np.zeros((size, size, 3), np.uint8)
    img[:] = frame
    img[border:size - border, border:size - border] = inner
    return img


@pytest.fixture
def image_folder(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "sub").mkdir()
    for i in range(3):
        _save(tmp_path / f"img{i}.png", rng.integers(0, 256, (600, 640, 3)))
    _save(tmp_path / "sub" / "deep.jpg", rng.integers(0, 256, (600, 600, 3)))
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


# --------------------------------------------------------------------------- paths

def test_empty_glob_names_path_and_key(tmp_path):
    pattern = str(tmp_path / "nothing" / "*.jpg")
    meta = {"dataset": "CelebAHQ", "dataset_path": pattern}
    for fn in (resolve_image_paths, check_dataset):
        with pytest.raises(DatasetError) as info:
            fn(meta)
        msg = str(info.value)
        assert pattern in msg and "dataset_path" in msg and "CelebAHQ" in msg and "curriculums.py" in msg
    assert issubclass(DatasetError, ValueError)


def test_shipped_placeholder_path_fails_clearly():
    meta = extract_metadata(get_curriculum("FFHQ"), 0)
    with pytest.raises(DatasetError, match="/path/to/ffhq"):
        check_dataset(meta, curriculum_name="FFHQ")


def test_empty_folder_and_missing_path(tmp_path):
    with pytest.raises(DatasetError, match="contains no images"):
        resolve_image_paths({"dataset": "FFHQ", "dataset_path": str(tmp_path)})
    with pytest.raises(DatasetError, match="dataset_path"):
        resolve_image_paths({"dataset": "FFHQ", "dataset_path": None})


def test_folder_is_searched_recursively_and_glob_works(image_folder):
    paths = resolve_image_paths({"dataset": "FFHQ", "dataset_path": str(image_folder)})
    assert len(paths) == 4 and any(p.endswith("deep.jpg") for p in paths)
    assert check_dataset({"dataset": "FFHQ", "dataset_path": str(image_folder / "*.png")}) == 3


def test_unknown_dataset_lists_available():
    with pytest.raises(DatasetError, match="Synthetic") as info:
        build_dataset({"dataset": "Imagenet"}, 32)
    assert "CelebAHQ" in str(info.value)
    with pytest.raises(DatasetError):
        check_dataset({"dataset": "Imagenet"})


# --------------------------------------------------------------------------- images

@pytest.mark.parametrize("name", ["CelebAHQ", "FFHQ", "Cat"])
def test_folder_dataset_items(image_folder, name):
    ds = build_dataset({"dataset": name, "dataset_path": str(image_folder)}, 32, flip=True)
    assert len(ds) == 4
    for i in range(len(ds)):
        image, label = ds[i]
        assert label == 0 and image.shape == (3, 32, 32) and image.dtype == torch.float32
        assert image.min() >= -1 and image.max() <= 1
    assert ds.num_skipped == 0


def test_face_and_cat_crops(tmp_path):
    # Faces: 1024 -> short side 576 keeps the central 1024*512/576 = 910 px; a 50 px frame is cut.
    _save(tmp_path / "face.png", _framed(1024, 50))
    # Cat: centre-crop 472 of a 512 image cuts 20 px per side.
    _save(tmp_path / "cat.png", _framed(512, 18))
    face = image_transform("FFHQ", 16, flip=False)(Image.open(tmp_path / "face.png"))
    cat = image_transform("Cat", 16, flip=False)(Image.open(tmp_path / "cat.png"))
    green = torch.tensor([-1.0, 200 / 127.5 - 1, -1.0])[:, None, None]
    for image in (face, cat):
        assert image.shape == (3, 16, 16)
        assert torch.allclose(image, green.expand_as(image), atol=1e-5)


def test_transform_range_and_antialias(tmp_path):
    board = (np.indices((512, 512)).sum(0) % 2 * 255)[..., None].repeat(3, -1)  # 1-px checkerboard
    image = image_transform("Cat", 16, flip=False, real_resize="antialias")(Image.fromarray(board.astype(np.uint8)))
    assert image.abs().max() < 0.1  # antialiased: mid grey (nearest would give +-1)
    published = image_transform("Cat", 16, flip=False)(Image.fromarray(board.astype(np.uint8)))
    assert set(published.unique().tolist()) <= {-1.0, 1.0}  # nearest, the published default: +-1 only
    half = np.zeros((512, 512, 3), np.uint8)
    half[:, 256:] = 255
    image = image_transform("Cat", 8, flip=False)(Image.fromarray(half))
    assert image.min() == -1 and image.max() == 1
    assert (image[:, :, 0] == -1).all() and (image[:, :, -1] == 1).all()  # not flipped
    torch.manual_seed(0)
    flips = {bool(image_transform("Cat", 8, flip=True)(Image.fromarray(half))[0, 0, 0] == 1)
             for _ in range(20)}
    assert flips == {True, False}


def test_corrupt_file_is_skipped_with_warning(image_folder, caplog):
    good = (image_folder / "img1.png").read_bytes()
    bad = image_folder / "img0.png"  # sorted first
    bad.write_bytes(good[: len(good) // 3])  # truncated PNG
    ds = CelebAHQ(str(image_folder / "*.png"), 16, flip=False)
    with caplog.at_level(logging.WARNING, logger="datasets"):
        image, _ = ds[0]
    assert image.shape == (3, 16, 16)
    assert torch.equal(image, ds[1][0])  # the next readable image
    assert ds.num_skipped == 1
    assert any("img0.png" in r.getMessage() for r in caplog.records)
    ds[0]
    assert ds.num_skipped == 1  # counted once


def test_nothing_readable_raises(tmp_path):
    for i in range(2):
        (tmp_path / f"x{i}.png").write_bytes(b"\x89PNG garbage")
    ds = CelebAHQ(str(tmp_path), 16)
    with pytest.raises(DatasetError, match="readable"):
        ds[0]
    assert ds.num_skipped == 2


# --------------------------------------------------------------------------- Synthetic

def test_synthetic_deterministic_range_shape():
    ds = Synthetic(32, length=10)
    a, label = ds[3]
    assert label == 0 and a.shape == (3, 32, 32) and a.dtype == torch.float32
    assert a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, Synthetic(32, length=10)[3][0])
    assert (a - ds[4][0]).abs().mean() > 0.05
    assert (a - Synthetic(32, length=10, seed=1)[3][0]).abs().mean() > 0.05
    assert len(ds) == 10
    with pytest.raises(IndexError):
        ds[10]
    pickle.loads(pickle.dumps(ds))  # DataLoader workers


def test_synthetic_flip_is_deterministic():
    plain, flipped = Synthetic(16, length=32), Synthetic(16, length=32, flip=True)
    outcomes = set()
    for i in range(32):
        image = flipped[i][0]
        assert torch.equal(image, flipped[i][0])
        outcomes.add(torch.equal(image, plain[i][0].flip(-1)) and not torch.equal(image, plain[i][0]))
    assert outcomes == {True, False}


def test_synthetic_render_pose_and_depth():
    ds = Synthetic(64)
    out = ds.render(2, yaw=math.pi / 2, pitch=math.pi / 2)
    assert out["image"].shape == (3, 64, 64) and out["depth"].shape == (64, 64)
    assert out["mask"].dtype == torch.bool and out["cam2world"].shape == (4, 4)
    assert torch.allclose(out["cam2world"][:3, 3], torch.tensor([0.0, 0.0, 1.0]), atol=1e-6)
    mask, depth = out["mask"], out["depth"]
    assert 0.15 < mask.float().mean() < 0.7
    assert not mask[0].any() and not mask[:, 0].any()  # the head fits in the frame
    assert (depth[~mask] == 1.12).all()
    assert depth[mask].min() > 0.88 and depth[mask].max() < 1.12  # inside [ray_start, ray_end]
    # Depth is the distance along the unit ray: unprojected hits lie on the head's surfaces.
    points = to_world(out["cam2world"][None], unproject_depth(depth[None], ds.fov))[0]
    head = ds.head(2)
    q = (points[mask.reshape(-1)][:, None].double() - head.centres.double()) / head.radii.double()
    on_surface = ((q ** 2).sum(-1) - 1).abs().min(dim=1).values
    assert on_surface.max() < 1e-3
    assert (points[mask.reshape(-1)].abs() < 0.12).all()  # inside the SIREN's box
    # Default pose comes from the distribution, deterministic per index.
    own = ds.render(2)
    assert (own["yaw"], own["pitch"]) == ds.pose_of(2) and own["yaw"] != math.pi / 2
    assert torch.equal(own["image"], ds[2][0])


def test_synthetic_eyes_are_resolved_at_the_training_resolution():
    """The demo trains at 16 px first: an eye has to span more than one pixel there to be learnt.

    Counts the pixel centres of a frontal 16 px view that hit an eyeball or iris (primitives
    1-4, labels 2-5). With the earlier eye radius (0.009-0.012) many eyes hit one pixel.
    """
    ds = Synthetic(16)
    cam2world = cam2world_from_poses(torch.tensor([math.pi / 2]), torch.tensor([math.pi / 2]))[0]
    dirs = camera_ray_directions(16, ds.fov) @ cam2world[:3, :3].T
    pixels_per_eye = []
    for index in range(50):
        label = ds.head(index).radiance(cam2world[:3, 3], dirs)[3]
        pixels_per_eye += [int(((label == 2) | (label == 3)).sum()), int(((label == 4) | (label == 5)).sum())]
    assert min(pixels_per_eye) >= 2
    assert sum(pixels_per_eye) / len(pixels_per_eye) >= 3


def test_synthetic_multiview_ground_truth_consistency():
    """Warping view b into view a with the true cameras reproduces view a; a wrong pose does not."""
    ds = Synthetic(64)
    yaw, pitch = math.pi / 2, math.pi / 2
    for index in (0, 1):
        a = ds.render(index, yaw=yaw, pitch=pitch)
        b = ds.render(index, yaw=yaw + 0.15, pitch=pitch - 0.05)
        wrong_b = ds.render(index, yaw=yaw + 0.45, pitch=pitch - 0.05)["cam2world"]

        def warp(maps, cam_b):
            warped, valid = stereo_warp(aux_maps=maps[None], primary_depth=a["depth"][None],
                                        primary_cam2world=a["cam2world"][None],
                                        aux_cam2world=cam_b[None], fov=ds.fov)
            return warped[0], valid[0]

        warped, valid = warp(b["image"], b["cam2world"])
        # Co-visible pixels: the head in both views, not occluded in b (the distance from
        # camera b to the 3D point agrees with b's depth map there), away from b's silhouette.
        points = to_world(a["cam2world"][None], unproject_depth(a["depth"][None], ds.fov))[0]
        dist_b = (points - b["cam2world"][:3, 3]).norm(dim=-1).reshape(64, 64)
        depth_b_at, _ = warp(b["depth"][None], b["cam2world"])
        mask_b_at, _ = warp(b["mask"][None].float(), b["cam2world"])
        candidates = a["mask"] & valid
        agree = (depth_b_at[0] - dist_b).abs() < 2e-3
        assert (agree & candidates).sum() > 0.85 * candidates.sum()  # geometry matches
        covisible = candidates & agree & (mask_b_at[0] > 0.999)
        assert covisible.sum() > 800

        error = (warped - a["image"]).abs().mean(0)[covisible].mean()
        wrong, _ = warp(b["image"], wrong_b)
        wrong_error = (wrong - a["image"]).abs().mean(0)[covisible].mean()
        assert error < 0.04
        assert wrong_error > 3 * error


def test_build_synthetic_from_curriculum():
    meta = extract_metadata(get_curriculum("Synthetic"), 0)
    assert check_dataset(meta) == meta["synthetic_size"]
    ds = build_dataset(meta, meta["output_size"], flip=True)
    assert isinstance(ds, Synthetic) and len(ds) == meta["synthetic_size"]
    batch, labels = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch.shape == (4, 3, meta["output_size"], meta["output_size"])


def test_16bit_and_float_images_are_scaled_not_clipped(tmp_path):
    from datasets import to_rgb8

    grey16 = np.full((600, 600), 32768, np.uint16)  # mid grey in 16 bits
    Image.fromarray(grey16).save(tmp_path / "grey16.png")
    with Image.open(tmp_path / "grey16.png") as image:
        assert image.mode.startswith("I")
    ds = CelebAHQ(str(tmp_path / "*.png"), 8, flip=False)
    image = ds[0][0]
    assert abs(float(image.mean())) < 0.02  # mid grey maps to ~0 in [-1, 1], not to white (1)
    as_float = to_rgb8(Image.fromarray(np.full((4, 4), 0.5, np.float32)))
    assert np.asarray(as_float).tolist()[0][0] == [128, 128, 128]


def test_images_smaller_than_the_crop_warn_once(tmp_path, caplog):
    for i in range(3):
        _save(tmp_path / f"small{i}.png", np.full((100, 120, 3), 90))
    ds = build_dataset({"dataset": "Cat", "dataset_path": str(tmp_path)}, 8, flip=False)
    with caplog.at_level(logging.WARNING, logger="datasets"):
        for epoch in range(2):
            for i in range(len(ds)):
                ds[i]
    warnings = [r.getMessage() for r in caplog.records if "smaller than the 472x472 crop" in r.getMessage()]
    assert len(warnings) == 1 and "padded with black" in warnings[0]
