"""The metric registry and the one call that scores a generator (docs/METHOD.md §10).

Metrics are functions `fn(opts: MetricOptions) -> dict`, registered under their name
with `@register_metric(summary)`; `evaluate` runs the ones asked for and returns one flat
dict of scores and what they depend on. The training loop calls it every `eval_freq`
steps with the EMA generator, `fid_evaluation.py` from the command line.

Entry points: `evaluate`, `parse_metrics`, `list_metrics`, `summary_lines`, `MetricOptions`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence

import torch

from generators.generators import ImplicitGenerator3d, RenderOptions
from generators.inference import RENDER_BATCH_SIZE
from metrics import fid_kid
from metrics.inception import load_inception
from metrics.mvc import MVC_YAW_STEP, multiview_consistency
from metrics.mvc import summary_lines as mvc_summary_lines
from metrics.matched import matched_summary_lines, matched_synthetic_scores
from metrics.synthetic import summary_lines as synthetic_summary_lines
from metrics.synthetic import aligned_summary_lines, aligned_synthetic_scores, synthetic_scores


@dataclass
class MetricOptions:
    """Everything a metric may need; `evaluate(..., **options)` takes these fields by name."""

    generator: ImplicitGenerator3d             # in eval mode while it is scored; pass the EMA weights
    metadata: Mapping                          # the stage to score at (sizes, poses, dataset)
    device: Optional[torch.device] = None      # unset: the generator's
    psi: float = 1.0                           # truncation, recorded with the scores
    alpha: float = 1.0                         # the decoder's fade-in at that stage
    seed: int = 0                              # of the latents and poses
    batch_size: int = RENDER_BATCH_SIZE        # images per generator (and Inception) call
    max_batch_size: Optional[int] = None       # points per field query; unset: the generator's default
    num_workers: int = 0                       # data loader workers for the real images
    num_real: int = 8000                       # fid, kid: real images (cached as PNGs)
    num_fake: int = 2048                       # fid, kid: generated images
    real_dir: Optional[str] = None             # fid, kid: cache root of the real images
    inception: Optional[torch.nn.Module] = None  # fid, kid: a loaded network (else loaded here)
    inception_weights: Optional[str] = None    # fid, kid: a local weights file for loading it
    num_mvc: int = 256                         # mvc: latents
    mvc_yaw_step: float = MVC_YAW_STEP         # mvc: radians between its two views
    num_synthetic: int = 256                   # synthetic: poses; synthetic_matched: objects
    cache: dict = field(default_factory=dict)  # what metrics of one evaluation share (Inception features)

    def __post_init__(self):
        if self.device is None:
            self.device = next(self.generator.parameters()).device


# ----------------------------------------------------------------------------- #
# The registry
# ----------------------------------------------------------------------------- #

class Metric(NamedTuple):
    compute: Callable[[MetricOptions], dict]
    summary: Callable[[Mapping], List[str]]   # readable lines for its keys (shared by metrics that share keys)


_metric_dict: Dict[str, Metric] = {}  # name -> Metric, in registration order


def register_metric(summary: Callable[[Mapping], List[str]]):
    """Decorator: register `fn(opts) -> dict` under `fn.__name__`, with the function that prints its keys."""
    def register(fn: Callable[[MetricOptions], dict]):
        _metric_dict[fn.__name__] = Metric(fn, summary)
        return fn
    return register


def list_metrics() -> List[str]:
    return list(_metric_dict)


def parse_metrics(metrics) -> tuple:
    """'fid,kid' or ('fid', 'kid') -> validated tuple of registered names; ValueError naming the known ones."""
    if isinstance(metrics, str):
        metrics = [m for m in metrics.split(",") if m.strip()]
    metrics = tuple(m.strip().lower() for m in metrics)
    unknown = [m for m in metrics if m not in _metric_dict]
    if unknown or not metrics:
        raise ValueError(f"unknown metrics {unknown}; choose from {', '.join(_metric_dict)}")
    return metrics


def uses_inception(metrics: Sequence[str]) -> bool:
    """Whether any of these metrics needs the FID Inception network (to load it once, up front)."""
    return bool({"fid", "kid"} & set(metrics))


# ----------------------------------------------------------------------------- #
# The metrics
# ----------------------------------------------------------------------------- #

def _inception_features(opts: MetricOptions) -> fid_kid.InceptionFeatures:
    """Real and generated Inception features, computed once per evaluation for fid and kid together."""
    if "inception_features" not in opts.cache:
        inception = opts.inception if opts.inception is not None else \
            load_inception(opts.inception_weights, device=opts.device)
        opts.cache["inception_features"] = fid_kid.inception_features(
            opts.generator, opts.metadata, inception.to(opts.device), num_real=opts.num_real,
            num_fake=opts.num_fake, psi=opts.psi, seed=opts.seed, alpha=opts.alpha, batch_size=opts.batch_size,
            max_batch_size=opts.max_batch_size, real_dir=opts.real_dir, num_workers=opts.num_workers,
            device=opts.device)
    return opts.cache["inception_features"]


@register_metric(fid_kid.summary_lines)
def fid(opts: MetricOptions) -> dict:
    features = _inception_features(opts)
    return {"fid": fid_kid.fid_of(features), **features.record()}


@register_metric(fid_kid.summary_lines)
def kid(opts: MetricOptions) -> dict:
    features = _inception_features(opts)
    value, std = fid_kid.kid(features.real, features.fake, seed=opts.seed)
    return {"kid": value, "kid_std": std, **features.record()}


@register_metric(mvc_summary_lines)
def mvc(opts: MetricOptions) -> dict:
    results = multiview_consistency(opts.generator, opts.metadata, num_samples=opts.num_mvc, psi=opts.psi,
                                    yaw_step=opts.mvc_yaw_step, batch_size=opts.batch_size,
                                    max_batch_size=opts.max_batch_size, seed=opts.seed, alpha=opts.alpha,
                                    device=opts.device)
    return {**results, "num_mvc": int(opts.num_mvc), "mvc_yaw_step": float(opts.mvc_yaw_step)}


@register_metric(synthetic_summary_lines)
def synthetic(opts: MetricOptions) -> dict:
    return synthetic_scores(opts.generator, opts.metadata, num_samples=opts.num_synthetic, psi=opts.psi,
                            batch_size=opts.batch_size, max_batch_size=opts.max_batch_size, seed=opts.seed,
                            alpha=opts.alpha, device=opts.device)


@register_metric(aligned_summary_lines)
def synthetic_aligned(opts: MetricOptions) -> dict:
    return aligned_synthetic_scores(opts.generator, opts.metadata, num_samples=opts.num_synthetic, psi=opts.psi,
                                    batch_size=opts.batch_size, max_batch_size=opts.max_batch_size, seed=opts.seed,
                                    alpha=opts.alpha, device=opts.device)


@register_metric(matched_summary_lines)
def synthetic_matched(opts: MetricOptions) -> dict:
    return matched_synthetic_scores(opts.generator, opts.metadata, num_objects=opts.num_synthetic,
                                    psi=opts.psi, batch_size=opts.batch_size, max_batch_size=opts.max_batch_size,
                                    seed=opts.seed, alpha=opts.alpha, device=opts.device)


# ----------------------------------------------------------------------------- #
# Scoring and reporting
# ----------------------------------------------------------------------------- #

def evaluate(generator: ImplicitGenerator3d, metadata: Mapping, metrics: Sequence[str] = ("fid",),
             **options) -> dict:
    """Score `generator` (pass the EMA weights) at the stage described by `metadata`.

    metrics: registered names (`list_metrics()`), a tuple or a comma-separated string.
    options: the other fields of `MetricOptions` (psi, alpha, seed, batch_size, num_fake, ...).
    Returns a flat dict: the scores, what they depend on (psi, img_size, output_size,
    num_steps, alpha, seed, and each metric's counts) and `<metric>_seconds`.
    """
    metrics = parse_metrics(metrics)
    opts = MetricOptions(generator, metadata, **options)
    render = RenderOptions.from_metadata(metadata, evaluation=True)
    results = {"psi": float(opts.psi), "img_size": render.rays.img_size, "output_size": render.output_size,
               "num_steps": render.rays.num_steps, "alpha": float(opts.alpha), "seed": int(opts.seed)}
    was_training = generator.training
    generator.eval()
    try:
        for name in metrics:
            started = time.time()
            results.update(_metric_dict[name].compute(opts))
            results[f"{name}_seconds"] = round(time.time() - started, 2)
    finally:
        generator.train(was_training)
    return results


def summary_lines(results: Mapping, metrics: Sequence[str]) -> List[str]:
    """Readable lines for the results of `metrics`, named as in the README (each metric's keys once)."""
    summaries = dict.fromkeys(_metric_dict[name].summary for name in parse_metrics(metrics))
    return [line for summary in summaries for line in summary(results)]
