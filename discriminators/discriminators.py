"""The progressive CoordConv encoder-discriminator of pi-GAN/MVCGAN (docs/METHOD.md §6).

`CCSEncoderDiscriminator(img, alpha)` maps an image (B, 3, R, R), R in 2..1024,
to a realness logit (B, 1), a predicted latent code (B, latent_dim) and a
predicted pose (B, 2: pitch, yaw). `CoordConv` and `ResidualCCBlock` are its
building blocks.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# Entry index for input resolution R: fromRGB[entry] then blocks[entry:].
RESOLUTION_TO_ENTRY = {1024: 0, 512: 1, 256: 2, 128: 3, 64: 4, 32: 5, 16: 6, 8: 7, 4: 8, 2: 9}
FROM_RGB_CHANNELS = (32, 32, 32, 64, 128, 256, 400, 400, 400, 400)
BLOCK_CHANNELS = ((32, 32), (32, 32), (32, 64), (64, 128), (128, 256),
                  (256, 400), (400, 400), (400, 400), (400, 400))


def coordinate_grid(height: int, width: int, device=None, dtype=None) -> torch.Tensor:
    """(1, 2, H, W): channel 0 varies along height, channel 1 along width, both in [-1, 1]."""
    ys = torch.linspace(-1, 1, height, device=device, dtype=dtype)
    xs = torch.linspace(-1, 1, width, device=device, dtype=dtype)
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"))[None]


class CoordConv(nn.Module):
    """Conv2d over the input with two coordinate channels appended (conv in-channels = in + 2).

    Computed as conv(x, W[:, :in]) + conv(coords, W[:, in:]): identical to convolving
    the concatenation (the zero padding is linear too), but the coordinate term is a
    single batch-free image and no (B, in + 2, H, W) copy of the activations is made.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 stride: int = 1, padding: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels + 2, out_channels, kernel_size, stride, padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        coords = coordinate_grid(x.shape[2], x.shape[3], x.device, x.dtype)  # (1, 2, H, W)
        out = F.conv2d(x, c.weight[:, :-2], c.bias, c.stride, c.padding)
        return out + F.conv2d(coords, c.weight[:, -2:], None, c.stride, c.padding)


class ResidualCCBlock(nn.Module):
    """Two CoordConv3x3 (the second with stride 2) plus a strided 1x1 skip, summed / sqrt(2)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = CoordConv(in_channels, out_channels, 3, padding=1)
        self.conv2 = CoordConv(out_channels, out_channels, 3, stride=2, padding=1)
        self.proj = nn.Conv2d(in_channels, out_channels, 1, stride=2)
        # As published (`kaiming_leaky_init`): the two CoordConv weights are Kaiming-normal;
        # PyTorch's default would give them 0.41x that standard deviation. The biases and
        # the 1x1 projection keep the default init.
        for conv in (self.conv1.conv, self.conv2.conv):
            nn.init.kaiming_normal_(conv.weight, a=0.2, mode="fan_in", nonlinearity="leaky_relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.leaky_relu(self.conv1(x), 0.2)
        y = F.leaky_relu(self.conv2(y), 0.2)
        return (y + self.proj(x)) / math.sqrt(2)


class CCSEncoderDiscriminator(nn.Module):
    """Progressive discriminator returning (logit (B, 1), latent (B, latent_dim), pose (B, 2)).

    `width_factor` scales every channel count (for tiny test/CPU configurations);
    1.0 is the published architecture.
    """

    def __init__(self, latent_dim: int = 256, width_factor: float = 1.0):
        super().__init__()
        def w(c: int) -> int:
            return max(1, round(c * width_factor))
        self.latent_dim = latent_dim
        self.from_rgb = nn.ModuleList(
            nn.Sequential(nn.Conv2d(3, w(c), 1), nn.LeakyReLU(0.2)) for c in FROM_RGB_CHANNELS)
        self.blocks = nn.ModuleList(ResidualCCBlock(w(i), w(o)) for i, o in BLOCK_CHANNELS)
        self.final = nn.Conv2d(w(BLOCK_CHANNELS[-1][1]), 1 + latent_dim + 2, 2)

    def forward(self, img: torch.Tensor, alpha: float):
        size = img.shape[-1]
        if size not in RESOLUTION_TO_ENTRY or img.shape[-2] != size:
            raise ValueError(f"input must be square with side in {sorted(RESOLUTION_TO_ENTRY)}, "
                             f"got {tuple(img.shape[-2:])}")
        entry = RESOLUTION_TO_ENTRY[size]
        x = self.from_rgb[entry](img)
        for i, block in enumerate(self.blocks[entry:]):
            x = block(x)
            if i == 0 and alpha < 1:
                # Fade in the new top resolution against the previous entry's adapter.
                # (pi-GAN fades before the second block, so never at R = 4; docs/METHOD.md §6: after the first.)
                low = F.interpolate(img, scale_factor=0.5, mode="nearest")
                x = alpha * x + (1 - alpha) * self.from_rgb[entry + 1](low)
        out = self.final(x).flatten(1)  # (B, 1 + latent_dim + 2)
        return out[:, :1], out[:, 1:1 + self.latent_dim], out[:, 1 + self.latent_dim:]
