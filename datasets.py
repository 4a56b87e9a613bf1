"""Training data (docs/METHOD.md §9): image folders (CelebAHQ, FFHQ, Cat) and procedural heads (Synthetic).

Entry points: `build_dataset(metadata, img_size, flip)` builds the dataset a
curriculum names; `check_dataset(metadata)` is the cheap up-front check (run it
before spawning processes) that the curriculum's `dataset_path` matches images.

Every dataset returns `(image, 0)` with image a (3, R, R) float tensor in [-1, 1]
(the 0 is a dummy label, as in pi-GAN). `Synthetic`, the procedural heads that need no
download, lives in synthetic_heads.py.
"""
from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass
from typing import Mapping, Optional, Tuple

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps
from torch.utils.data import Dataset
from torchvision.transforms import v2

from synthetic_heads import Synthetic

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")


class DatasetError(ValueError):
    """The dataset a curriculum names cannot be used (no images, nothing readable ...)."""


# --------------------------------------------------------------------------- #
# Finding the images
# --------------------------------------------------------------------------- #

def _edit_hint(curriculum_name: Optional[str], set_by_flag: bool = False) -> str:
    """Where to fix dataset_path: the --set flag that gave it, or the curriculum in curriculums.py."""
    if set_by_flag:
        return "Fix the path given with --set dataset_path=... (a glob such as '/data/ffhq/*.png', or a folder)."
    name = curriculum_name or "<your curriculum>"
    return (f"Edit the 'dataset_path' key of curriculum {name!r} in curriculums.py, or give it with "
            f"--set dataset_path=... .")


def _find_images(dataset_path, curriculum_name: Optional[str], set_by_flag: bool = False) -> list:
    """Sorted image files matched by a glob, or found (recursively) in a folder."""
    if not dataset_path:
        raise DatasetError(f"No dataset_path is set. {_edit_hint(curriculum_name, set_by_flag)}")
    path = os.path.expanduser(str(dataset_path))
    if os.path.isdir(path):
        paths = []
        for root, _dirs, files in os.walk(path):
            paths.extend(os.path.join(root, f) for f in files
                         if f.lower().endswith(IMAGE_EXTENSIONS))
        what = f"folder {path!r} contains no images ({', '.join(IMAGE_EXTENSIONS)})"
    else:
        paths = [p for p in glob.glob(path, recursive=True) if os.path.isfile(p)]
        what = f"dataset_path {path!r} matches no files"
    if not paths:
        raise DatasetError(f"The {what}. {_edit_hint(curriculum_name, set_by_flag)}")
    return sorted(paths)


def resolve_image_paths(metadata: Mapping, curriculum_name: Optional[str] = None, set_by_flag: bool = False) -> list:
    """The image files of `metadata['dataset_path']` (a glob or a folder).

    Raises DatasetError naming the path and where to fix it (the curriculum key, or the --set flag
    when `set_by_flag`) when nothing matches. Cheap: lists files, opens none.
    """
    return _find_images(metadata["dataset_path"], curriculum_name or metadata["dataset"], set_by_flag)


# check_dataset decodes files until one is a readable image: this many unreadable ones in a row refuse the data.
MAX_UNREADABLE_CHECKED = 32


def check_dataset(metadata: Mapping, curriculum_name: Optional[str] = None, set_by_flag: bool = False) -> int:
    """Fail early with a clear DatasetError if the curriculum's data is unusable: nothing matches
    dataset_path, or the first files matched are not readable images.

    Returns the number of items. Cheap (one image decoded, if the first is readable); call it before
    spawning training processes. `set_by_flag`: dataset_path came from --set (the hint says so).
    """
    name = _dataset_name(metadata)
    if name == "Synthetic":
        return int(metadata["synthetic_size"])
    paths = resolve_image_paths(metadata, curriculum_name, set_by_flag)
    first_error = None
    for path in paths[:MAX_UNREADABLE_CHECKED]:
        checked = read_image(path)
        if not checked.skipped:
            return len(paths)
        first_error = first_error or f"{path}: {checked.reason}"
    checked = min(len(paths), MAX_UNREADABLE_CHECKED)
    what = f"none of the {checked} files" if checked == len(paths) else f"none of the first {checked} files"
    raise DatasetError(f"{what} that dataset_path {metadata['dataset_path']!r} matches is a readable image of at "
                       f"least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} pixels (e.g. {first_error}). "
                       f"{_edit_hint(curriculum_name, set_by_flag)}")


