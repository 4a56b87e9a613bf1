"""FID and KID between Inception features of real and generated images (docs/METHOD.md §10).

* `fid`: Fréchet distance between Inception pool features (pytorch-fid's 2048-d
  InceptionV3 with the TF-FID weights) of real and generated images.
* `kid`: kernel inception distance (unbiased polynomial-kernel MMD, as in
  StyleGAN2-ADA) on the same features; reported raw (multiply by 1000 for the
  usual "KID x 10^3").

Entry points: `inception_features` (reals and fakes, computed once for both scores),
`frechet_distance`, `kid`, `summary_lines`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, NamedTuple, Optional

import numpy as np
from pytorch_fid.fid_score import calculate_frechet_distance

from generators.inference import RENDER_BATCH_SIZE
from metrics.inception import extract_features
from metrics.metric_utils import feature_statistics, generated_images, prepare_real_images, real_statistics

MIN_FID_SAMPLES = 2                   # a covariance needs two samples
RECOMMENDED_FID_SAMPLES = 2048        # fewer: FID is strongly biased upwards (and the covariance singular)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (pytorch-fid's implementation):
    ||mu1 - mu2||^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))."""
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


class InceptionFeatures(NamedTuple):
    """Inception features of the reals (with their cached statistics) and of the generated images."""

    real: np.ndarray        # (num_real, d)
    real_mu: np.ndarray     # (d,)
    real_sigma: np.ndarray  # (d, d)
    fake: np.ndarray        # (num_fake, d)
    real_dir: Path          # the cache folder of the real PNGs

    def record(self) -> dict:
        """What the scores depend on, for the results."""
        return {"num_real": int(self.real.shape[0]), "num_fake": int(self.fake.shape[0]),
                "real_dir": str(self.real_dir)}


def inception_features(generator, metadata: Mapping, inception, num_real: int = 8000, num_fake: int = 2048,
                       psi: float = 1.0, seed: int = 0, alpha: float = 1.0, batch_size: int = RENDER_BATCH_SIZE,
                       max_batch_size: Optional[int] = None, real_dir: Optional[str] = None,
                       num_workers: int = 0, device="cpu") -> InceptionFeatures:
    """Features of `num_real` cached real images at the stage's output size and of `num_fake`
    generated ones; ValueError when either side has fewer than MIN_FID_SAMPLES."""
    output_size = int(metadata["output_size"])
    folder = prepare_real_images(metadata, output_size, num_real, real_dir, batch_size=batch_size,
                                 num_workers=num_workers)
    reals = real_statistics(folder, inception, device, batch_size=batch_size, num_workers=num_workers)
    fakes = extract_features(generated_images(generator, metadata, num_fake, psi, batch_size, max_batch_size, seed,
                                              alpha, device),
                             inception, device, total=num_fake, desc="inception (generated)")
    features = InceptionFeatures(reals["features"], reals["mu"], reals["sigma"], fakes, folder)
    if min(features.real.shape[0], features.fake.shape[0]) < MIN_FID_SAMPLES:
        raise ValueError(f"FID/KID need at least {MIN_FID_SAMPLES} real and {MIN_FID_SAMPLES} generated images, "
                         f"got {features.real.shape[0]} real (in {folder}) and {features.fake.shape[0]} generated")
    return features


def fid_of(features: InceptionFeatures) -> float:
    """FID of the generated features against the reals' statistics."""
    mu, sigma = feature_statistics(features.fake)
    return frechet_distance(mu, sigma, features.real_mu, features.real_sigma)


def summary_lines(results: Mapping) -> list:
    """Readable lines for the FID/KID keys present in `results`."""
    lines = []
    if "fid" in results:
        lines.append(f"FID                 {results['fid']:.2f}")
    if "kid" in results:
        lines.append(f"KID x 10^3          {1000 * results['kid']:.2f} ± {1000 * results['kid_std']:.2f}")
    if lines:
        lines.append(f"  ({results['num_fake']} generated against {results['num_real']} real images at "
                     f"{results['output_size']} px, psi {results['psi']:g}; keys fid, kid, kid_std)")
    return lines
