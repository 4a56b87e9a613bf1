"""Datasets: image folders (paths, transforms, bad files) and building the one a curriculum names
(the procedural Synthetic heads themselves: test_synthetic_heads.py)."""
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from curriculums import extract_metadata, get_curriculum, with_defaults
from datasets import (CelebAHQ, DatasetError, Synthetic, build_dataset, check_dataset,
                      image_transform, resolve_image_paths)


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
    ds = build_dataset(with_defaults({"dataset": name, "dataset_path": str(image_folder)}), 32, flip=True)
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
    ds = build_dataset(with_defaults({"dataset": "Cat", "dataset_path": str(tmp_path)}), 8, flip=False)
    with caplog.at_level(logging.WARNING, logger="datasets"):
        for epoch in range(2):
            for i in range(len(ds)):
                ds[i]
    warnings = [r.getMessage() for r in caplog.records if "smaller than the 472x472 crop" in r.getMessage()]
    assert len(warnings) == 1 and "padded with black" in warnings[0]


def _loaded(path):
    from datasets import to_rgb8

    with Image.open(path) as image:
        return np.asarray(to_rgb8(image))


def test_transparent_pixels_are_composited_on_white(tmp_path):
    """A PNG stores some colour under alpha 0 (here red): it must not show. RGBA, LA and palette images with
    a transparent entry are composited on white, partial alpha blended (docs/METHOD.md §9)."""
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255                                 # red everywhere ...
    rgba[:, :2, 3] = 0                                 # ... transparent on the left
    rgba[:, 2, 3] = 128                                # half transparent
    rgba[:, 3, 3] = 255                                # opaque on the right
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    rgb = _loaded(tmp_path / "rgba.png")
    assert (rgb[:, :2] == 255).all()                   # white, not red
    assert (rgb[:, 3] == [255, 0, 0]).all()
    assert (rgb[:, 2, 0] == 255).all() and (abs(rgb[:, 2, 1:].astype(int) - 127) <= 1).all()
    la = np.stack([np.full((4, 4), 0, np.uint8), np.full((4, 4), 0, np.uint8)], -1)  # black, all transparent
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    assert (_loaded(tmp_path / "la.png") == 255).all()
    palette = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), "P")
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.save(tmp_path / "palette.png", transparency=0)  # entry 0 (red) is transparent
    assert _loaded(tmp_path / "palette.png").tolist() == [[[255] * 3, [0, 0, 255]], [[0, 0, 255], [255] * 3]]


def test_opaque_images_convert_as_before(tmp_path):
    """No alpha, no EXIF turn: exactly PIL's convert('RGB') (the published transforms stay bit for bit)."""
    rng = np.random.default_rng(1)
    _save(tmp_path / "rgb.jpg", rng.integers(0, 256, (16, 24, 3)))
    palette = Image.fromarray(rng.integers(0, 4, (8, 8)).astype(np.uint8), "P")
    palette.putpalette(list(rng.integers(0, 256, 768)))
    palette.save(tmp_path / "opaque_palette.png")
    for name in ("rgb.jpg", "opaque_palette.png"):
        with Image.open(tmp_path / name) as image:
            assert np.array_equal(_loaded(tmp_path / name), np.asarray(image.convert("RGB"))), name


def test_jpeg_exif_orientation_is_applied(tmp_path):
    """A phone stores a portrait photo as landscape pixels plus an EXIF tag saying to turn it."""
    from PIL import ImageOps

    pixels = np.zeros((30, 40, 3), np.uint8)
    pixels[:, :20] = (250, 250, 250)                   # light left half, dark right half
    exif = Image.Exif()
    exif[0x0112] = 6                                   # Orientation: rotate 90 degrees clockwise to view
    Image.fromarray(pixels).save(tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95)
    rgb = _loaded(tmp_path / "phone.jpg")
    assert rgb.shape == (40, 30, 3)                    # portrait, as a viewer shows it
    with Image.open(tmp_path / "phone.jpg") as image:
        assert np.array_equal(rgb, np.asarray(ImageOps.exif_transpose(image).convert("RGB")))
    assert rgb[:20].mean() > 200 and rgb[20:].mean() < 50  # the light half is on top now