# --------------------------------------------------------------------------- #
# Image-folder datasets
# --------------------------------------------------------------------------- #

# The centre crop of each image dataset (docs/METHOD.md §9); faces are first resized to a short side of 576.
CROP_SIZES = {"CelebAHQ": 512, "FFHQ": 512, "Cat": 472}


# The final resize of a real image to the stage's size (curriculum key `real_resize`): "nearest", as
# published (torchvision's nearest on the normalised tensor: row/column i takes source index
# floor(i * in / out), no averaging), or "antialias", a correction (bilinear with antialiasing,
# what a camera at that resolution would see; docs/METHOD.md §9).
REAL_RESIZES = {"nearest": v2.InterpolationMode.NEAREST, "antialias": v2.InterpolationMode.BILINEAR}


def _crop_steps(dataset: str) -> list:
    if dataset in ("CelebAHQ", "FFHQ"):
        # PIL's bilinear filter (antialiased when shrinking), as torchvision applies it to a PIL image
        return [v2.Resize(576, interpolation=v2.InterpolationMode.BILINEAR, antialias=True),
                v2.CenterCrop(CROP_SIZES[dataset])]
    if dataset == "Cat":
        return [v2.CenterCrop(CROP_SIZES[dataset])]
    raise DatasetError(f"No image transform for dataset {dataset!r}.")


def crop_transform(dataset: str) -> v2.Compose:
    """PIL image -> the dataset's centre crop as a float tensor in [-1, 1] (3, C, C): steps 1-4 of
    the published pipeline (docs/METHOD.md §9), before the flip and the final resize."""
    return v2.Compose(_crop_steps(dataset) + [v2.Lambda(_to_unit_tensor), v2.Normalize([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])])


def _to_unit_tensor(image: Image.Image) -> torch.Tensor:
    """uint8 codes / 255 as float32 (3, H, W), exactly as torchvision's ToTensor divides (v2's
    ToDtype multiplies by 1/255, which differs in the last bit for some codes)."""
    return v2.functional.pil_to_tensor(image).to(torch.float32).div(255)


def final_resize(img_size: int, real_resize: str = "nearest") -> v2.Resize:
    """The last step: the normalised crop to (img_size, img_size) (REAL_RESIZES)."""
    if real_resize not in REAL_RESIZES:
        raise DatasetError(f"real_resize must be one of {sorted(REAL_RESIZES)}, got {real_resize!r}")
    return v2.Resize((img_size, img_size), interpolation=REAL_RESIZES[real_resize],
                     antialias=real_resize == "antialias")


def image_transform(dataset: str, img_size: int, flip: bool = False, real_resize: str = "nearest") -> v2.Compose:
    """PIL image -> (3, img_size, img_size) float tensor in [-1, 1], in the published order: (faces)
    short side to 576, centre crop, to tensor, normalise, random horizontal flip (if `flip`), resize."""
    steps = list(crop_transform(dataset).transforms)
    if flip:
        steps.append(v2.RandomHorizontalFlip(p=0.5))
    return v2.Compose(steps + [final_resize(img_size, real_resize)])


# Transparent pixels are composited on this colour (docs/METHOD.md §9): the published code had no rule
# (an RGBA image made its Normalize fail), and a PNG's hidden colour under alpha 0 is arbitrary.
TRANSPARENT_BACKGROUND = (255, 255, 255)


def has_transparency(image: Image.Image) -> bool:
    """An alpha channel (RGBA, LA, PA, premultiplied RGBa/La) or a transparent palette entry or colour (tRNS)."""
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or \
        (image.mode in ("P", "L", "RGB") and image.info.get("transparency") is not None)


def upright(image: Image.Image) -> Image.Image:
    """`image` turned as its EXIF orientation tag says (a phone photo stored sideways), else itself."""
    if image.getexif().get(ExifTags.Base.Orientation, 1) in (None, 1):
        return image
    return ImageOps.exif_transpose(image)


