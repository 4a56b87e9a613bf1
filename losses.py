"""Training losses: the photometric consistency loss (docs/METHOD.md §7) and the GAN phases.

`photometric_loss(prediction, target)` is the 0.85 SSIM + 0.15 L1 mix that ties the
warped auxiliary view to the primary view (training maps both through the curriculum's
`photometric_input` first); `MVCGANLoss` computes the discriminator and generator phases
of a training step.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from generators.generators import sample_z
from generators.precision import full_precision

SSIM_C1 = 0.01 ** 2
SSIM_C2 = 0.03 ** 2


class SSIM(nn.Module):
    """Per-pixel SSIM dissimilarity clamp((1 - SSIM) / 2, 0, 1): 3x3 means, reflection pad 1."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, y = F.pad(x, (1, 1, 1, 1), mode="reflect"), F.pad(y, (1, 1, 1, 1), mode="reflect")
        pool = lambda t: F.avg_pool2d(t, 3, 1)
        mu_x, mu_y = pool(x), pool(y)
        sigma_x = pool(x * x) - mu_x ** 2
        sigma_y = pool(y * y) - mu_y ** 2
        sigma_xy = pool(x * y) - mu_x * mu_y
        numerator = (2 * mu_x * mu_y + SSIM_C1) * (2 * sigma_xy + SSIM_C2)
        denominator = (mu_x ** 2 + mu_y ** 2 + SSIM_C1) * (sigma_x + sigma_y + SSIM_C2)
        return torch.clamp((1 - numerator / denominator) / 2, 0, 1)


# How training's photometric loss sees its [0, 1] NeRF RGB inputs (curriculum key `photometric_input`,
# PhaseConfig.photometric_input): "shifted" maps both through (x + 1) / 2 first, as the published code
# does (as if they were in [-1, 1]: values land in [0.5, 1]); "unit" compares them as they are, a
# correction with 1.1-3.2x the published gradient (docs/METHOD.md §7; benchmarks/bench_corrections.py).
PHOTOMETRIC_INPUTS = {"shifted": lambda x: (x + 1) / 2, "unit": lambda x: x}


