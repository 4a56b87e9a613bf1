"""Training data (docs/METHOD.md §9): image folders (CelebAHQ, FFHQ, Cat), the same prepared once by
dataset_tool.py (a zip or folder of crops with a dataset.json), and procedural heads (Synthetic).

Entry points: `build_dataset(metadata, img_size, flip)` builds the dataset a
curriculum names; `check_dataset(metadata)` is the cheap up-front check (run it
before spawning processes) that the curriculum's `dataset_path` matches images, or a
prepared set that fits the curriculum. `read_image(file)` applies the per-image rules
(IMAGE_RULES: what is skipped, what converted), for the loader and dataset_tool.py alike.

Every image dataset returns `(image, 0)` with image a (3, R, R) float tensor in [-1, 1]
(the 0 is a dummy label, as in pi-GAN). The procedural sets that need no download, `Synthetic`
(heads) and `Critters` (animals seen from all around), live in synthetic_heads.py and return
`(image, pose)` with the image's true (pitch, yaw), which `real_pose_lambda` uses.
"""
from __future__ import annotations

import glob
import io
import json
import logging
import os
import zipfile
from dataclasses import dataclass
from typing import Mapping, Optional, Tuple

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps
from torch.utils.data import Dataset
from torchvision.transforms import v2

from synthetic_heads import PROCEDURAL_DATASETS, Critters, Synthetic  # noqa: F401 (re-exported)

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


def check_dataset(metadata: Mapping, curriculum_name: Optional[str] = None, set_by_flag: bool = False,
                  output_sizes: Optional[Mapping] = None) -> int:
    """Fail early with a clear DatasetError if the curriculum's data is unusable: nothing matches
    dataset_path, or the first files matched are not readable images; for a prepared set (dataset_tool.py),
    its dataset.json does not fit the curriculum: another crop, another transform version, or images
    smaller than a stage's size (`output_sizes`: {stage: output_size} of the stages the run reaches).

    Returns the number of items. Cheap (one image decoded, if the first is readable); call it before
    spawning training processes. `set_by_flag`: dataset_path came from --set (the hint says so).
    """
    name = _dataset_name(metadata)
    if name in PROCEDURAL_DATASETS:
        return int(metadata["synthetic_size"])
    if is_prepared(metadata["dataset_path"]):
        prepared = PreparedSet(metadata["dataset_path"])
        problem = prepared.problem(name, output_sizes or {})
        if problem:
            raise DatasetError(problem)
        if not prepared.names or PreparedDataset(prepared.path, name, 1)._codes(0) is None:
            raise DatasetError(f"the prepared set {prepared.path} has no readable first image: prepare it again "
                               f"with dataset_tool.py")
        return len(prepared.names)
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


