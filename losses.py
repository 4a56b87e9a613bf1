"""Training losses: the photometric consistency loss (docs/METHOD.md §7) and the GAN phases.

`photometric_loss(warped_aux_rgb, primary_rgb)` is the 0.85 SSIM + 0.15 L1 mix that
ties the warped auxiliary view to the primary view; `MVCGANLoss` computes the
discriminator and generator phases of a training step.
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


class PhotometricLoss(nn.Module):
    """0.85 * SSIM term + 0.15 * L1, averaged over channels, then over everything.

    Inputs are the [0, 1] NeRF RGB maps (n, 3, S, S). The published code maps these
    [0, 1] values through (x + 1) / 2 first; we use them directly (docs/METHOD.md §7).
    """

    def __init__(self, ssim_weight: float = 0.85):
        super().__init__()
        self.ssim = SSIM()
        self.ssim_weight = ssim_weight

    def per_pixel(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(n, S, S) loss map."""
        l1 = (prediction - target).abs().mean(1)
        ssim = self.ssim(prediction, target).mean(1)
        return self.ssim_weight * ssim + (1 - self.ssim_weight) * l1

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


def topk_fraction(step: int, topk_interval: Optional[float], topk_v: Optional[float]) -> float:
    """Share of fakes kept for the G loss: max(0.99^(step/topk_interval), topk_v)."""
    if not topk_interval or topk_v is None:
        return 1.0
    return max(0.99 ** (step / topk_interval), topk_v)


class MVCGANLoss:
    """The two phases of a step, each accumulating gradients into its network's params.

    The training loop owns optimisers, clipping, gradient averaging and EMAs; this object
    only computes losses and calls backward. `render_options` is the stage's RenderOptions.
    """

    def __init__(self, generator, discriminator, scaler, autocast: Callable = nullcontext):
        self.generator, self.discriminator = generator, discriminator
        self.scaler, self.autocast = scaler, autocast
        self.photometric = PhotometricLoss()
        # `timer(name)` wraps each part of a phase; benchmarks/bench_step.py sets one that
        # accumulates seconds per part. The default does nothing.
        self.timer: Callable[[str], object] = lambda name: nullcontext()

    def _identity_penalty(self, pred_latent, z, pred_pose, true_pose, cfg: PhaseConfig):
        penalty = pred_pose.new_zeros(())
        if cfg.pos_lambda > 0:
            penalty = penalty + F.mse_loss(pred_pose, true_pose) * cfg.pos_lambda
        if cfg.z_lambda > 0:
            penalty = penalty + F.mse_loss(pred_latent, z) * cfg.z_lambda
        return penalty

    def accumulate_discriminator_gradients(self, real: torch.Tensor, render_options, cfg: PhaseConfig) -> dict:
        """softplus(D(fake)) + softplus(-D(real)) + R1 + pose/latent regression; one backward."""
        z = sample_z(real.shape[0], cfg.latent_dim, cfg.z_dist, real.device)
        with self.timer("d_generate"), torch.no_grad(), self.autocast():
            fakes = [self.generator(chunk, cfg.alpha, render_options) for chunk in z.tensor_split(cfg.batch_split)]
            fake_images = torch.cat([out.image for out in fakes]).float()
            fake_poses = torch.cat([out.pose for out in fakes]).float()
        with self.timer("d_real_r1"):
            real = real.detach().requires_grad_(cfg.r1_lambda > 0)
            with self.autocast():
                real_logits, _, _ = self.discriminator(real, cfg.alpha)
            r1 = real_logits.new_zeros(())
            if cfg.r1_lambda > 0:
                # Differentiate the scaled output so fp16 gradients do not underflow, then unscale.
                (grad_real,) = torch.autograd.grad(self.scaler.scale(real_logits.sum()), real, create_graph=True)
                grad_real = grad_real / self.scaler.get_scale()
                with self.autocast():
                    r1 = 0.5 * cfg.r1_lambda * grad_real.flatten(1).float().norm(2, dim=1).pow(2).mean()
        with self.timer("d_fake_forward"), self.autocast():
            fake_logits, pred_latent, pred_pose = self.discriminator(fake_images, cfg.alpha)
            identity = self._identity_penalty(pred_latent.float(), z, pred_pose.float(), fake_poses, cfg)
            adversarial = F.softplus(fake_logits.float()).mean() + F.softplus(-real_logits.float()).mean()
            loss = adversarial + r1 + identity
        with self.timer("d_backward"):
            self.scaler.scale(loss).backward()
        return {"d_loss": loss.detach(), "r1": r1.detach(), "d_pose": identity.detach(),
                "real_logit": real_logits.detach().float().mean(), "fake_logit": fake_logits.detach().float().mean()}

    def accumulate_generator_gradients(self, batch_size: int, device, render_options, cfg: PhaseConfig) -> dict:
        """Per chunk: top-k non-saturating loss + pose regression + photometric consistency."""
        z = sample_z(batch_size, cfg.latent_dim, cfg.z_dist, device)
        totals = {"g_loss": 0.0, "photometric": 0.0, "g_pose": 0.0}
        for chunk in z.tensor_split(cfg.batch_split):
            share = chunk.shape[0] / batch_size
            with self.autocast():
                with self.timer("g_forward"):
                    out = self.generator(chunk, cfg.alpha, render_options)
                with self.timer("g_disc_forward"):
                    logits, pred_latent, pred_pose = self.discriminator(out.image, cfg.alpha)
                    logits = logits.float()
                    k = math.ceil(cfg.topk_fraction * logits.shape[0])
                    top_logits = torch.topk(logits, k, dim=0).values
                    identity = self._identity_penalty(pred_latent.float(), chunk, pred_pose.float(),
                                                      out.pose.float(), cfg)
                with self.timer("photometric"):
                    photometric = out.image.new_zeros((), dtype=torch.float32)
                    if cfg.reproj_lambda > 0 and out.warped_aux_rgb is not None:
                        photometric = self.photometric(out.warped_aux_rgb.float(), out.primary_rgb.float())
                loss = F.softplus(-top_logits).mean() + identity + cfg.reproj_lambda * photometric
            # As published: each chunk's mean loss is backpropagated as is, so the accumulated
            # gradient is the sum over chunks (grad_clip was tuned for that).
            with self.timer("g_backward"):
                self.scaler.scale(loss).backward()
            totals["g_loss"] += loss.detach() * share
            totals["photometric"] += photometric.detach() * share
            totals["g_pose"] += identity.detach() * share
        return totals
