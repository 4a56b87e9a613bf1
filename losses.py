"""Training losses: the photometric consistency loss (SPEC §7) and the GAN phases.

`photometric_loss(warped_aux_rgb, primary_rgb)` is the 0.85 SSIM + 0.15 L1 mix that
ties the warped auxiliary view to the primary view.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

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
    [0, 1] values through (x + 1) / 2 first; we use them directly (SPEC §7).
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
