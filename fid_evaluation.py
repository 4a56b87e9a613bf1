"""Evaluation of a trained generator: FID, KID and a multi-view consistency score (docs/METHOD.md §10).

Entry points:
* `evaluate(generator, metadata, metrics=("fid",), ...)` -> dict of scores; the
  training loop calls it every `eval_freq` steps with the EMA generator.
* `python fid_evaluation.py --path CKPT [...]` prints one JSON line of results and,
  for a checkpoint inside a run directory, appends it to `<run_dir>/metrics.jsonl`.

Metrics (the registry is `METRICS`):
* `fid`: Fréchet distance between Inception pool features (pytorch-fid's 2048-d
  InceptionV3 with the TF-FID weights) of real and generated images.
* `kid`: kernel inception distance (unbiased polynomial-kernel MMD, as in
  StyleGAN2-ADA) on the same features; reported raw (multiply by 1000 for the
  usual "KID x 10^3").
* `mvc`: multi-view consistency. Two views of the same z, a yaw step apart; view b
  is warped into view a with view a's depth (`generators.warp.stereo_warp`) and the
  photometric error over valid pixels is reported (L1 on [0,1] images, and PSNR),
  for the NeRF images and for the final upsampled images, with the fraction of
  opaque NeRF pixels beside it (an empty NeRF is trivially "consistent").
* `synthetic`: ground truth for a generator trained on the embedded `Synthetic`
  heads, needing no download. At poses drawn from the training distribution it
  compares generated heads with real heads at the same poses: silhouette IoU (NeRF
  opacity > 0.5 against the true mask), depth error where both are foreground, and
  KID on 16x16 pixels for appearance. It also reports the same scores for real
  heads against other real heads (the ceiling) and for an untrained generator of
  the same architecture (the floor), and how much of that gap the generator closes.

Real images are the dataset's transform at the output size (no flip), written once
as PNGs into a cache folder together with their Inception statistics. The
Inception weights are never downloaded silently-and-forever: see `load_inception`
for the offline behaviour.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import socket
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, NamedTuple, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from utils.rendering_cli import CLIError, finite_float, load_model, run_cli

# ----------------------------------------------------------------------------- #
# Constants
# ----------------------------------------------------------------------------- #

FEATURE_DIM = 2048                    # Inception's final average-pool features
INCEPTION_SIZE = 299                  # pytorch-fid resizes every input to this
FID_WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_HASH_PREFIX = "6726825d"  # sha256 prefix, checked by torch.hub on download
DOWNLOAD_TIMEOUT_S = 15.0
METRICS = ("fid", "kid", "mvc", "synthetic")  # names accepted by `evaluate` and --metrics
REALS_CACHE_ENV = "MVCGAN_CACHE_DIR"  # overrides ~/.cache/mvcgan as the cache root
MVC_YAW_STEP = 0.3                    # radians between the two views of the mvc metric
MVC_MIN_OPAQUE = 0.05                 # below this opaque-pixel fraction mvc says nothing about 3D
OPACITY_THRESHOLD = 0.5               # a NeRF pixel is foreground when its opacity exceeds this
SYNTHETIC_KID_SIZE = 16               # appearance is compared on 16x16 pixel vectors
MIN_FID_SAMPLES = 2                   # a covariance needs two samples
RECOMMENDED_FID_SAMPLES = 2048        # fewer: FID is strongly biased upwards (and the covariance singular)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


# ----------------------------------------------------------------------------- #
# Distances between feature sets
# ----------------------------------------------------------------------------- #

def feature_statistics(features: np.ndarray):
    """Mean (d,) and covariance (d, d) of features (n, d), float64."""
    features = np.asarray(features, dtype=np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (pytorch-fid's implementation):
    ||mu1 - mu2||^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))."""
    from pytorch_fid.fid_score import calculate_frechet_distance

    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    # scipy's sqrtm never returns on NaN input (e.g. the covariance of fewer than two samples).
    if not all(np.isfinite(x).all() for x in (mu1, sigma1, mu2, sigma2)):
        raise ValueError("FID statistics are not finite (fewer than 2 images, or NaN/inf features)")
    return float(calculate_frechet_distance(mu1, sigma1, mu2, sigma2))


def kid(features_a: np.ndarray, features_b: np.ndarray, num_subsets: int = 100, subset_size: int = 1000,
        seed: int = 0):
    """Kernel inception distance: unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3.

    Averaged over `num_subsets` random subsets of m = min(subset_size, len(a), len(b))
    samples from each set (StyleGAN2-ADA's metrics/kernel_inception_distance.py).
    Returns (mean, std over subsets).
    """
    a = np.asarray(features_a, dtype=np.float64)
    b = np.asarray(features_b, dtype=np.float64)
    d = a.shape[1]
    m = min(a.shape[0], b.shape[0], subset_size)
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples in each set, got {a.shape[0]} and {b.shape[0]}")
    rng = np.random.RandomState(seed)
    values = []
    for _ in range(num_subsets):
        x = a[rng.choice(a.shape[0], m, replace=False)]
        y = b[rng.choice(b.shape[0], m, replace=False)]
        k_xx_yy = (x @ x.T / d + 1) ** 3 + (y @ y.T / d + 1) ** 3
        k_xy = (x @ y.T / d + 1) ** 3
        values.append((k_xx_yy.sum() - np.diag(k_xx_yy).sum()) / (m * (m - 1)) - 2 * k_xy.sum() / (m * m))
    values = np.asarray(values)
    return float(values.mean()), float(values.std())


