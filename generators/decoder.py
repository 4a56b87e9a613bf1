"""The progressive 2D upsampler ("post neural renderer", docs/METHOD.md §5).

`Decoder` turns the low-resolution feature map produced by volume rendering
(B, H, S, S) into an RGB image at `output_size` = S * 2^n, styled by the mapping
code w with AdaIN and faded in progressively with `alpha`. `EqualizedConv2d` and
`AdaIN` are its building blocks.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from generators.precision import full_precision


class EqualizedConv2d(nn.Module):
    """Conv2d with weight ~ N(0, 1), bias 0, computing c * (W x + b) with c = sqrt(2 / fan_in).

    The bias is scaled by c too, as in the published layer (which multiplies the whole
    convolution output): a "c W x + b" layer has the same forward for b' = c b but,
    under Adam, its bias moves about 1/c (~34x for a 3x3, 256-channel conv) faster.
    Checkpoints of format 1 stored b' and are converted on load (utils/checkpoint.py).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, padding: int = 0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.scale = math.sqrt(2.0 / (in_ch * kernel_size * kernel_size))
        self.padding = padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias * self.scale, padding=self.padding)


class AdaIN(nn.Module):
    """Instance norm per channel, then scale A and shift B from the style: A * x_hat + B."""

    def __init__(self, channels: int, style_dim: int = 256, eps: float = 1e-8):
        super().__init__()
        self.eps = eps
        self.style = nn.Linear(style_dim, 2 * channels)
        with torch.no_grad():
            self.style.weight.mul_(0.25)
            self.style.bias.zero_()

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        # Statistics in at least float32: eps = 1e-8 would vanish in half precision.
        xf = full_precision(x)
        mean = xf.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
        var = (xf - mean).square().mean(dim=(2, 3), keepdim=True).clamp_min(0)
        x_hat = ((xf - mean) * torch.rsqrt(var + self.eps)).to(x.dtype)
        scale, shift = self.style(style)[:, :, None, None].chunk(2, dim=1)  # 2 x (B, C, 1, 1)
        return scale * x_hat + shift


class StyledConv(nn.Module):
    """EqConv3x3 -> LeakyReLU(0.2) -> AdaIN."""

    def __init__(self, in_ch: int, out_ch: int, style_dim: int):
        super().__init__()
        self.conv = EqualizedConv2d(in_ch, out_ch, 3, padding=1)
        self.norm = AdaIN(out_ch, style_dim)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        return self.norm(F.leaky_relu(self.conv(x), 0.2), style)


class UpBlock(nn.Module):
    """Nearest 2x upsample, then two styled 3x3 convs."""

    def __init__(self, in_ch: int, out_ch: int, style_dim: int):
        super().__init__()
        self.conv1 = StyledConv(in_ch, out_ch, style_dim)
        self.conv2 = StyledConv(out_ch, out_ch, style_dim)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv2(self.conv1(x, style), style)


def upsample_blur(img: torch.Tensor) -> torch.Tensor:
    """Bilinear 2x (align_corners=False), then the normalised [1,2,1]x[1,2,1] blur, reflect-padded."""
    img = F.interpolate(img, scale_factor=2, mode="bilinear", align_corners=False)
    k = torch.tensor([1.0, 2.0, 1.0], device=img.device, dtype=img.dtype)
    kernel = (k[:, None] * k[None, :] / 16).expand(img.shape[1], 1, 3, 3)  # (C, 1, 3, 3) depthwise
    return F.conv2d(F.pad(img, (1, 1, 1, 1), mode="reflect"), kernel, groups=img.shape[1])


class Decoder(nn.Module):
    """Progressive upsampler: features (B, in_channels, S, S) + style -> image (B, 3, out, out)."""

    def __init__(self, in_channels: int = 256, style_dim: int = 256,
                 channels: Sequence[int] = (256, 256, 128, 64)):
        super().__init__()
        widths = (channels[0], *channels)  # width after the base, then after each block
        self.in_norm = AdaIN(in_channels, style_dim)
        self.base = StyledConv(in_channels, widths[0], style_dim)
        self.blocks = nn.ModuleList(
            UpBlock(widths[i], widths[i + 1], style_dim) for i in range(len(channels)))
        self.to_rgb = nn.ModuleList(EqualizedConv2d(w, 3, 1) for w in widths)

    def num_blocks(self, input_size: int, output_size: int) -> int:
        """n with output_size = input_size * 2^n; ValueError if there is no such n in range."""
        n = round(math.log2(max(output_size, 1) / input_size))
        if not 0 <= n <= len(self.blocks) or input_size * 2 ** n != output_size:
            raise ValueError(
                f"output_size must be {input_size} * 2^n with 0 <= n <= {len(self.blocks)} "
                f"for a {input_size}x{input_size} feature map, got {output_size}")
        return n

    def forward(self, features: torch.Tensor, style: torch.Tensor, output_size: int,
                alpha: float) -> torch.Tensor:
        n = self.num_blocks(features.shape[-1], output_size)
        x = self.in_norm(F.leaky_relu(features, 0.2), style)
        x = self.base(x, style)
        if n == 0:
            return self.to_rgb[0](x)
        for block in self.blocks[:n - 1]:
            x = block(x, style)
        image = self.to_rgb[n](self.blocks[n - 1](x, style))
        if alpha >= 1:
            return image
        skip = upsample_blur(self.to_rgb[n - 1](x))
        return (1 - alpha) * skip + alpha * image