# --------------------------------------------------------------------------- the per-image rules

def test_read_image_names_each_kind_and_skips_only_the_unusable(tmp_path):
    """datasets.read_image is the one statement of IMAGE_RULES (the loader and dataset_tool.py both call it)."""
    from datasets import IMAGE_RULES, MIN_IMAGE_SIDE, SKIPPED_KINDS, read_image

    rng = np.random.default_rng(2)
    _save(tmp_path / "fine.png", rng.integers(0, 256, (40, 48, 3)))
    Image.fromarray(np.full((40, 40), 90, np.uint8)).save(tmp_path / "grey.png")
    Image.fromarray(np.full((40, 40), 30000, np.uint16)).save(tmp_path / "deep.png")
    Image.new("CMYK", (40, 40), (10, 20, 30, 40)).save(tmp_path / "cmyk.jpg")
    Image.new("RGBA", (40, 40), (1, 2, 3, 0)).save(tmp_path / "alpha.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (40, 30)).save(tmp_path / "turned.jpg", exif=exif.tobytes())
    _save(tmp_path / "tiny.png", np.zeros((1, 1, 3)))
    _save(tmp_path / "thin.png", np.zeros((MIN_IMAGE_SIDE - 1, 200, 3)))
    good = (tmp_path / "fine.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "text.png").write_bytes(b"hello")
    expected = {"fine.png": (), "grey.png": ("grey",), "deep.png": ("grey", "16-bit"), "cmyk.jpg": ("CMYK",),
                "alpha.png": ("alpha",), "turned.jpg": ("EXIF-rotated",), "tiny.png": ("too small",),
                "thin.png": ("too small",), "cut.png": ("truncated",), "text.png": ("unreadable",)}
    for name, kinds in expected.items():
        checked = read_image(tmp_path / name)
        assert checked.kinds == kinds, name
        assert checked.skipped == bool(set(kinds) & set(SKIPPED_KINDS)), name
        assert all(kind in IMAGE_RULES for kind in kinds)
        if not checked.skipped:
            assert checked.image.mode == "RGB"
    assert read_image(tmp_path / "turned.jpg").image.size == (30, 40)
    assert read_image(tmp_path / "fine.png", "Cat").kinds == ("smaller than the crop",)
    with open(tmp_path / "fine.png", "rb") as f:  # a file object (a zip member) reads the same
        assert np.array_equal(np.asarray(read_image(f).image), np.asarray(read_image(tmp_path / "fine.png").image))


def test_a_tiny_image_in_a_training_folder_is_skipped_with_its_name(tmp_path, caplog):
    """Not used silently: a 1x1 thumbnail would become a flat square at every size."""
    _save(tmp_path / "a_tiny.png", np.full((1, 1, 3), 200))
    _save(tmp_path / "b_real.png", np.full((40, 40, 3), 10))
    ds = build_dataset(with_defaults({"dataset": "FFHQ", "dataset_path": str(tmp_path)}), 8, flip=False)
    with caplog.at_level(logging.WARNING, logger="datasets"):
        image, _ = ds[0]
    assert torch.equal(image, ds[1][0]) and ds.num_skipped == 1
    assert any("a_tiny.png" in r.getMessage() and "1x1" in r.getMessage() for r in caplog.records)
    (tmp_path / "b_real.png").unlink()
    with pytest.raises(DatasetError, match="at least 16x16"):
        check_dataset({"dataset": "FFHQ", "dataset_path": str(tmp_path)})


def test_invert_refuses_below_the_same_minimum():
    from datasets import MIN_IMAGE_SIDE
    from inversion import photo

    assert photo.MIN_SIDE == MIN_IMAGE_SIDE
