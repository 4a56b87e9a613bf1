"""Fitting a generator to one image: latent codes and camera, then optional pivotal tuning.

Entry points: `invert(generator, target, options, settings)` runs both phases and returns an
`Inversion`; `fit_codes_and_camera` and `tune_generator` are the two phases alone;
`code_statistics` gives the per-dimension mean and spread of the codes that the fitted
offsets are measured in. docs/METHOD.md §11.1 says why each choice was made.

Latent spaces (`settings.latent_space`):

* ``"w"``: the 256-d mapping code that is also the decoder's style. The mapping network's last
  layer is linear, so the FiLM frequencies and phases of any z are `output_layer(w)`: fitting w
  keeps the codes on the plane every generated sample lies on (StyleGAN's W).
* ``"codes"`` (the default): frequencies, phases and style as three free tensors (pi-GAN's
  inverse_render space, plus our decoder's style): 18H + 256 numbers, most of them off that
  plane. Easier to optimise, and its held-out views scored a little higher on the demo.

Both start from the mean codes and are parametrised in units of the codes' per-dimension
standard deviation over random z, so one learning rate suits every dimension, and the prior
`prior_weight * mean(offset^2)` is the same Gaussian-like penalty in either space.
"""
from __future__ import annotations

import copy
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F

from generators.cameras import PITCH_EPS, cam2world_from_poses, sample_poses
from generators.generators import ImplicitGenerator3d, LatentCodes, RenderOptions, TRUNCATION_SAMPLES
from losses import PhotometricLoss

LATENT_SPACES = ("w", "codes")


