"""A user's picture -> the image a checkpoint was trained on (docs/METHOD.md §11.1).

`read_photo(path)` opens any file PIL reads and returns an 8-bit RGB image and notes on what
was converted (16-bit and float images are scaled, not clipped; transparency is flattened on
white; grayscale becomes three equal channels; the EXIF orientation is applied); anything
else is a `CLIError` with one line. `align_face(image, dataset)` crops a face found by
scikit-image's LBP frontal-face cascade (its weights ship inside scikit-image, a dependency
already, so nothing downloads) the way FFHQ's alignment frames a face. `prepare_target(image,
dataset, size)` applies the training data's own crop and resize (datasets.image_transform)
and returns a (1, 3, size, size) tensor in [0, 1].
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from datasets import CROP_SIZES, MIN_IMAGE_SIDE, image_transform, to_rgb8
from utils.cli import CLIError, input_file

# pixels: the shorter side of a picture that is refused, the rule training's loader and dataset_tool.py apply
MIN_SIDE = MIN_IMAGE_SIDE
FACE_DATASETS = ("CelebAHQ", "FFHQ")
# FFHQ's alignment crops a square of side 2 * max(2 * eye distance, 1.8 * eye-to-mouth distance)
# centred 0.1 eye-to-mouth below the eyes' midpoint. In the LBP cascade's box the eyes sit at
# 0.34 of its height, 0.42 of its width apart, and the mouth at 0.78 (measured on scikit-image's
# astronaut photo): a side of 1.7 box widths, centred 0.385 box heights below its top.
FACE_CROP_SCALE = 1.7
FACE_CENTRE_Y = 0.385
DETECTION_SIDE = 512  # the detector runs on a copy at most this large (it is slow on big photos)


def read_photo(path) -> Tuple[Image.Image, List[str]]:
    """(8-bit RGB image, notes on conversions) for any picture PIL can read; CLIError otherwise."""
    path = input_file(path, "--image")
    notes = []
    try:
        with Image.open(path) as opened:
            if getattr(opened, "n_frames", 1) > 1:
                notes.append(f"{path.name} has {opened.n_frames} frames; the first is used")
            opened.seek(0)
            image = ImageOps.exif_transpose(opened)  # phones store rotated pixels plus an orientation tag
            image.load()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CLIError(f"--image {path} is not a picture that can be read ({reason})") from None
    mode = image.mode
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        flat = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        flat.alpha_composite(rgba)
        image = flat.convert("RGB")
        notes.append(f"{path.name} has transparency ({mode}); it was flattened on white")
    elif mode.startswith("I;16") or mode in ("I", "F"):
        image = to_rgb8(image)
        notes.append(f"{path.name} is a {'16-bit' if mode != 'F' else 'floating-point'} image ({mode}); "
                     "it was scaled to 8 bits")
    elif mode in ("L", "1"):
        image = image.convert("RGB")
        notes.append(f"{path.name} is grayscale; the generator paints in colour, so expect a coloured fit of a "
                     "gray picture")
    else:
        image = image.convert("RGB")
    if min(image.size) < MIN_SIDE:
        raise CLIError(f"--image {path} is {image.size[0]}x{image.size[1]} pixels; at least {MIN_SIDE}x{MIN_SIDE} "
                       "is needed (datasets.MIN_IMAGE_SIDE: training skips such images too)")
    return image, notes


def _detect_faces(image: Image.Image) -> List[Tuple[float, float, float, float]]:
    """Face boxes (left, top, width, height) in the image's pixels, largest first."""
    from skimage.data import lbp_frontal_face_cascade_filename
    from skimage.feature import Cascade

    scale = min(1.0, DETECTION_SIDE / max(image.size))
    small = image.resize((max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale))),
                         Image.Resampling.LANCZOS) if scale < 1 else image
    side = min(small.size)
    detector = Cascade(lbp_frontal_face_cascade_filename())
    found = detector.detect_multi_scale(img=np.asarray(small), scale_factor=1.2, step_ratio=1,
                                        min_size=(max(24, side // 10),) * 2, max_size=(side, side))
    boxes = [(d["c"] / scale, d["r"] / scale, d["width"] / scale, d["height"] / scale) for d in found]
    return sorted(boxes, key=lambda box: -box[2] * box[3])


def face_crop_box(face: Tuple[float, float, float, float]) -> Tuple[int, int, int, int]:
    """The FFHQ-like square (left, top, right, bottom) around a detected face box."""
    left, top, width, height = face
    side = FACE_CROP_SCALE * width
    centre_x, centre_y = left + width / 2, top + FACE_CENTRE_Y * height
    x0, y0 = round(centre_x - side / 2), round(centre_y - side / 2)
    return x0, y0, x0 + round(side), y0 + round(side)


def crop_with_padding(image: Image.Image, box: Tuple[int, int, int, int]) -> Image.Image:
    """`image` cropped to `box`; where the box leaves the image, the edge pixels are repeated
    (FFHQ pads by reflection and blurs; repeating the edge keeps it simple and seam-free)."""
    x0, y0, x1, y1 = box
    w, h = image.size
    pad = max(0, -x0, -y0, x1 - w, y1 - h)
    array = np.asarray(image)
    if pad:
        array = np.pad(array, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    return Image.fromarray(array[y0 + pad:y1 + pad, x0 + pad:x1 + pad])


def align_face(image: Image.Image, dataset: str) -> Tuple[Image.Image, List[str]]:
    """Crop the largest frontal face the way the face datasets are framed; CLIError when the
    checkpoint is not a face model or no face is found."""
    if dataset == "Cat":
        raise CLIError("--align finds human faces only; no cat-face detector ships with the project's packages. "
                       f"Pass a crop like AFHQv2's (the cat's face centred and filling the square; the "
                       f"{CROP_SIZES['Cat']} px centre of a 512 px crop is used) without --align")
    if dataset not in FACE_DATASETS:
        raise CLIError(f"--align is for face checkpoints ({', '.join(FACE_DATASETS)}); this one was trained on "
                       f"{dataset}: pass the picture without --align")
    faces = _detect_faces(image)
    if not faces:
        raise CLIError("--align: no frontal face found in the picture; pass a crop aligned like FFHQ's (eyes level "
                       "a little above the centre, the face filling the middle half) without --align")
    notes = [] if len(faces) == 1 else [f"--align: {len(faces)} faces found; the largest is used"]
    return crop_with_padding(image, face_crop_box(faces[0])), notes


def prepare_target(image: Image.Image, dataset: str, size: int) -> torch.Tensor:
    """The training data's crop and resize of `image`: (1, 3, size, size) in [0, 1].

    Face and cat checkpoints get `datasets.image_transform` (CelebAHQ/FFHQ: short side to 576,
    centre 512; Cat: centre 472; then an antialiased resize); Synthetic, whose images are
    rendered whole, a centre square and the resize.
    """
    if dataset in CROP_SIZES:
        return (image_transform(dataset, size, flip=False)(image)[None] + 1) / 2
    side = min(image.size)
    left, top = (image.size[0] - side) // 2, (image.size[1] - side) // 2
    square = image.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.LANCZOS)
    return torch.from_numpy(np.asarray(square, dtype=np.float32) / 255).permute(2, 0, 1)[None]