# ----------------------------------------------------------------------------- #
# Inception
# ----------------------------------------------------------------------------- #

class InceptionWeightsMissing(RuntimeError):
    """The FID Inception weights are neither given, cached, nor downloadable."""


def hub_weights_path() -> Path:
    """Where torch.hub (and so pytorch-fid) keeps the FID Inception weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_FILENAME


def _missing_weights_message(reason: str) -> str:
    from pytorch_fid.inception import FID_WEIGHTS_URL

    return (f"FID Inception weights are not available ({reason}).\n"
            f"  file:  {FID_WEIGHTS_FILENAME}\n"
            f"  get it from: {FID_WEIGHTS_URL}\n"
            f"  and place it at: {hub_weights_path()}\n"
            f"  or pass --inception_weights FILE (load_inception(weights=FILE) from Python).")


def _download_weights(url: str, destination: Path, timeout: float = DOWNLOAD_TIMEOUT_S) -> None:
    """Download `url` to `destination` without ever hanging on a dead network.

    A reachability probe runs in a daemon thread (name resolution ignores socket
    timeouts); the download itself runs with a per-operation socket timeout.
    """
    host = urllib.parse.urlparse(url).hostname
    outcome = {}

    def probe():
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            outcome["ok"] = True
        except OSError as error:  # DNS failure, refused, unreachable, timeout
            outcome["error"] = error

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 1)
    if not outcome.get("ok"):
        raise OSError(f"cannot reach {host}: {outcome.get('error', 'timed out')}")
    destination.parent.mkdir(parents=True, exist_ok=True)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        torch.hub.download_url_to_file(url, str(destination), hash_prefix=FID_WEIGHTS_HASH_PREFIX,
                                       progress=True)
    finally:
        socket.setdefaulttimeout(previous)


def fid_inception_architecture():
    """pytorch-fid's `fid_inception_v3()` without the weight download (random weights)."""
    from pytorch_fid import inception as fid_inception

    net = fid_inception._inception_v3(num_classes=1008, aux_logits=False, weights=None)  # sets init_weights=False
    net.Mixed_5b = fid_inception.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = fid_inception.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = fid_inception.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = fid_inception.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = fid_inception.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = fid_inception.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = fid_inception.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = fid_inception.FIDInceptionE_1(1280)
    net.Mixed_7c = fid_inception.FIDInceptionE_2(2048)
    return net


@contextlib.contextmanager
def _fid_inception_builder(build: Callable):
    """Make pytorch-fid's InceptionV3 use `build()` instead of its downloading builder."""
    from pytorch_fid import inception as fid_inception

    original = fid_inception.fid_inception_v3
    fid_inception.fid_inception_v3 = build
    try:
        yield
    finally:
        fid_inception.fid_inception_v3 = original


def _fingerprint(model: torch.nn.Module) -> str:
    """A short hash of the first and last conv weights: tells weight sets apart for caching."""
    convs = [p for name, p in model.state_dict().items() if name.endswith("conv.weight")]
    digest = hashlib.sha1()
    for tensor in (convs[0], convs[-1]):
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def load_inception(weights: Optional[str] = None, device="cpu", random_init: bool = False,
                   input_size: int = INCEPTION_SIZE):
    """pytorch-fid's `InceptionV3` returning the 2048-d pool features, in eval mode.

    Weights, in order: `weights` (a local state-dict file); the torch hub cache
    (`hub_weights_path()`); a download with a short timeout. If all fail, raises
    `InceptionWeightsMissing` naming the file, its URL and where to put it.
    `random_init=True` gives the same architecture with random weights (tests: no
    download). `input_size` < 299 shrinks the input (only for fast tests: the scores
    are then not comparable with anything). The model takes (B, 3, H, W) in [0, 1].
    """
    from pytorch_fid.inception import FID_WEIGHTS_URL, InceptionV3

    state_dict, wrapper_state_dict = None, None
    if not random_init:
        if weights is not None:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise InceptionWeightsMissing(_missing_weights_message(f"no file at --inception_weights {path}"))
        else:
            path = hub_weights_path()
            if not path.is_file():
                try:
                    _download_weights(FID_WEIGHTS_URL, path)
                except Exception as error:  # noqa: BLE001 - any failure means "not available"
                    raise InceptionWeightsMissing(
                        _missing_weights_message(f"not in the torch hub cache and the download failed: {error}")
                    ) from error
        loaded = torch.load(path, map_location="cpu", weights_only=True)
        if any(key.startswith("blocks.") for key in loaded):  # a saved InceptionV3 wrapper
            wrapper_state_dict = loaded
        else:                                                 # pytorch-fid's release file
            state_dict = loaded

    def build():
        net = fid_inception_architecture()
        if state_dict is not None:
            net.load_state_dict(state_dict)
        return net

    block_index = InceptionV3.BLOCK_INDEX_BY_DIM[FEATURE_DIM]
    with _fid_inception_builder(build):
        model = InceptionV3([block_index], resize_input=True, normalize_input=True)
    if random_init:
        # PyTorch's default conv init shrinks the signal to ~1e-8 over Inception's depth
        # (all images then share one feature vector); He init keeps features informative.
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    if wrapper_state_dict is not None:
        model.load_state_dict(wrapper_state_dict)
    if input_size != INCEPTION_SIZE:
        if input_size < 75:
            raise ValueError("Inception needs inputs of at least 75 px")
        model.resize_input = False
        model.register_forward_pre_hook(
            lambda module, args: (F.interpolate(args[0], size=(input_size, input_size), mode="bilinear",
                                                align_corners=False),))
    model.fingerprint = f"{_fingerprint(model)}_{input_size}"
    return model.eval().to(device)