@dataclass(frozen=True)
class InversionSettings:
    """Everything the optimisation needs besides the generator, the target and the render options."""

    latent_space: str = "codes"
    fit_camera: bool = True
    # Starting poses: offsets (radians) from the curriculum's mean yaw and pitch; every pair is a start.
    yaw_starts: Sequence[float] = (-0.4, -0.2, 0.0, 0.2, 0.4)
    pitch_starts: Sequence[float] = (-0.15, 0.0, 0.15)
    search_steps: int = 10      # steps per round of successive halving (the better half of the starts goes on)
    steps: int = 100            # further steps of the last start
    lr: float = 0.05            # Adam, on the offsets in units of the codes' standard deviation
    camera_lr: float = 0.01     # Adam, radians
    ssim_weight: float = 0.85   # PhotometricLoss: ssim_weight * SSIM term + (1 - ssim_weight) * L1
    prior_weight: float = 0.0   # * mean(offset^2) of the codes, offsets in standard deviations
    # Pivotal tuning of the generator around the fitted codes and camera (0: off).
    tune_steps: int = 0
    tune_lr: float = 3e-4
    tune_parameters: str = "all"  # "all", "field" (the SIREN and mapping) or "decoder"
    locality_weight: float = 1.0  # * L1 between the tuned and the frozen generator on other latents
    locality_samples: int = 2     # other latents (and poses) per tuning step

    def __post_init__(self):
        if self.latent_space not in LATENT_SPACES:
            raise ValueError(f"latent_space must be one of {LATENT_SPACES}, got {self.latent_space!r}")
        if self.tune_parameters not in TUNABLE:
            raise ValueError(f"tune_parameters must be one of {sorted(TUNABLE)}, got {self.tune_parameters!r}")
        for name in ("search_steps", "steps", "tune_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.yaw_starts or not self.pitch_starts:
            raise ValueError("yaw_starts and pitch_starts need at least one value each")


TUNABLE = {"all": lambda g: list(g.parameters()),
           "field": lambda g: list(g.siren.parameters()),
           "decoder": lambda g: list(g.decoder.parameters())}


class Inversion(NamedTuple):
    """What `invert` found."""

    codes: LatentCodes        # (1, ...) each, detached
    yaw: float
    pitch: float
    w: Optional[torch.Tensor]  # (1, 256) in the "w" space, else None
    loss: float               # photometric loss of the result at its camera (after tuning, if any)
    generator: ImplicitGenerator3d  # the tuned copy, or the generator that was given
    tuned: bool
    history: Dict[str, List[float]]  # per-step losses of each phase
    seconds: Dict[str, float]        # wall time of each phase


# ----------------------------------------------------------------- statistics
class CodeStatistics(NamedTuple):
    mean: LatentCodes  # (1, ...) each: the generator's average_codes()
    std: LatentCodes   # (1, ...) each: per-dimension standard deviation over the same z


@torch.no_grad()
def code_statistics(generator: ImplicitGenerator3d) -> CodeStatistics:
    """Mean (`average_codes`) and per-dimension standard deviation of the codes of 10 000 random z
    (drawn from seed 0 like `average_codes`). A dimension that never varies gets std 1e-6."""
    device = next(generator.parameters()).device
    z = torch.randn(TRUNCATION_SAMPLES, generator.z_dim, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.autocast(device.type, enabled=False):
        codes = generator.mapping(z)
    std = LatentCodes(*(c.std(0, keepdim=True).clamp_min(1e-6) for c in codes))
    return CodeStatistics(generator.average_codes(), std)


# ------------------------------------------------------------ latent spaces
class LatentParameters:
    """The fitted offsets of one latent space, batched over starts: (K, ...) tensors in units
    of the codes' standard deviation, zero at the mean codes."""

    def __init__(self, generator: ImplicitGenerator3d, space: str, stats: CodeStatistics, count: int):
        self.generator, self.space, self.stats = generator, space, stats
        shapes = [stats.mean.style] if space == "w" else list(stats.mean)
        self.offsets = [torch.zeros(count, s.shape[-1], device=s.device, requires_grad=True) for s in shapes]

    def select(self, indices: Sequence[int]) -> "LatentParameters":
        """A copy holding the starts `indices` only (new leaf tensors)."""
        chosen = copy.copy(self)
        chosen.offsets = [o.detach()[list(indices)].clone().requires_grad_() for o in self.offsets]
        return chosen

    def w(self) -> torch.Tensor:
        """(K, 256): the style of the "w" space (mean + std * offset)."""
        return self.stats.mean.style + self.stats.std.style * self.offsets[0]

    def codes(self) -> LatentCodes:
        """The LatentCodes the offsets stand for (differentiable)."""
        if self.space == "w":
            w = self.w()
            out = self.generator.siren.mapping_network.output_layer(w)
            half = out.shape[-1] // 2
            return LatentCodes(out[..., :half], out[..., half:], w)
        return LatentCodes(*(m + s * o for m, s, o in zip(self.stats.mean, self.stats.std, self.offsets)))

    def prior(self) -> torch.Tensor:
        """(K,) mean squared offset per start, in standard deviations."""
        return torch.cat([o.square() for o in self.offsets], dim=-1).mean(-1)


@contextmanager
def frozen(module: torch.nn.Module):
    """No parameter of `module` requires grad inside the block (so backward computes only the
    codes' and the camera's gradients); the flags are restored after it."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


# ---------------------------------------------------------------- rendering
def render_at(generator: ImplicitGenerator3d, codes: LatentCodes, yaw: torch.Tensor, pitch: torch.Tensor,
              options: RenderOptions, alpha: float) -> torch.Tensor:
    """Differentiable render of codes (K, ...) at cameras (yaw, pitch) (K,): images (K, 3, out, out) in [0, 1]."""
    cam2world = cam2world_from_poses(yaw, pitch.clamp(PITCH_EPS, math.pi - PITCH_EPS))
    out = generator.render_codes(codes, options, cam2world, alpha=alpha, max_batch_size=None)
    return (out.image + 1) / 2


def cosine_lr(base: float, step: int, total: int, floor: float = 0.1) -> float:
    """base at step 0, falling along a half cosine to floor * base at the last step."""
    if total <= 1:
        return base
    t = step / (total - 1)
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))


def _set_lr(optimizer: torch.optim.Optimizer, lrs: Sequence[float]) -> None:
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr


# ------------------------------------------------------------------ phase 1
def survivors(starts: int) -> int:
    """How many of `starts` candidates a round of successive halving keeps: half (rounded down), or
    one of two."""
    return starts // 2 if starts > 2 else 1


def search_rounds(starts: int) -> int:
    """Rounds of successive halving that bring `starts` down to one."""
    rounds = 0
    while starts > 1:
        starts, rounds = survivors(starts), rounds + 1
    return rounds


def fit_codes_and_camera(generator: ImplicitGenerator3d, target: torch.Tensor, options: RenderOptions,
                         settings: InversionSettings, alpha: float = 1.0,
                         progress: Optional[Callable[[str, int, int, float], None]] = None):
    """Fit codes (and the camera, unless `settings.fit_camera` is False) to `target` (1, 3, out, out) in [0, 1].

    Camera search by successive halving: every (yaw, pitch) start gets `search_steps` Adam steps
    (all starts in one batch, codes and camera together), the better half (by loss) is kept and
    gets `search_steps` more, and so on until one is left; it then gets `steps` more with a
    learning rate that decays along a half cosine. Without camera fitting there is one start, the
    mean pose. Returns (LatentParameters of one start, yaw (1,), pitch (1,), per-step losses).
    `progress(phase, step, total, loss)` is called after every step.
    """
    photometric = PhotometricLoss(settings.ssim_weight)
    stats = code_statistics(generator)
    pose = options.pose
    device = target.device
    if settings.fit_camera:
        starts = [(pose.h_mean + dy, pose.v_mean + dp) for dp in settings.pitch_starts for dy in settings.yaw_starts]
    else:
        starts = [(pose.h_mean, pose.v_mean)]
    yaw = torch.tensor([s[0] for s in starts], device=device)
    pitch = torch.tensor([s[1] for s in starts], device=device)
    latent = LatentParameters(generator, settings.latent_space, stats, len(starts))
    history: List[float] = []

    def run(latent, yaw, pitch, steps, phase, decay, codes=True):
        params = [{"params": latent.offsets, "lr": settings.lr if codes else 0.0}]
        if settings.fit_camera:
            params.append({"params": [yaw.requires_grad_(True), pitch.requires_grad_(True)],
                           "lr": settings.camera_lr})
        optimizer = torch.optim.Adam(params)
        per_start = torch.zeros(len(yaw))
        for step in range(steps):
            if decay:
                _set_lr(optimizer, [cosine_lr(base, step, steps) for base in (settings.lr, settings.camera_lr)])
            image = render_at(generator, latent.codes(), yaw, pitch, options, alpha)
            data = photometric.per_pixel(image, target.expand_as(image)).flatten(1).mean(1)  # (K,)
            loss = data + settings.prior_weight * latent.prior()
            optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()  # the starts are independent: the sum gives each its own gradient
            optimizer.step()
            per_start = loss.detach().cpu()  # the search keeps the starts with the lowest loss
            history.append(float(data.detach().min()))
            if progress:
                progress(phase, step, steps, float(data.detach().min()))
        return per_start

    first = True
    while len(yaw) > 1 and settings.search_steps > 0:
        # The first round moves the cameras only, the codes staying the mean: fitted together from the
        # start, the codes (and the decoder's style) adapt faster than the camera and repaint the
        # picture at whatever pose they begin.
        per_start = run(latent, yaw, pitch, settings.search_steps, "search", decay=False, codes=not first)
        first = False
        keep = per_start.argsort()[:survivors(len(yaw))].tolist()
        latent = latent.select(keep)
        yaw, pitch = yaw.detach()[keep].clone(), pitch.detach()[keep].clone()
    if len(yaw) > 1:  # no search asked for: the start nearest the mean pose
        nearest = int(((yaw - pose.h_mean).square() + (pitch - pose.v_mean).square()).argmin())
        latent = latent.select([nearest])
        yaw, pitch = yaw.detach()[[nearest]].clone(), pitch.detach()[[nearest]].clone()
    run(latent, yaw, pitch, settings.steps, "fit", decay=True)
    return latent, yaw.detach(), pitch.detach(), history


# ------------------------------------------------------------------ phase 2
def tune_generator(generator: ImplicitGenerator3d, codes: LatentCodes, yaw: torch.Tensor, pitch: torch.Tensor,
                   target: torch.Tensor, options: RenderOptions, settings: InversionSettings, alpha: float = 1.0,
                   seed: int = 0, progress: Optional[Callable[[str, int, int, float], None]] = None):
    """Pivotal tuning: a copy of `generator` whose render of the fixed `codes` at (yaw, pitch) matches
    `target`, while its renders of other latents stay those of `generator`.

    Each step adds `locality_weight` times the L1 between the copy's and the original's images of
    `locality_samples` random latents at random training poses (PTI's locality regulariser, with
    latents drawn from the mapping of random z rather than interpolated towards the pivot).
    Returns (tuned generator in eval mode, per-step losses).
    """
    tuned = copy.deepcopy(generator).eval()
    tuned.requires_grad_(False)
    parameters = TUNABLE[settings.tune_parameters](tuned)
    for p in parameters:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(parameters, lr=settings.tune_lr)
    photometric = PhotometricLoss(settings.ssim_weight)
    rng = torch.Generator().manual_seed(seed)
    device = target.device
    history: List[float] = []
    codes = LatentCodes(*(c.detach() for c in codes))
    for step in range(settings.tune_steps):
        _set_lr(optimizer, [cosine_lr(settings.tune_lr, step, settings.tune_steps)])
        image = render_at(tuned, codes, yaw, pitch, options, alpha)
        data = photometric(image, target)
        loss = data
        if settings.locality_weight > 0 and settings.locality_samples > 0:
            n = settings.locality_samples
            z = torch.randn(n, generator.z_dim, generator=rng).to(device)
            other_yaw, other_pitch = sample_poses(n, options.pose, generator=rng)
            other_yaw, other_pitch = other_yaw.to(device), other_pitch.to(device)
            with torch.no_grad():
                reference = render_at(generator, generator.mapping(z), other_yaw, other_pitch, options, alpha)
            other = render_at(tuned, tuned.mapping(z), other_yaw, other_pitch, options, alpha)
            loss = loss + settings.locality_weight * F.l1_loss(other, reference)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.append(float(data.detach()))
        if progress:
            progress("tune", step, settings.tune_steps, float(data.detach()))
    tuned.requires_grad_(False)
    return tuned.eval(), history


# --------------------------------------------------------------------- both
def invert(generator: ImplicitGenerator3d, target: torch.Tensor, options: RenderOptions,
           settings: InversionSettings = InversionSettings(), alpha: float = 1.0, seed: int = 0,
           progress: Optional[Callable[[str, int, int, float], None]] = None) -> Inversion:
    """Fit codes and camera to `target` (1, 3, out, out) in [0, 1], then tune the generator if
    `settings.tune_steps` > 0. `options` are inference RenderOptions whose `pose` holds the
    curriculum's mean pose (the starts are offsets from it). Deterministic for a given `seed`."""
    if target.dim() != 4 or target.shape[0] != 1 or target.shape[1] != 3:
        raise ValueError(f"target must be (1, 3, size, size), got {tuple(target.shape)}")
    if target.shape[-1] != options.output_size or target.shape[-2] != options.output_size:
        raise ValueError(f"target is {tuple(target.shape[-2:])}, the render options make "
                         f"{options.output_size} x {options.output_size} images")
    seconds = {}
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]), frozen(generator):
        torch.manual_seed(seed)
        latent, yaw, pitch, fit_history = fit_codes_and_camera(generator, target, options, settings, alpha, progress)
    seconds["fit"] = time.perf_counter() - started
    codes = LatentCodes(*(c.detach() for c in latent.codes()))
    w = latent.w().detach() if settings.latent_space == "w" else None
    history = {"fit": fit_history}
    result_generator, tuned = generator, False
    if settings.tune_steps > 0:
        started = time.perf_counter()
        with frozen(generator):
            result_generator, history["tune"] = tune_generator(generator, codes, yaw, pitch, target, options,
                                                               settings, alpha, seed, progress)
        tuned = True
        seconds["tune"] = time.perf_counter() - started
    with torch.no_grad():
        final = PhotometricLoss(settings.ssim_weight)(render_at(result_generator, codes, yaw, pitch, options, alpha),
                                                      target)
    return Inversion(codes, float(yaw), float(pitch), w, float(final), result_generator, tuned, history, seconds)