def to_rgb8(image: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of `image`, upright (its EXIF orientation applied), transparent pixels composited
    on TRANSPARENT_BACKGROUND. 16-bit and 32-bit integer modes are scaled from 0..65535 and float modes
    from [0, 1] (PIL's convert('RGB') clips them instead: a 16-bit PNG became white). An opaque 8-bit
    image converts exactly as convert('RGB') does (tests/test_published_data.py)."""
    image = upright(image)
    if has_transparency(image):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, TRANSPARENT_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode.startswith("I;16") or image.mode == "I":
        array = np.asarray(image, dtype=np.float64) / 257.0
    elif image.mode == "F":
        array = np.asarray(image, dtype=np.float64) * 255.0
    else:
        return image.convert("RGB")
    return Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8)).convert("RGB")


# --------------------------------------------------------------------------- #
# The per-image rules: one function, used by the loader and by dataset_tool.py
# --------------------------------------------------------------------------- #

# Pixels: an image whose shorter side is smaller holds too little to crop or fit anything to, and is
# not used (training skips it with a warning naming the file, dataset_tool.py lists it, invert.py
# refuses it). A 1x1 thumbnail left in a training folder would otherwise become a flat 512 px square.
MIN_IMAGE_SIDE = 16

# What happens to each kind of image, said once: the loader does it, dataset_tool.py reports it with
# these words. The first three are skipped, the others used after the conversion named.
IMAGE_RULES = {
    "unreadable": "skipped: not an image Pillow reads, or damaged",
    "truncated": "skipped: the file ends before the image does",
    "too small": f"skipped: shorter side under {MIN_IMAGE_SIDE} px (datasets.MIN_IMAGE_SIDE)",
    "smaller than the crop": "used: enlarged by the faces' resize to 576, padded with black by Cat's crop",
    "grey": "used: the grey value copied to the three channels",
    "CMYK": "used: converted to RGB by Pillow's convert('RGB')",
    "16-bit": "used: 16-bit and float values scaled to 8 bits (not clipped)",
    "alpha": "used: transparent pixels composited on white",
    "EXIF-rotated": "used: turned as its EXIF orientation tag says",
}
SKIPPED_KINDS = ("unreadable", "truncated", "too small")


@dataclass(frozen=True)
class CheckedImage:
    """What `read_image` found: the 8-bit RGB image to train on (None when skipped), the IMAGE_RULES
    kinds that apply to it, and for a skipped one why, in words (the decoder's message)."""

    image: Optional[Image.Image]
    kinds: Tuple[str, ...] = ()
    reason: str = ""

    @property
    def skipped(self) -> bool:
        return self.image is None


def _kinds_before_conversion(image: Image.Image) -> list:
    kinds = []
    if image.getexif().get(ExifTags.Base.Orientation, 1) not in (None, 1):
        kinds.append("EXIF-rotated")
    if image.mode in ("L", "LA", "La", "1", "I", "F") or image.mode.startswith("I;16"):
        kinds.append("grey")
    if image.mode == "CMYK":
        kinds.append("CMYK")
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        kinds.append("16-bit")
    if has_transparency(image):
        kinds.append("alpha")
    return kinds


def read_image(source, dataset: Optional[str] = None) -> CheckedImage:
    """Decode one image file (a path or a binary file object) fully and apply IMAGE_RULES: the image
    to train on, 8-bit RGB and upright (`to_rgb8`), or None with the reason it is skipped. `dataset`
    (a key of CROP_SIZES) adds "smaller than the crop" where it applies. Never raises for a bad file."""
    try:
        with Image.open(source) as opened:
            kinds = _kinds_before_conversion(opened)
            rgb = to_rgb8(opened)  # forces a full decode
    except Exception as error:  # noqa: BLE001 - truncated, corrupt, not an image, a decompression bomb
        message = f"{type(error).__name__}: {error}"
        return CheckedImage(None, ("truncated" if "truncated" in str(error) else "unreadable",), message)
    if min(rgb.size) < MIN_IMAGE_SIDE:
        return CheckedImage(None, ("too small",), f"{rgb.size[0]}x{rgb.size[1]} pixels, under "
                                                  f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}")
    if dataset in CROP_SIZES and min(rgb.size) < CROP_SIZES[dataset]:
        kinds.append("smaller than the crop")
    return CheckedImage(rgb, tuple(kinds))


class ImageFolderDataset(Dataset):
    """Images from a glob or folder; the files `read_image` skips (unreadable, truncated, too small) are
    skipped with a warning, and the next image is used in their place.

    `num_skipped` counts the distinct unreadable files met so far (per process: each
    DataLoader worker keeps its own count).
    """

    dataset_name = ""

    def __init__(self, dataset_path, img_size: int, flip: bool = False, real_resize: str = "nearest"):
        self.paths = _find_images(dataset_path, self.dataset_name)
        self.img_size = img_size
        self.flip = flip
        self.crop = crop_transform(self.dataset_name)
        self.resize = final_resize(img_size, real_resize)
        self.num_skipped = 0
        self._unreadable = set()
        self._warned_small = False

    def __len__(self) -> int:
        return len(self.paths)

    def _read(self, index: int) -> CheckedImage:
        return read_image(self.paths[index], self.dataset_name)

    def _load(self, index: int) -> Optional[Image.Image]:
        """The image to train on at `index`, or None (warned once per file) when IMAGE_RULES skip it."""
        if index in self._unreadable:
            return None
        checked = self._read(index)
        if checked.skipped:
            self._unreadable.add(index)
            self.num_skipped += 1
            logger.warning("Skipping image %s (%s; %s); using the next one (%d skipped so far in this process).",
                           self.paths[index], checked.reason, IMAGE_RULES[checked.kinds[0]], self.num_skipped)
            return None
        rgb = checked.image
        crop = CROP_SIZES[self.dataset_name]
        if "smaller than the crop" in checked.kinds and not self._warned_small:  # once per process: the data
            self._warned_small = True                                              # set is usually uniform
            logger.warning("Image %s is %dx%d, smaller than the %dx%d crop of %s: it is %s (warned once).",
                           self.paths[index], *rgb.size, crop, crop, self.dataset_name,
                           "padded with black" if self.dataset_name == "Cat" else "upscaled")
        return rgb

    def __getitem__(self, key):
        """`key` is an index, or (index, flip) as the training sampler yields it; a plain index
        is flipped at random when the dataset was built with `flip`. The flip comes before the
        final resize, as published (with nearest resizing the order picks other pixels)."""
        index, flip = key if isinstance(key, tuple) else (key, self.flip and bool(torch.rand(()) < 0.5))
        n = len(self.paths)
        for offset in range(n):
            image = self._load((index + offset) % n)
            if image is not None:
                crop = self.crop(image)
                return self.resize(crop.flip(-1) if flip else crop), 0
        raise DatasetError(f"None of the {n} files of dataset {self.dataset_name!r} is a readable "
                           f"image of at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} pixels (e.g. {self.paths[0]!r}).")


class CelebAHQ(ImageFolderDataset):
    """CelebA-HQ: resize the short side to 576, centre-crop 512, resize to img_size."""

    dataset_name = "CelebAHQ"


class FFHQ(ImageFolderDataset):
    """FFHQ: resize the short side to 576, centre-crop 512, resize to img_size."""

    dataset_name = "FFHQ"


class Cat(ImageFolderDataset):
    """AFHQv2 cats: centre-crop 472, resize to img_size."""

    dataset_name = "Cat"


# --------------------------------------------------------------------------- #
# Dispatch
# --------------------------------------------------------------------------- #

DATASETS = {"CelebAHQ": CelebAHQ, "FFHQ": FFHQ, "Cat": Cat, "Synthetic": Synthetic}


def _dataset_name(metadata: Mapping) -> str:
    name = metadata["dataset"]
    if name not in DATASETS:
        raise DatasetError(f"Unknown dataset {name!r} in the 'dataset' key of the curriculum; "
                           f"available: {', '.join(DATASETS)}.")
    return name


def build_dataset(metadata: Mapping, img_size: int, flip: bool = True) -> Dataset:
    """The dataset named by metadata['dataset'], producing img_size x img_size images (real
    images resized as metadata['real_resize'] says)."""
    name = _dataset_name(metadata)
    if name == "Synthetic":
        return Synthetic(img_size, metadata, flip=flip)
    return DATASETS[name](metadata["dataset_path"], img_size, flip=flip, real_resize=str(metadata["real_resize"]))