@torch.no_grad()
def extract_features(batches: Iterable[torch.Tensor], inception, device="cpu", total: Optional[int] = None,
                     desc: str = "inception") -> np.ndarray:
    """Pool features (N, 2048) of image batches (B, 3, H, W) in [0, 1]."""
    features = []
    with tqdm(total=total, desc=desc, unit="img", leave=False, dynamic_ncols=True) as bar:
        for images in batches:
            images = images.to(device=device, dtype=torch.float32)
            pooled = inception(images)[0]  # (B, 2048, 1, 1)
            features.append(pooled.reshape(pooled.shape[0], -1).cpu().numpy().astype(np.float64))
            bar.update(images.shape[0])
    return np.concatenate(features, axis=0) if features else np.zeros((0, FEATURE_DIM))


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


def folder_batches(folder, batch_size: int, num_workers: int = 0) -> Iterator[torch.Tensor]:
    loader = torch.utils.data.DataLoader(ImageFolder(folder), batch_size=batch_size, shuffle=False,
                                         num_workers=num_workers)
    yield from loader


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float images -> uint8 (same rounding for reals and fakes)."""
    return ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def _cache_root(real_dir: Optional[str]) -> Path:
    if real_dir is not None:
        return Path(real_dir).expanduser()
    return Path(os.environ.get(REALS_CACHE_ENV, "~/.cache/mvcgan")).expanduser() / "fid_reals"


def real_images_dir(metadata: Mapping, img_size: int, num_real: int, real_dir: Optional[str] = None) -> Path:
    """Cache folder of the real PNGs: <root>/<dataset>_<size>_<count>_<hash of dataset_path>."""
    dataset = str(metadata.get("dataset", "dataset"))
    path_hash = hashlib.sha1(str(metadata.get("dataset_path")).encode()).hexdigest()[:8]
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
    from datasets import build_dataset

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
            for image in to_uint8(images).permute(0, 2, 3, 1).numpy():  # (B, H, W, 3)
                Image.fromarray(image).save(folder / f"{count:06d}.png")
                count += 1
            bar.update(images.shape[0])
    marker = {"dataset": metadata.get("dataset"), "dataset_path": metadata.get("dataset_path"),
              "img_size": int(img_size), "num_requested": int(num_real), "num_images": count}
    (folder / "complete.json").write_text(json.dumps(marker, default=str))
    return folder


def real_statistics(folder: Path, inception, device="cpu", batch_size: int = 64, num_workers: int = 0) -> dict:
    """mu, sigma and features of the reals in `folder`, cached as an .npz per Inception weight set."""
    cache = Path(folder) / f"inception_{getattr(inception, 'fingerprint', 'unknown')}.npz"
    if cache.is_file():
        with np.load(cache) as stats:
            return {key: stats[key] for key in ("mu", "sigma", "features")}
    features = extract_features(folder_batches(folder, batch_size, num_workers), inception, device,
                                total=len(ImageFolder(folder)), desc="inception (reals)")
    mu, sigma = feature_statistics(features)
    stats = {"mu": mu, "sigma": sigma, "features": features.astype(np.float32)}
    temporary = cache.with_name(cache.stem + ".partial.npz")
    np.savez(temporary, **stats)
    os.replace(temporary, cache)
    return stats


# ----------------------------------------------------------------------------- #
# Generated images
# ----------------------------------------------------------------------------- #

def _latents(num: int, z_dim: int, metadata: Mapping, seed: int) -> torch.Tensor:
    """Deterministic z (num, z_dim) from `seed`, drawn on the CPU from the curriculum's z_dist."""
    from generators.generators import sample_z

    return sample_z(num, z_dim, metadata.get("z_dist", "gaussian"), generator=torch.Generator().manual_seed(seed))


def _render_options(metadata: Mapping):
    from generators.generators import RenderOptions

    return RenderOptions.from_metadata(metadata, evaluation=True)


def _staged_kwargs(max_batch_size: Optional[int]) -> dict:
    return {} if max_batch_size is None else {"max_batch_size": max_batch_size}


@torch.no_grad()
def generated_batches(generator, metadata: Mapping, num_fake: int, psi: float = 1.0, batch_size: int = 16,
                      max_batch_size: Optional[int] = None, seed: int = 0, alpha: float = 1.0,
                      device="cpu") -> Iterator[torch.Tensor]:
    """Generated images (B, 3, out, out) in [0, 1], quantised to 8 bits like the real PNGs.

    Poses come from the evaluation pose distribution (the training one, with the
    *_eval overrides), drawn with `seed` like z, so a run is reproducible.
    """
    from generators.cameras import PoseDistribution, cam2world_from_poses, sample_poses

    options = _render_options(metadata)
    z = _latents(num_fake, generator.z_dim, metadata, seed)
    yaw, pitch = sample_poses(num_fake, PoseDistribution.from_metadata(metadata, evaluation=True),
                              generator=torch.Generator().manual_seed(seed + 1))
    cam2world = cam2world_from_poses(yaw, pitch)  # (num_fake, 4, 4)
    for start in range(0, num_fake, batch_size):
        out = generator.staged_forward(z[start:start + batch_size].to(device), options, psi=psi,
                                       cam2world=cam2world[start:start + batch_size].to(device), alpha=alpha,
                                       **_staged_kwargs(max_batch_size))
        yield to_uint8(out.image).float() / 255


