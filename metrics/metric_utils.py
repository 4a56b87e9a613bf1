"""What the metrics share: seeded latents and poses, generated images, and the real images with
their cached Inception statistics (docs/METHOD.md §10).

Real images are the dataset's transform at the output size (no flip), written once as
PNGs into a cache folder, with their Inception statistics beside them. Entry points:
`latents`, `eval_poses`, `generated_images`, `prepare_real_images`, `real_statistics`.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import zipfile
from pathlib import Path
from typing import Iterator, Mapping, Optional

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from datasets import build_dataset
from generators.cameras import PoseDistribution, cam2world_from_poses, sample_poses
from generators.generators import RenderOptions, sample_z
from generators.inference import RENDER_BATCH_SIZE, render_in_batches
from metrics.inception import extract_features
from utils.images import to_uint8

OPACITY_THRESHOLD = 0.5               # a NeRF pixel is foreground when its opacity exceeds this
REALS_CACHE_ENV = "MVCGAN_CACHE_DIR"  # overrides ~/.cache/mvcgan as the cache root


# ----------------------------------------------------------------------------- #
# Latents, poses, generated images
# ----------------------------------------------------------------------------- #

def latents(num: int, z_dim: int, metadata: Mapping, seed: int) -> torch.Tensor:
    """Deterministic z (num, z_dim) from `seed`, drawn on the CPU from the curriculum's z_dist."""
    return sample_z(num, z_dim, metadata["z_dist"], generator=torch.Generator().manual_seed(seed))


def eval_poses(num: int, metadata: Mapping, seed: int):
    """(yaw, pitch), each (num,), from the evaluation pose distribution (the training one with the
    *_eval overrides), drawn on the CPU with `seed + 1` (`seed` draws the latents)."""
    return sample_poses(num, PoseDistribution.from_metadata(metadata, evaluation=True),
                        generator=torch.Generator().manual_seed(seed + 1))


def quantize(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images (B, 3, H, W) -> [0, 1] on the CPU, rounded to 8 bits like the real PNGs."""
    return torch.from_numpy(to_uint8(images)).movedim(-1, -3).float() / 255  # (B, H, W, 3) -> (B, 3, H, W)


def generated_images(generator, metadata: Mapping, num_fake: int, psi: float = 1.0,
                     batch_size: int = RENDER_BATCH_SIZE, max_batch_size: Optional[int] = None, seed: int = 0,
                     alpha: float = 1.0, device=None) -> Iterator[torch.Tensor]:
    """Generated images (B, 3, out, out) in [0, 1], quantised to 8 bits, at seeded evaluation poses."""
    z = latents(num_fake, generator.z_dim, metadata, seed)
    cam2world = cam2world_from_poses(*eval_poses(num_fake, metadata, seed))  # (num_fake, 4, 4)
    options = RenderOptions.from_metadata(metadata, evaluation=True)
    for out in render_in_batches(generator, z, cam2world, options, psi=psi, alpha=alpha, batch_size=batch_size,
                                 max_batch_size=max_batch_size, device=device):
        yield quantize(out.image)


def feature_statistics(features: np.ndarray):
    """Mean (d,) and covariance (d, d) of features (n, d), float64."""
    features = np.asarray(features, dtype=np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


# ----------------------------------------------------------------------------- #
# Real images
# ----------------------------------------------------------------------------- #

class ImageFolder(torch.utils.data.Dataset):
    """The PNGs of a folder (sorted by name) as (3, H, W) tensors in [0, 1]."""

    def __init__(self, folder):
        self.files = sorted(Path(folder).glob("*.png"))

    def __len__(self):
        return len(self.files)

    def __getitem__(self, index):
        with Image.open(self.files[index]) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.uint8)
        return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255  # (3, H, W)


def _cache_root(real_dir: Optional[str]) -> Path:
    if real_dir is not None:
        return Path(real_dir).expanduser()
    return Path(os.environ.get(REALS_CACHE_ENV, "~/.cache/mvcgan")).expanduser() / "fid_reals"


def real_images_dir(metadata: Mapping, img_size: int, num_real: int, real_dir: Optional[str] = None) -> Path:
    """Cache folder of the real PNGs: <root>/<dataset>_<size>_<count>_<hash of dataset_path>."""
    dataset = str(metadata["dataset"])
    path_hash = hashlib.sha1(str(metadata["dataset_path"]).encode()).hexdigest()[:8]
    return _cache_root(real_dir) / f"{dataset}_{img_size}_{num_real}_{path_hash}"


def _read_marker(folder: Path) -> Optional[dict]:
    try:
        return json.loads((folder / "complete.json").read_text())
    except (OSError, ValueError):
        return None


def prepare_real_images(metadata: Mapping, img_size: int, num_real: int = 8000, real_dir: Optional[str] = None,
                        batch_size: int = 64, num_workers: int = 0) -> Path:
    """Write `num_real` dataset images (no flip) at `img_size` as PNGs, once; return the folder.

    The folder (see `real_images_dir`) is reused when its `complete.json` marker is
    present. A dataset smaller than `num_real` contributes all its images; more
    than `num_real`: a fixed random subset (seed 0), so the reals don't depend on
    file order.
    """
    folder = real_images_dir(metadata, img_size, num_real, real_dir)
    if _read_marker(folder) is not None:
        return folder
    dataset = build_dataset(metadata, img_size, flip=False)
    if len(dataset) > num_real:
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))
        dataset = torch.utils.data.Subset(dataset, sorted(order[:num_real].tolist()))
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):  # an interrupted earlier attempt
        old.unlink()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    count = 0
    with tqdm(total=len(dataset), desc="real images", unit="img", leave=False, dynamic_ncols=True) as bar:
        for images, _ in loader:
            for image in to_uint8(images):  # (H, W, 3) uint8
                Image.fromarray(image).save(folder / f"{count:06d}.png")
                count += 1
            bar.update(images.shape[0])
    marker = {"dataset": metadata["dataset"], "dataset_path": metadata["dataset_path"],
              "img_size": int(img_size), "num_requested": int(num_real), "num_images": count}
    (folder / "complete.json").write_text(json.dumps(marker, default=str))
    return folder


def real_statistics(folder: Path, inception, device="cpu", batch_size: int = 64, num_workers: int = 0) -> dict:
    """mu, sigma and features of the reals in `folder`, cached as an .npz per Inception weight set."""
    cache = Path(folder) / f"inception_{getattr(inception, 'fingerprint', 'unknown')}.npz"
    if cache.is_file():
        try:
            with np.load(cache) as stats:
                return {key: stats[key] for key in ("mu", "sigma", "features")}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:  # truncated, overwritten
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            print(f"note: the Inception statistics cache {cache} is damaged ({reason}); computing it again",
                  file=sys.stderr)
    images = ImageFolder(folder)
    batches = torch.utils.data.DataLoader(images, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    features = extract_features(batches, inception, device, total=len(images), desc="inception (reals)")
    mu, sigma = feature_statistics(features)
    stats = {"mu": mu, "sigma": sigma, "features": features.astype(np.float32)}
    temporary = cache.with_name(cache.stem + ".partial.npz")
    np.savez(temporary, **stats)
    os.replace(temporary, cache)
    return stats
