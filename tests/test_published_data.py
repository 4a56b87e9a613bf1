"""The real-image transforms against the published ones (docs/METHOD.md §9).

`tests/fixtures/published_data/` holds three odd-sized images and what the published dataset
classes (CelebAHQ, FFHQ, Cat; flip off) return for them at 64, 128 and (faces) 512 px; its README
lists every step. The default (`real_resize: "nearest"`) must match bit for bit; the opt-in
correction (`"antialias"`) is checked against Pillow's antialiased bilinear resize of the same crop.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from curriculums import with_defaults
from datasets import build_dataset, crop_transform, image_transform
from utils.images import to_uint8

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "published_data"
IMAGES = ("img_a", "img_b", "img_c")


@pytest.fixture(scope="module")
def expected():
    return torch.load(FIXTURE / "expected.pt", weights_only=True)["outputs"]


def transformed(dataset: str, image: str, size: int, **kwargs) -> torch.Tensor:
    with Image.open(FIXTURE / f"{image}.png") as pil:
        return image_transform(dataset, size, **kwargs)(pil)


def published_512(image: str) -> torch.Tensor:
    """README: the faces' 512 px output, stored as the uint8 codes of the crop."""
    codes = torch.from_numpy(np.array(Image.open(FIXTURE / f"{image}_faces512.png"))).permute(2, 0, 1)
    return (codes.to(torch.float32).div(255) - 0.5) / 0.5


@pytest.mark.parametrize("dataset", ["CelebAHQ", "FFHQ", "Cat"])
@pytest.mark.parametrize("image", IMAGES)
@pytest.mark.parametrize("size", [64, 128])
def test_default_transform_is_the_published_one_bit_for_bit(expected, dataset, image, size):
    assert torch.equal(transformed(dataset, image, size), expected[dataset][image][str(size)])


@pytest.mark.parametrize("dataset", ["CelebAHQ", "FFHQ"])
@pytest.mark.parametrize("image", IMAGES)
def test_faces_at_512_are_the_published_crop(dataset, image):
    assert torch.equal(transformed(dataset, image, 512), published_512(image))


@pytest.mark.parametrize("dataset", ["FFHQ", "Cat"])
def test_the_dataset_class_gives_the_published_tensor_and_flips_before_the_resize(tmp_path, expected, dataset):
    """What training reads (build_dataset, keys (index, flip) from the sampler) is the fixture's
    tensor; a flipped item is the published flip (on the crop) followed by the nearest resize,
    which picks other columns than flipping the resized image would."""
    (tmp_path / "img_c.png").write_bytes((FIXTURE / "img_c.png").read_bytes())
    data = build_dataset(with_defaults({"dataset": dataset, "dataset_path": str(tmp_path)}), 64, flip=False)
    image, _ = data[(0, False)]
    assert torch.equal(image, expected[dataset]["img_c"]["64"])
    flipped, _ = data[(0, True)]
    with Image.open(FIXTURE / "img_c.png") as pil:
        crop = crop_transform(dataset)(pil)
    step = crop.shape[-1] / 64
    columns = torch.tensor([int(i * step) for i in range(64)])  # nearest: floor(i * in / out)
    assert torch.equal(flipped, crop.flip(-1)[:, columns][:, :, columns])
    assert not torch.equal(flipped, image.flip(-1))


@pytest.mark.parametrize("dataset", ["CelebAHQ", "Cat"])
@pytest.mark.parametrize("image", IMAGES)
def test_antialias_correction_is_pillows_antialiased_bilinear(expected, dataset, image):
    """`real_resize: "antialias"` resizes the normalised crop with torch's antialiased bilinear filter:
    within one 8-bit code (2/255 in [-1, 1]) of Pillow's, and far from nearest on these sharp lines."""
    with Image.open(FIXTURE / f"{image}.png") as pil:
        crop = crop_transform(dataset)(pil)  # (3, C, C) in [-1, 1]
    codes = to_uint8(crop)  # (C, C, 3)
    reference = torch.from_numpy(np.array(Image.fromarray(codes).resize((64, 64), Image.BILINEAR))).permute(2, 0, 1)
    reference = reference.float() / 127.5 - 1
    ours = transformed(dataset, image, 64, real_resize="antialias")
    assert (ours - reference).abs().max() <= 2.5 / 255
    assert (expected[dataset][image]["64"] - reference).abs().max() > 0.25  # nearest is something else