# ----------------------------------------------------------------------------- #
# Multi-view consistency
# ----------------------------------------------------------------------------- #

def _warp_errors(image_a, image_b, depth_a, cam_a, cam_b, fov, mask=None):
    """Sums behind `warp_consistency`: (sum |d|, sum d^2, number of valid values, valid mask)."""
    from generators.warp import stereo_warp

    image_a, image_b = image_a.float(), image_b.float()
    size = image_a.shape[-1]
    depth_a = depth_a.float()
    if depth_a.shape[-1] != size:  # NeRF depth (n, S, S) -> (n, R, R)
        depth_a = F.interpolate(depth_a[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    warped, valid = stereo_warp(image_b, depth_a, cam_a.float().to(image_a.device),
                                cam_b.float().to(image_a.device), fov)  # (n, C, R, R), (n, R, R)
    if mask is not None:
        valid = valid & mask.to(valid.device).bool()
    difference = (warped - image_a) * valid[:, None]
    count = float(valid.sum()) * image_a.shape[1]
    return float(difference.abs().sum()), float(difference.pow(2).sum()), count, valid


def _scores(abs_sum: float, sq_sum: float, count: float):
    """(mean L1, PSNR) from error sums; NaN without valid pixels."""
    if count == 0:
        return float("nan"), float("nan")
    return float(abs_sum / count), float(10 * math.log10(1 / max(sq_sum / count, 1e-10)))


def warp_consistency(image_a: torch.Tensor, image_b: torch.Tensor, depth_a: torch.Tensor, cam_a: torch.Tensor,
                     cam_b: torch.Tensor, fov: float, mask: Optional[torch.Tensor] = None) -> dict:
    """Photometric error between view a and view b warped into view a with a's depth.

    image_a, image_b (n, 3, R, R) in [0, 1]; depth_a (n, S, S) distance along the unit
    ray (bilinearly resized to R when S != R); cam_a, cam_b (n, 4, 4) camera-to-world;
    fov in degrees; mask (n, R, R) bool restricts the pixels of view a (e.g. the
    foreground). Pixels count when they land inside view b's image, in front of it.
    Returns dict(l1 = mean |warped b - a| over valid pixels and channels,
    psnr = 10 log10(1 / MSE) over the same, valid_fraction of view a's pixels).
    Occlusions are not modelled: a small yaw step keeps them rare.
    """
    abs_sum, sq_sum, count, valid = _warp_errors(image_a, image_b, depth_a, cam_a, cam_b, fov, mask)
    l1, psnr = _scores(abs_sum, sq_sum, count)
    return {"l1": l1, "psnr": psnr, "valid_fraction": float(valid.float().mean())}


@torch.no_grad()
def multiview_consistency(generator, metadata: Mapping, num_samples: int = 256, psi: float = 1.0,
                          yaw_step: float = MVC_YAW_STEP, batch_size: int = 16,
                          max_batch_size: Optional[int] = None, seed: int = 0, alpha: float = 1.0,
                          device="cpu") -> dict:
    """The `mvc` metric: two views of each z at h_mean -/+ yaw_step/2 (pitch v_mean).

    Returns mvc_nerf_l1/psnr (NeRF RGB warped with its own depth at S) and
    mvc_image_l1/psnr (final images mapped to [0, 1], depth bilinearly upsampled to
    the output size), pooled over the valid pixels of all samples, and
    mvc_nerf_valid/mvc_image_valid (the fractions of valid pixels).
    """
    from generators.cameras import PoseDistribution, cam2world_from_poses

    options = _render_options(metadata)
    pose = PoseDistribution.from_metadata(metadata, evaluation=True)
    z = _latents(num_samples, generator.z_dim, metadata, seed)
    totals = {key: np.zeros(4) for key in ("nerf", "image")}  # sum |d|, sum d^2, valid values, all values
    opaque_pixels = total_pixels = 0

    for start in range(0, num_samples, batch_size):
        z_batch = z[start:start + batch_size].to(device)
        n = z_batch.shape[0]
        pitch = torch.full((n,), pose.v_mean, device=device)
        cam_a, cam_b = (cam2world_from_poses(torch.full((n,), pose.h_mean + offset, device=device), pitch)
                        for offset in (-yaw_step / 2, yaw_step / 2))
        view_a, view_b = (generator.staged_forward(z_batch, options, psi=psi, cam2world=cam, alpha=alpha,
                                                   **_staged_kwargs(max_batch_size)) for cam in (cam_a, cam_b))
        pairs = {"nerf": (view_a.nerf_rgb, view_b.nerf_rgb),
                 "image": ((view_a.image.clamp(-1, 1) + 1) / 2, (view_b.image.clamp(-1, 1) + 1) / 2)}
        for key, (image_a, image_b) in pairs.items():
            abs_sum, sq_sum, count, _ = _warp_errors(image_a, image_b, view_a.depth, cam_a, cam_b,
                                                     options.rays.fov)
            totals[key] += (abs_sum, sq_sum, count, image_a.numel())
        opaque_pixels += int((view_a.opacity > OPACITY_THRESHOLD).sum())
        total_pixels += view_a.opacity.numel()

    results = {}
    for key, (abs_sum, sq_sum, count, total) in totals.items():
        results[f"mvc_{key}_l1"], results[f"mvc_{key}_psnr"] = _scores(abs_sum, sq_sum, count)
        results[f"mvc_{key}_valid"] = float(count / total) if total else 0.0
    results["mvc_nerf_opaque"] = opaque_pixels / max(total_pixels, 1)
    if results["mvc_nerf_opaque"] < MVC_MIN_OPAQUE:
        results["mvc_warning"] = (f"only {100 * results['mvc_nerf_opaque']:.1f}% of NeRF pixels are opaque "
                                  f"(opacity > {OPACITY_THRESHOLD}): a nearly empty field is trivially "
                                  f"consistent, so these mvc scores say nothing about 3D structure")
    return results


# ----------------------------------------------------------------------------- #
# Ground truth for the embedded Synthetic heads
# ----------------------------------------------------------------------------- #

class HeadMaps(NamedTuple):
    """What the synthetic metric compares, for n heads at n poses."""

    mask: torch.Tensor   # (n, S, S) bool foreground
    depth: torch.Tensor  # (n, S, S) distance along the unit ray
    image: torch.Tensor  # (n, 3, R, R) in [0, 1]


def _cat_maps(parts) -> HeadMaps:
    return HeadMaps(*(torch.cat(fields) for fields in zip(*parts)))


def real_head_maps(metadata: Mapping, yaw: torch.Tensor, pitch: torch.Tensor, first_index: int = 0) -> HeadMaps:
    """Synthetic heads first_index, first_index + 1, ... rendered exactly at the given poses."""
    from datasets import Synthetic

    options = _render_options(metadata)
    img_size, output_size = options.rays.img_size, options.output_size
    dataset = Synthetic(img_size, metadata=metadata, length=first_index + len(yaw),
                        seed=int(metadata.get("synthetic_seed", 0)))
    parts = []
    for offset, (y, p) in enumerate(zip(yaw.tolist(), pitch.tolist())):
        view = dataset.render(first_index + offset, y, p)
        image = view["image"] if output_size == img_size else \
            dataset.render(first_index + offset, y, p, img_size=output_size)["image"]
        parts.append(HeadMaps(view["mask"][None], view["depth"][None], (image[None] + 1) / 2))
    return _cat_maps(parts)


@torch.no_grad()
def generated_head_maps(generator, metadata: Mapping, z: torch.Tensor, cam2world: torch.Tensor,
                        psi: float = 1.0, batch_size: int = 16, max_batch_size: Optional[int] = None,
                        alpha: float = 1.0, device="cpu") -> HeadMaps:
    """Generated silhouettes (NeRF opacity > 0.5), depths and final images at the given cameras."""
    options = _render_options(metadata)
    parts = []
    for start in range(0, z.shape[0], batch_size):
        out = generator.staged_forward(z[start:start + batch_size].to(device), options, psi=psi,
                                       cam2world=cam2world[start:start + batch_size].to(device), alpha=alpha,
                                       **_staged_kwargs(max_batch_size))
        parts.append(HeadMaps((out.opacity > OPACITY_THRESHOLD).cpu(), out.depth.float().cpu(),
                              ((out.image.float().clamp(-1, 1) + 1) / 2).cpu()))
    return _cat_maps(parts)


def _pixel_features(images: torch.Tensor) -> np.ndarray:
    """(n, 3, R, R) in [0, 1] -> (n, 3 * 16 * 16) antialiased 16x16 pixels in [-1, 1]."""
    small = F.interpolate(images.float(), size=(SYNTHETIC_KID_SIZE, SYNTHETIC_KID_SIZE), mode="bilinear",
                          antialias=True, align_corners=False)
    return (small * 2 - 1).flatten(1).numpy()


def compare_head_maps(candidate: HeadMaps, reference: HeadMaps, seed: int = 0) -> dict:
    """iou: silhouette IoU pooled over all pixels. depth_l1: mean |depth difference| where both
    are foreground (NaN when they never are). depth_l1_fg: the same over every pixel of the
    reference's foreground; the candidate's rendered depth counts there even where it is empty
    (an empty ray renders at ray_end, like real background), so it is defined for any generator
    and charges missing geometry. kid: pixel KID. opaque: candidate's foreground fraction."""
    both = candidate.mask & reference.mask
    union = candidate.mask | reference.mask
    difference = (candidate.depth - reference.depth).abs()
    kid_value, _ = kid(_pixel_features(candidate.image), _pixel_features(reference.image), num_subsets=50,
                       seed=seed)
    return {"iou": float(both.sum() / union.sum()) if union.any() else float("nan"),
            "depth_l1": float(difference[both].mean()) if both.any() else float("nan"),
            "depth_l1_fg": float(difference[reference.mask].mean()),
            "kid": kid_value, "opaque": float(candidate.mask.float().mean())}


def _gap_closed(value: float, floor: float, ceiling: float) -> float:
    """(value - floor) / (ceiling - floor): 0 at the floor, 1 at the ceiling."""
    if not all(math.isfinite(v) for v in (value, floor, ceiling)) or ceiling == floor:
        return float("nan")
    return (value - floor) / (ceiling - floor)


_SYNTHETIC_CALIBRATION: dict = {}  # {key: (reference HeadMaps, ceiling and floor scores)}, one entry


@torch.no_grad()
def synthetic_scores(generator, metadata: Mapping, num_samples: int = 256, psi: float = 1.0,
                     batch_size: int = 16, max_batch_size: Optional[int] = None, seed: int = 0,
                     alpha: float = 1.0, device="cpu") -> dict:
    """The `synthetic` metric: `generator` against the true heads at training poses, calibrated.

    Real heads 0..n-1 are rendered at n poses drawn (with `seed`) from the training pose
    distribution. The generator renders n latents at the same poses. The same comparison
    is made for real heads n..2n-1 (the ceiling: what a perfect generator of *other*
    heads scores) and for an untrained generator of the same architecture without a sphere
    prior (the floor: a field that has learned nothing and is given nothing).
    Keys: synthetic_{iou,depth_l1,depth_l1_fg,kid,opaque}, the same with _ceiling and _floor,
    and synthetic_{iou,depth,kid}_closed = share of the floor-to-ceiling gap the generator
    closes (depth on depth_l1_fg: an untrained generator has no foreground for depth_l1).
    Trivial baselines say what a score does not prove: synthetic_iou_fog is the IoU of a
    field opaque everywhere (the heads' area fraction), synthetic_iou_blob that of one fixed
    silhouette for every head and pose (the pixels that most heads cover), and
    synthetic_depth_l1_plane the depth error of a flat wall at the best single depth. When
    the curriculum gives the field a sphere prior, the same scores with _prior are those of
    the untrained generator with it: what the prior alone gives, before any training.
    """
    from generators.cameras import PoseDistribution, cam2world_from_poses, sample_poses
    from generators.generators import build_generator

    yaw, pitch = sample_poses(num_samples, PoseDistribution.from_metadata(metadata, evaluation=True),
                              generator=torch.Generator().manual_seed(seed + 1))
    cam2world = cam2world_from_poses(yaw, pitch)  # (n, 4, 4)
    z = _latents(num_samples, generator.z_dim, metadata, seed)
    render = dict(psi=psi, batch_size=batch_size, max_batch_size=max_batch_size, alpha=alpha, device=device)
    # The reference heads and the calibration depend only on the stage and the sampling, not on
    # the generator's weights: compute them once per process (training evaluates repeatedly).
    key = json.dumps([sorted((str(k), str(v)) for k, v in metadata.items()), num_samples, seed, psi, alpha])
    if key not in _SYNTHETIC_CALIBRATION:
        reference = real_head_maps(metadata, yaw, pitch)
        with torch.random.fork_rng(devices=[]):  # the baselines' init must not move the caller's RNG
            torch.manual_seed(seed)
            untrained = build_generator(dict(metadata, sphere_prior_density=0.0)).to(device).eval()
            with_prior = build_generator(metadata)
        calibration = {
            "_ceiling": compare_head_maps(real_head_maps(metadata, yaw, pitch, first_index=num_samples),
                                          reference, seed),
            "_floor": compare_head_maps(generated_head_maps(untrained, metadata, z, cam2world, **render),
                                        reference, seed)}
        if with_prior.has_sphere_prior:
            with_prior.load_state_dict(untrained.state_dict())
            calibration["_prior"] = compare_head_maps(
                generated_head_maps(with_prior.to(device).eval(), metadata, z, cam2world, **render), reference, seed)
        _SYNTHETIC_CALIBRATION.clear()
        _SYNTHETIC_CALIBRATION[key] = (reference, calibration)
    reference, calibration = _SYNTHETIC_CALIBRATION[key]
    scores = {"": compare_head_maps(generated_head_maps(generator, metadata, z, cam2world, **render), reference,
                                    seed), **calibration}
    results = {f"synthetic_{name}{suffix}": value for suffix, values in scores.items() for name, value in values.items()}
    for name, key in (("iou", "iou"), ("depth", "depth_l1_fg"), ("kid", "kid")):
        results[f"synthetic_{name}_closed"] = _gap_closed(scores[""][key], scores["_floor"][key],
                                                           scores["_ceiling"][key])
    # A field that is opaque everywhere already matches the heads' area this well: IoU near
    # this value with synthetic_opaque near 1 means fog, not silhouettes.
    results["synthetic_iou_fog"] = float(reference.mask.float().mean())
    # One blob where most heads are, whatever the head and pose: silhouettes that do not beat
    # this follow neither the head nor the camera.
    blob = (reference.mask.float().mean(0) > 0.5).expand_as(reference.mask)
    results["synthetic_iou_blob"] = float((blob & reference.mask).sum() / (blob | reference.mask).sum())
    # Likewise a flat wall at the best single depth (the median of the true foreground depths):
    # depth_l1_fg near or above this means no head shape in the depth, only its distance.
    foreground_depth = reference.depth[reference.mask]
    results["synthetic_depth_l1_plane"] = float((foreground_depth - foreground_depth.median()).abs().mean())
    results["num_synthetic"] = int(num_samples)
    return results


# ----------------------------------------------------------------------------- #
# Evaluation
# ----------------------------------------------------------------------------- #

def parse_metrics(metrics) -> tuple:
    """'fid,kid' or ('fid', 'kid') -> validated tuple of names."""
    if isinstance(metrics, str):
        metrics = [m for m in metrics.split(",") if m.strip()]
    metrics = tuple(m.strip().lower() for m in metrics)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"unknown metrics {unknown}; choose from {', '.join(METRICS)}")
    return metrics


def evaluate(generator, metadata: Mapping, metrics: Sequence[str] = ("fid",), num_real: int = 8000,
             num_fake: int = 2048, psi: float = 1.0, real_dir: Optional[str] = None,
             inception_weights: Optional[str] = None, device=None, batch_size: int = 32,
             max_batch_size: Optional[int] = None, seed: int = 0, inception=None, alpha: float = 1.0,
             num_mvc: int = 256, mvc_yaw_step: float = MVC_YAW_STEP, num_workers: int = 0,
             num_synthetic: int = 256) -> dict:
    """Score `generator` (pass the EMA weights) at the stage described by `metadata`.

    metrics: any of "fid", "kid", "mvc", "synthetic" (a tuple or a comma-separated string).
    Real images are prepared (once) at the stage's output_size; `inception` may be a
    model from `load_inception` to avoid reloading it. Returns a flat dict: the
    scores (fid, kid, kid_std, mvc_*) and what they depend on (psi, num_real,
    num_fake, img_size, output_size, seed, ...).
    """
    metrics = parse_metrics(metrics)
    if device is None:
        device = next(generator.parameters()).device
    options = _render_options(metadata)
    results = {"psi": float(psi), "img_size": options.rays.img_size, "output_size": options.output_size,
               "num_steps": options.rays.num_steps, "alpha": float(alpha), "seed": int(seed)}
    was_training = generator.training
    generator.eval()
    try:
        if "fid" in metrics or "kid" in metrics:
            if inception is None:
                inception = load_inception(inception_weights, device=device)
            inception = inception.to(device)
            started = time.time()
            folder = prepare_real_images(metadata, options.output_size, num_real, real_dir,
                                         batch_size=batch_size, num_workers=num_workers)
            reals = real_statistics(folder, inception, device, batch_size=batch_size, num_workers=num_workers)
            fakes = extract_features(
                generated_batches(generator, metadata, num_fake, psi, batch_size, max_batch_size, seed, alpha,
                                  device),
                inception, device, total=num_fake, desc="inception (generated)")
            results.update(num_real=int(reals["features"].shape[0]), num_fake=int(fakes.shape[0]),
                           real_dir=str(folder))
            if min(results["num_real"], results["num_fake"]) < MIN_FID_SAMPLES:
                raise ValueError(f"FID/KID need at least {MIN_FID_SAMPLES} real and {MIN_FID_SAMPLES} generated "
                                 f"images, got {results['num_real']} real (in {folder}) and "
                                 f"{results['num_fake']} generated")
            if "fid" in metrics:
                mu, sigma = feature_statistics(fakes)
                results["fid"] = frechet_distance(mu, sigma, reals["mu"], reals["sigma"])
            if "kid" in metrics:
                results["kid"], results["kid_std"] = kid(reals["features"], fakes, seed=seed)
            results["fid_kid_seconds"] = round(time.time() - started, 2)
        if "mvc" in metrics:
            results.update(multiview_consistency(generator, metadata, num_samples=num_mvc, psi=psi,
                                                 yaw_step=mvc_yaw_step, batch_size=batch_size,
                                                 max_batch_size=max_batch_size, seed=seed, alpha=alpha,
                                                 device=device))
            results.update(num_mvc=int(num_mvc), mvc_yaw_step=float(mvc_yaw_step))
        if "synthetic" in metrics:
            if metadata.get("dataset") != "Synthetic":
                raise ValueError(f"the synthetic metric needs a generator trained on the Synthetic dataset, "
                                 f"not {metadata.get('dataset')!r}")
            results.update(synthetic_scores(generator, metadata, num_samples=num_synthetic, psi=psi,
                                            batch_size=batch_size, max_batch_size=max_batch_size, seed=seed,
                                            alpha=alpha, device=device))
    finally:
        generator.train(was_training)
    return results


# ----------------------------------------------------------------------------- #
# Command line
# ----------------------------------------------------------------------------- #

def find_run_dir(path) -> Optional[Path]:
    """The run directory a checkpoint belongs to: the folder (or the checkpoint's folder)
    when it holds metrics.jsonl or checkpoint.pth; None otherwise."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if (folder / "metrics.jsonl").exists() or (folder / "checkpoint.pth").exists():
        return folder
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Score a checkpoint: FID/KID against the curriculum's dataset and multi-view "
                    "consistency. Prints one JSON line; appends it to <run_dir>/metrics.jsonl.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--path", required=True,
                        help="checkpoint file, or a run directory (its latest checkpoint is used)")
    parser.add_argument("--num_real", type=int, default=8000,
                        help=f"number of real images (cached as PNGs); at least {MIN_FID_SAMPLES} for fid/kid, "
                             f"and below {RECOMMENDED_FID_SAMPLES} the scores are biased (a warning says so)")
    parser.add_argument("--num_fake", type=int, default=2048,
                        help=f"number of generated images for FID/KID; at least {MIN_FID_SAMPLES}, and below "
                             f"{RECOMMENDED_FID_SAMPLES} the scores are biased (a warning says so)")
    parser.add_argument("--psi", type=finite_float, default=1.0,
                        help="truncation psi (the published code used 0.6; recorded with the scores)")
    parser.add_argument("--metrics", default="fid", help=f"comma-separated subset of {','.join(METRICS)}")
    parser.add_argument("--real_dir", default=None,
                        help=f"cache root for real images and their Inception statistics; unset: "
                             f"${REALS_CACHE_ENV}/fid_reals, else ~/.cache/mvcgan/fid_reals")
    parser.add_argument("--inception_weights", default=None,
                        help=f"local copy of {FID_WEIGHTS_FILENAME}; unset: the torch hub cache "
                             f"({hub_weights_path()}), else a download")
    parser.add_argument("--device", default=default_device(), help="cuda or cpu")
    parser.add_argument("--batch_size", type=int, default=32, help="images per generator/Inception batch")
    parser.add_argument("--max_batch_size", type=int, default=None,
                        help="most points per SIREN call in staged_forward (lower it if out of memory); "
                             "unset: the generator's default")
    parser.add_argument("--seed", type=int, default=0, help="seed of the latents and poses")
    parser.add_argument("--num_mvc", type=int, default=256, help="number of latents for the mvc metric")
    parser.add_argument("--mvc_yaw_step", type=finite_float, default=MVC_YAW_STEP,
                        help="yaw between the two mvc views, radians")
    parser.add_argument("--num_synthetic", type=int, default=256,
                        help="number of poses (real heads and latents) for the synthetic metric")
    parser.add_argument("--num_workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="data loader workers for preparing/reading real images")
    parser.add_argument("--no_ema", action="store_true", help="score the raw generator weights, not the EMA")
    parser.add_argument("--no_append", action="store_true", help="do not append to the run's metrics.jsonl")
    parser.add_argument("--random_inception", action="store_true",
                        help="for tests only: random-weight Inception (no download; scores are meaningless)")
    return parser


def validate_args(parser: argparse.ArgumentParser, args) -> None:
    """Usage errors exit with code 2 before anything is loaded; small FID sample counts warn."""
    try:
        args.metrics = parse_metrics(args.metrics)
    except ValueError as error:
        parser.error(str(error))
    for name in ("num_real", "num_fake", "num_workers"):
        if getattr(args, name) < 0:
            parser.error(f"--{name} must not be negative, got {getattr(args, name)}")
    for name in ("batch_size", "num_mvc", "num_synthetic"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.max_batch_size is not None and args.max_batch_size < 1:
        parser.error(f"--max_batch_size must be at least 1, got {args.max_batch_size}")
    if {"fid", "kid"} & set(args.metrics):
        for name in ("num_real", "num_fake"):
            count = getattr(args, name)
            if count < MIN_FID_SAMPLES:
                parser.error(f"--{name} must be at least {MIN_FID_SAMPLES} for fid/kid (a covariance needs two "
                             f"images), got {count}")
            if count < RECOMMENDED_FID_SAMPLES:
                print(f"warning: --{name} {count} is below {RECOMMENDED_FID_SAMPLES}: FID/KID are biased upwards "
                      "with few images; compare only scores computed with the same counts", file=sys.stderr)


def score_checkpoint(args) -> dict:
    """Everything main() does after parsing: load, score at the trained stage, print, append; the record."""
    model = load_model(args.path, use_ema=not args.no_ema, device=args.device)
    stage = model.stage  # the stage the weights were last trained in, with its fade-in
    try:
        inception = None
        if "fid" in args.metrics or "kid" in args.metrics:
            inception = load_inception(args.inception_weights, device=model.device,
                                       random_init=args.random_inception)
        results = evaluate(model.generator, stage.metadata, args.metrics, num_real=args.num_real,
                           num_fake=args.num_fake, psi=args.psi, real_dir=args.real_dir, device=model.device,
                           batch_size=args.batch_size, max_batch_size=args.max_batch_size, seed=args.seed,
                           inception=inception, alpha=stage.alpha, num_mvc=args.num_mvc,
                           mvc_yaw_step=args.mvc_yaw_step, num_workers=args.num_workers,
                           num_synthetic=args.num_synthetic)
    except InceptionWeightsMissing as error:
        raise CLIError(str(error)) from None
    except ValueError as error:  # inputs that cannot be scored: too few images, another dataset's checkpoint
        raise CLIError(str(error)) from None
    if "mvc_warning" in results:
        print(f"warning: {results['mvc_warning']}", file=sys.stderr)
    record = {"step": int(model.step), "kind": "eval", **results, "ema": model.use_ema,
              "checkpoint": str(Path(model.checkpoint_path).resolve()), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if args.random_inception:
        record["random_inception"] = True  # scores meaningless: mark them
    line = json.dumps(record)
    print(line, flush=True)
    run_dir = find_run_dir(args.path)
    if run_dir is not None and not args.no_append:
        with open(run_dir / "metrics.jsonl", "a") as handle:
            handle.write(line + "\n")
    return record


def main(argv=None) -> dict:
    """Returns the printed record; exits with 2 for usage or input errors, 1 when the work fails."""
    parser = build_parser()
    args = parser.parse_args(argv)
    validate_args(parser, args)
    records = []
    code = run_cli(lambda: records.append(score_checkpoint(args)))
    if code:
        sys.exit(code)
    return records[0]


if __name__ == "__main__":
    main()