def _normalise(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes -> float32 in [-1, 1]: ToTensor's /255, then Normalize(0.5, 0.5)'s (x - 0.5) / 0.5."""
    return codes.to(torch.float32).div(255).sub(0.5).div(0.5)


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
        self.crop_steps = v2.Compose(_crop_steps(self.dataset_name))  # PIL -> PIL: the 8-bit crop
        self.resize = final_resize(img_size, real_resize)
        self.nearest = real_resize == "nearest"
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
            return self._skip(index, checked.reason, checked.kinds[0])
        rgb = checked.image
        crop = CROP_SIZES[self.dataset_name]
        if "smaller than the crop" in checked.kinds and not self._warned_small:  # once per process: the data
            self._warned_small = True                                              # set is usually uniform
            logger.warning("Image %s is %dx%d, smaller than the %dx%d crop of %s: it is %s (warned once).",
                           self.paths[index], *rgb.size, crop, crop, self.dataset_name,
                           "padded with black" if self.dataset_name == "Cat" else "upscaled")
        return rgb

    def _skip(self, index: int, reason: str, kind: str) -> None:
        self._unreadable.add(index)
        self.num_skipped += 1
        logger.warning("Skipping %s image %s (%s; %s); using the next one (%d skipped so far in this process).",
                       kind, self.paths[index], reason, IMAGE_RULES[kind], self.num_skipped)

    def _codes(self, index: int) -> Optional[torch.Tensor]:
        """The 8-bit crop of the image at `index`, (3, C, C) uint8, or None when it is skipped."""
        image = self._load(index)
        return None if image is None else v2.functional.pil_to_tensor(self.crop_steps(image))

    def finish(self, codes: torch.Tensor, flip: bool) -> torch.Tensor:
        """The 8-bit crop (3, C, C) -> (3, img_size, img_size) in [-1, 1]: to [0, 1], normalise, flip, resize
        (steps 3-6 of the published pipeline). Nearest resizing only picks pixels, and the flip only reorders
        them, so both run on the 8-bit codes before the per-pixel steps: bit for bit the published order's
        result (tests/test_published_data.py), with the arithmetic on the resized image only."""
        if flip:
            codes = codes.flip(-1)
        if self.nearest:
            return _normalise(self.resize(codes))
        return self.resize(_normalise(codes))

    def __getitem__(self, key):
        """`key` is an index, or (index, flip) as the training sampler yields it; a plain index
        is flipped at random when the dataset was built with `flip`. The flip comes before the
        final resize, as published (with nearest resizing the order picks other pixels)."""
        index, flip = key if isinstance(key, tuple) else (key, self.flip and bool(torch.rand(()) < 0.5))
        n = len(self.paths)
        for offset in range(n):
            codes = self._codes((index + offset) % n)
            if codes is not None:
                return self.finish(codes, flip), 0
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
# Prepared sets (dataset_tool.py): each image's crop stored once, as a lossless PNG, in a zip or folder
# --------------------------------------------------------------------------- #

PREPARED_INFO = "dataset.json"  # what dataset_tool.py writes beside the images: crop, size, count, version
# The version of what `read_image` and the crop steps compute. Bump it when either changes: a set prepared
# by older code is then refused instead of trained on as if it were what the raw images give now.
TRANSFORM_VERSION = 1
# How a prepared set stores the crops: 8-bit PNGs (compressed: about 0.4 MB each at 512², a PNG decode per
# item), or uncompressed arrays (0.79 MB, nothing to decode; docs/PERFORMANCE.md). Both are lossless.
PREPARED_FORMATS = {"png": ".png", "npy": ".npy"}


def crop_spec(dataset: str) -> dict:
    """The deterministic part of `dataset`'s transform, as dataset.json records it: the short side the image
    is first resized to (None: no resize) and the centre crop's side. CelebAHQ and FFHQ share theirs."""
    if dataset not in CROP_SIZES:
        raise DatasetError(f"dataset {dataset!r} has no image crop; the ones with one: {', '.join(CROP_SIZES)}")
    return {"short_side": 576 if dataset in ("CelebAHQ", "FFHQ") else None, "crop": CROP_SIZES[dataset]}


def describe_crop(spec: Mapping) -> str:
    short = f"short side to {spec['short_side']}, " if spec.get("short_side") else ""
    return f"{short}centre crop {spec['crop']}"


def center_crop(image: Image.Image, dataset: str) -> Image.Image:
    """The dataset's crop of an 8-bit RGB image, still 8-bit: steps 1-2 of the published pipeline, what a
    prepared set stores (crop_transform is this, then to a tensor in [-1, 1])."""
    return v2.Compose(_crop_steps(dataset))(image)


def is_prepared(dataset_path) -> bool:
    """Whether `dataset_path` names a prepared set: a .zip file, or a folder holding a dataset.json."""
    if not dataset_path:
        return False
    path = os.path.expanduser(str(dataset_path))
    return (path.lower().endswith(".zip") and not os.path.isdir(path)) or \
        os.path.isfile(os.path.join(path, PREPARED_INFO))


class PreparedSet:
    """The images and dataset.json of a prepared zip or folder; a zip is opened once per process (the
    loader's workers are forked: a shared handle's file offset would mix their reads)."""

    def __init__(self, path):
        self.path = os.path.expanduser(str(path))
        self.is_zip = not os.path.isdir(self.path)
        self._zip, self._pid = None, None
        if self.is_zip:
            if not os.path.isfile(self.path):
                raise DatasetError(f"dataset_path {self.path!r}: no such file")
            if not zipfile.is_zipfile(self.path):
                raise DatasetError(f"dataset_path {self.path!r} is not a zip file (make one with dataset_tool.py)")
            names = self._open().namelist()
        else:
            names = [os.path.relpath(os.path.join(root, f), self.path).replace(os.sep, "/")
                     for root, _dirs, files in os.walk(self.path) for f in files]
        if PREPARED_INFO not in names:
            raise DatasetError(f"dataset_path {self.path!r} has no {PREPARED_INFO}: it was not made by dataset_tool.py "
                               f"(prepare it with: python dataset_tool.py --source ... --dest {self.path})")
        try:
            self.info = json.loads(self.read(PREPARED_INFO))
            count = int(self.info["count"])
            int(self.info["size"]), dict(self.info["crop"])  # present and well formed
        except (ValueError, KeyError, TypeError) as error:
            raise DatasetError(f"{self.path}: {PREPARED_INFO} cannot be read ({type(error).__name__}: {error}); "
                               f"prepare the set again with dataset_tool.py") from None
        extension = PREPARED_FORMATS.get(self.info.get("image_format"))
        if extension is None:
            raise DatasetError(f"{self.path}: {PREPARED_INFO} names image_format {self.info.get('image_format')!r}; "
                               f"this code reads {', '.join(PREPARED_FORMATS)}")
        self.names = sorted(n for n in names if n.lower().endswith(extension))
        if len(self.names) != count:
            raise DatasetError(f"{self.path} holds {len(self.names)} images but its {PREPARED_INFO} says {count}: an "
                               f"incomplete or altered set; prepare it again with dataset_tool.py")

    def _open(self) -> zipfile.ZipFile:
        if self._zip is None or self._pid != os.getpid():
            self._zip, self._pid = zipfile.ZipFile(self.path), os.getpid()
        return self._zip

    def read(self, name: str) -> bytes:
        if self.is_zip:
            return self._open().read(name)
        with open(os.path.join(self.path, name), "rb") as f:
            return f.read()

    def __getstate__(self):
        return dict(self.__dict__, _zip=None, _pid=None)

    def problem(self, dataset: str, output_sizes: Mapping) -> Optional[str]:
        """Why this set cannot train `dataset` at `output_sizes` ({stage: output size}), or None."""
        info, where = self.info, f"the prepared set {self.path}"
        version = info.get("transform_version")
        if version != TRANSFORM_VERSION:
            return (f"{where} was made with transform version {version}, this code applies version "
                    f"{TRANSFORM_VERSION} (datasets.TRANSFORM_VERSION): prepare it again with dataset_tool.py")
        wanted = crop_spec(dataset)
        if dict(info["crop"]) != wanted:
            return (f"{where} was made for another crop ({describe_crop(info['crop'])}, dataset "
                    f"{info.get('dataset')!r}) than {dataset}'s ({describe_crop(wanted)}): prepare it again with "
                    f"dataset_tool.py --curriculum {dataset}")
        size = int(info["size"])
        if size < wanted["crop"]:
            for stage, output_size in sorted(output_sizes.items()):
                if output_size > size:
                    return (f"{where} holds {size}x{size} images, too small for stage {stage} (output_size "
                            f"{output_size}): prepare it again at --size {wanted['crop']} (the crop), or stop the "
                            f"run before that stage with --max_steps")
        return None


class PreparedDataset(ImageFolderDataset):
    """A prepared set (dataset_tool.py): every image is the dataset's crop, stored losslessly, so an item is
    what ImageFolderDataset gives for the raw image, bit for bit, without decoding and cropping it at
    full size. The flip and the final resize are the same code."""

    def __init__(self, dataset_path, dataset_name: str, img_size: int, flip: bool = False,
                 real_resize: str = "nearest"):
        self.dataset_name = dataset_name
        self.prepared = PreparedSet(dataset_path)
        self.paths = self.prepared.names
        self.img_size = img_size
        self.flip = flip
        self.crop_steps = v2.Identity()  # the stored image is the crop
        self.resize = final_resize(img_size, real_resize)
        self.nearest = real_resize == "nearest"
        self.num_skipped = 0
        self._unreadable = set()
        self._warned_small = False

    def _read(self, index: int) -> CheckedImage:
        try:
            data = self.prepared.read(self.paths[index])
        except (OSError, zipfile.BadZipFile, KeyError) as error:
            return CheckedImage(None, ("unreadable",), f"{type(error).__name__}: {error}")
        return read_image(io.BytesIO(data))

    def _codes(self, index: int) -> Optional[torch.Tensor]:
        if not self.paths[index].endswith(".npy"):
            return super()._codes(index)
        if index in self._unreadable:
            return None
        try:  # the crop's codes, (C, C, 3) uint8, uncompressed: nothing to decode
            array = np.load(io.BytesIO(self.prepared.read(self.paths[index])), allow_pickle=False)
            if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
                raise ValueError(f"a {array.dtype} array of shape {array.shape}, not (H, W, 3) uint8")
        except (OSError, ValueError, zipfile.BadZipFile, KeyError) as error:
            return self._skip(index, f"{type(error).__name__}: {error}", "unreadable")
        return torch.from_numpy(array.copy()).permute(2, 0, 1)  # a copy: np.load's buffer is read-only

# --------------------------------------------------------------------------- #
# Dispatch
# --------------------------------------------------------------------------- #

DATASETS = {"CelebAHQ": CelebAHQ, "FFHQ": FFHQ, "Cat": Cat, **PROCEDURAL_DATASETS}


def _dataset_name(metadata: Mapping) -> str:
    name = metadata["dataset"]
    if name not in DATASETS:
        raise DatasetError(f"Unknown dataset {name!r} in the 'dataset' key of the curriculum; "
                           f"available: {', '.join(DATASETS)}.")
    return name


def build_dataset(metadata: Mapping, img_size: int, flip: bool = True) -> Dataset:
    """The dataset named by metadata['dataset'], producing img_size x img_size images (real
    images resized as metadata['real_resize'] says), from raw images or a prepared set (is_prepared)."""
    name = _dataset_name(metadata)
    if name in PROCEDURAL_DATASETS:
        return PROCEDURAL_DATASETS[name](img_size, metadata, flip=flip)
    if is_prepared(metadata["dataset_path"]):
        return PreparedDataset(metadata["dataset_path"], name, img_size, flip=flip,
                               real_resize=str(metadata["real_resize"]))
    return DATASETS[name](metadata["dataset_path"], img_size, flip=flip, real_resize=str(metadata["real_resize"]))