def photometric_input_mapping(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The map of PHOTOMETRIC_INPUTS called `name`, applied to both images before PhotometricLoss."""
    if name not in PHOTOMETRIC_INPUTS:
        raise ValueError(f"photometric input must be one of {sorted(PHOTOMETRIC_INPUTS)}, got {name!r}")
    return PHOTOMETRIC_INPUTS[name]


class PhotometricLoss(nn.Module):
    """0.85 * SSIM term + 0.15 * L1, averaged over channels, then over everything.

    Compares the RGB maps (n, 3, S, S) it is given, as they are. Training first maps its [0, 1] NeRF
    RGB with the curriculum's `photometric_input` (`photometric_input_mapping`, in MVCGANLoss); inversion
    compares [0, 1] images directly.
    """

    def __init__(self, ssim_weight: float = 0.85):
        super().__init__()
        self.ssim = SSIM()
        self.ssim_weight = ssim_weight

    def components(self, prediction: torch.Tensor, target: torch.Tensor):
        """(SSIM term, L1), each an (n, S, S) map averaged over channels."""
        return self.ssim(prediction, target).mean(1), (target - prediction).abs().mean(1)

    def combine(self, ssim: torch.Tensor, l1: torch.Tensor) -> torch.Tensor:
        return self.ssim_weight * ssim + (1 - self.ssim_weight) * l1

    def per_pixel(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(n, S, S) loss map."""
        return self.combine(*self.components(prediction, target))

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.per_pixel(prediction, target).mean()


photometric_loss = PhotometricLoss()


# ---------------------------------------------------------------------------- GAN phases


@dataclass(frozen=True)
class PhaseConfig:
    """What one training step's loss needs from the curriculum (built by the training loop)."""

    alpha: float
    batch_split: int
    latent_dim: int
    z_dist: str
    r1_lambda: float
    pos_lambda: float
    z_lambda: float
    reproj_lambda: float
    topk_fraction: float
    photometric_input: str = "shifted"
    real_pose_lambda: float = 0.0  # D's pose regression on real images with known poses (procedural data)


def topk_fraction(step: int, topk_interval: Optional[float], topk_v: Optional[float]) -> float:
    """Share of fakes kept for the G loss: max(0.99^(step/topk_interval), topk_v)."""
    if not topk_interval or topk_v is None:
        return 1.0
    return max(0.99 ** (step / topk_interval), topk_v)


class RandomDraws:
    """Where a training step's random numbers come from: torch's global RNG (the default).

    `MVCGANLoss.draws` may be replaced by any object with these two methods, e.g. one that
    replays recorded draws (the step-parity test with the published code, tests/test_published_step.py).
    """

    def latents(self, n: int, latent_dim: int, z_dist: str, device) -> torch.Tensor:
        return sample_z(n, latent_dim, z_dist, device)

    def generator_call(self, generator, n: int, render_options, device):
        """The `ForwardDraws` of one generator call on n latents."""
        return generator.sample_draws(n, render_options, device)


class MVCGANLoss:
    """The two phases of a step, each accumulating gradients into its network's params.

    The training loop owns optimisers, clipping, gradient averaging and EMAs; this object
    only computes losses and calls backward. `render_options` is the stage's RenderOptions.
    Two hooks observe a step without changing it: `timer(name)` wraps each part of a phase
    (benchmarks/bench_step.py times them), and `observe(event, values)` receives each phase's
    loss terms once its backward is done ("d_phase" once, "g_chunk" per generator chunk).
    """

    def __init__(self, generator, discriminator, scaler, autocast: Callable = nullcontext):
        self.generator, self.discriminator = generator, discriminator
        self.scaler, self.autocast = scaler, autocast
        self.draws = RandomDraws()
        self.photometric_loss = PhotometricLoss()
        self.timer: Callable[[str], object] = lambda name: nullcontext()
        self.observe: Callable[[str, dict], None] = lambda event, values: None

    def _generate(self, z: torch.Tensor, render_options, cfg: PhaseConfig):
        draws = self.draws.generator_call(self.generator, z.shape[0], render_options, z.device)
        return self.generator(z, cfg.alpha, render_options, draws=draws)

    @staticmethod
    def _identity_penalties(pred_latent, z, pred_pose, true_pose, cfg: PhaseConfig):
        """(pose penalty, latent penalty), each already times its lambda (zero when that lambda is)."""
        position = latent = pred_pose.new_zeros(())
        if cfg.pos_lambda > 0:
            position = F.mse_loss(pred_pose, true_pose) * cfg.pos_lambda
        if cfg.z_lambda > 0:
            latent = F.mse_loss(pred_latent, z) * cfg.z_lambda
        return position, latent

    def accumulate_discriminator_gradients(self, real: torch.Tensor, render_options, cfg: PhaseConfig,
                                           real_poses: Optional[torch.Tensor] = None) -> dict:
        """softplus(D(fake)) + softplus(-D(real)) + R1 + pose/latent regression; one backward. With
        cfg.real_pose_lambda and the real images' true poses real_poses (B, 2) (pitch, yaw), D also learns
        to tell the pose of real images (an opt-in departure: the published D learns pose from fakes only)."""
        z = self.draws.latents(real.shape[0], cfg.latent_dim, cfg.z_dist, real.device)
        with self.timer("d_generate"), torch.no_grad(), self.autocast():
            fakes = [self._generate(chunk, render_options, cfg) for chunk in z.tensor_split(cfg.batch_split)]
            fake_images = full_precision(torch.cat([out.image for out in fakes]))
            fake_poses = full_precision(torch.cat([out.pose for out in fakes]))
        with self.timer("d_real_r1"):
            real = real.detach().requires_grad_(cfg.r1_lambda > 0)
            with self.autocast():
                real_logits, _, real_pred_pose = self.discriminator(real, cfg.alpha)
            real_position = real_logits.new_zeros(())
            if cfg.real_pose_lambda > 0:
                if real_poses is None:
                    raise ValueError("real_pose_lambda needs the real images' poses (a procedural data set)")
                predicted = full_precision(real_pred_pose)
                real_position = F.mse_loss(predicted, real_poses.to(predicted.device, predicted.dtype)) \
                    * cfg.real_pose_lambda
            r1 = real_logits.new_zeros(())
            if cfg.r1_lambda > 0:
                # Differentiate the scaled output so fp16 gradients do not underflow, then unscale.
                (grad_real,) = torch.autograd.grad(self.scaler.scale(real_logits.sum()), real, create_graph=True)
                grad_real = grad_real / self.scaler.get_scale()
                with self.autocast():
                    r1 = 0.5 * cfg.r1_lambda * full_precision(grad_real.flatten(1)).norm(2, dim=1).pow(2).mean()
        with self.timer("d_fake_forward"), self.autocast():
            fake_logits, pred_latent, pred_pose = self.discriminator(fake_images, cfg.alpha)
            position, latent = self._identity_penalties(full_precision(pred_latent), z, full_precision(pred_pose),
                                                        fake_poses, cfg)
            softplus_fake = F.softplus(full_precision(fake_logits)).mean()
            softplus_real = F.softplus(-full_precision(real_logits)).mean()
            loss = softplus_fake + softplus_real + r1 + (latent + position)
            if cfg.real_pose_lambda > 0:
                loss = loss + real_position
        with self.timer("d_backward"):
            self.scaler.scale(loss).backward()
        self.observe("d_phase", {"loss": loss, "softplus_fake": softplus_fake, "softplus_real": softplus_real,
                                 "r1": r1, "position": position, "latent": latent, "real_logits": real_logits,
                                 "fake_logits": fake_logits, "fake_poses": fake_poses, "pred_pose": pred_pose,
                                 "fake_images": fake_images, "outputs": fakes})
        return {"d_loss": loss.detach(), "r1": r1.detach(), "d_pose": (latent + position).detach(),
                **({"d_real_pose": real_position.detach()} if cfg.real_pose_lambda > 0 else {}),
                "real_logit": full_precision(real_logits.detach()).mean(),
                "fake_logit": full_precision(fake_logits.detach()).mean()}

    def accumulate_generator_gradients(self, batch_size: int, device, render_options, cfg: PhaseConfig) -> dict:
        """Per chunk: top-k non-saturating loss + pose regression + photometric consistency."""
        z = self.draws.latents(batch_size, cfg.latent_dim, cfg.z_dist, device)
        photometric_input = photometric_input_mapping(cfg.photometric_input)
        totals = {"g_loss": 0.0, "photometric": 0.0, "g_pose": 0.0}
        for chunk in z.tensor_split(cfg.batch_split):
            share = chunk.shape[0] / batch_size
            with self.autocast():
                with self.timer("g_forward"):
                    out = self._generate(chunk, render_options, cfg)
                with self.timer("g_disc_forward"):
                    logits, pred_latent, pred_pose = self.discriminator(out.image, cfg.alpha)
                    logits = full_precision(logits)
                    k = math.ceil(cfg.topk_fraction * logits.shape[0])
                    top_logits = torch.topk(logits, k, dim=0).values
                    position, latent = self._identity_penalties(full_precision(pred_latent), chunk,
                                                                full_precision(pred_pose), full_precision(out.pose),
                                                                cfg)
                with self.timer("photometric"):
                    photometric = ssim = l1 = out.image.new_zeros((), dtype=full_precision(out.image).dtype)
                    if cfg.reproj_lambda > 0 and out.warped_aux_rgb is not None:
                        ssim_map, l1_map = self.photometric_loss.components(
                            photometric_input(full_precision(out.warped_aux_rgb)),
                            photometric_input(full_precision(out.primary_rgb)))
                        photometric = self.photometric_loss.combine(ssim_map, l1_map).mean()
                        ssim, l1 = ssim_map.mean(), l1_map.mean()
                adversarial = F.softplus(-top_logits).mean()
                loss = adversarial + (latent + position) + photometric * cfg.reproj_lambda
            # As published: each chunk's mean loss is backpropagated as is, so the accumulated
            # gradient is the sum over chunks (grad_clip was tuned for that).
            with self.timer("g_backward"):
                self.scaler.scale(loss).backward()
            self.observe("g_chunk", {"loss": loss, "adversarial": adversarial, "position": position,
                                     "latent": latent, "photometric": photometric, "photometric_ssim": ssim,
                                     "photometric_l1": l1, "topk": k, "logits": logits, "top_logits": top_logits,
                                     "pred_pose": pred_pose, "output": out})
            totals["g_loss"] += loss.detach() * share
            totals["photometric"] += photometric.detach() * share
            totals["g_pose"] += (latent + position).detach() * share
        return totals
