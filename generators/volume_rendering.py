"""Volume integration ("point integrator", docs/METHOD.md §2) and importance sampling.

`integrate` turns per-sample colours, densities, features and depths into per-ray
colour, feature, depth and weights. `importance_depths` draws extra depth samples
from the coarse weights for hierarchical sampling.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, NamedTuple, Optional

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class IntegrationOptions:
    clamp_mode: str = "relu"
    nerf_noise: float = 0.0
    last_back: bool = False
    white_back: bool = False
    # Not in the published code (docs/METHOD.md §13): the transparent remainder of a ray counts at the far
    # end of its samples in the depth, so that an empty ray (the white background) lies behind the object,
    # as last_back gives, instead of at depth 0.
    far_background_depth: bool = False

    @classmethod
    def from_metadata(cls, metadata: Mapping, nerf_noise: float = 0.0,
                      evaluation: bool = False) -> "IntegrationOptions":
        last_back = metadata["eval_last_back"] if evaluation else metadata["last_back"]
        return cls(clamp_mode=metadata["clamp_mode"], nerf_noise=float(nerf_noise),
                   last_back=bool(last_back), white_back=bool(metadata["white_back"]),
                   far_background_depth=bool(metadata["far_background_depth"]))


class Integrated(NamedTuple):
    rgb: torch.Tensor                  # (n, R, 3)
    features: Optional[torch.Tensor]   # (n, R, C) or None
    depth: torch.Tensor                # (n, R)
    weights: torch.Tensor              # (n, R, N)
    opacity: torch.Tensor              # (n, R) 1 - transmittance through [ray_start, ray_end]


def integrate(rgb: torch.Tensor, sigma: torch.Tensor, depths: torch.Tensor,
              features: Optional[torch.Tensor] = None,
              options: IntegrationOptions = IntegrationOptions(),
              noise: Optional[torch.Tensor] = None) -> Integrated:
    """Alpha-composite samples along rays.

    rgb (n, R, N, 3), sigma (n, R, N) raw densities, depths (n, R, N) sorted along
    each ray, features (n, R, N, C) or None. `noise`: N(0, 1) draws shaped like sigma,
    scaled by `options.nerf_noise` and added to the raw density (none when either is absent).
    """
    deltas = depths[..., 1:] - depths[..., :-1]
    deltas = torch.cat([deltas, torch.full_like(deltas[..., :1], 1e10)], dim=-1)  # (n, R, N)
    if noise is not None and options.nerf_noise > 0:
        sigma = sigma + noise.to(sigma.dtype) * options.nerf_noise
    if options.clamp_mode == "softplus":
        sigma = F.softplus(sigma)
    elif options.clamp_mode == "relu":
        sigma = F.relu(sigma)
    else:
        raise ValueError(f"clamp_mode must be 'relu' or 'softplus', got {options.clamp_mode!r}")
    alphas = 1 - torch.exp(-deltas * sigma)
    shifted = torch.cat([torch.ones_like(alphas[..., :1]), 1 - alphas + 1e-10], dim=-1)
    transmittance = torch.cumprod(shifted, dim=-1)[..., :-1]
    weights = alphas * transmittance  # (n, R, N)
    # How opaque the ray is inside the sampled range: the last interval (delta 1e10) is
    # left out, since it turns any positive density at the far end into full opacity.
    opacity = 1 - transmittance[..., -1]
    weights_total = weights.sum(dim=-1)
    if options.last_back:
        weights = torch.cat([weights[..., :-1], weights[..., -1:] + (1 - weights_total)[..., None]], dim=-1)
    colour = torch.einsum("...n,...nc->...c", weights, rgb)
    # A batched matmul: no (n, R, N, C) temporary for the weighted features.
    feature = torch.einsum("...n,...nc->...c", weights, features) if features is not None else None
    depth = (weights * depths).sum(dim=-1)
    if options.far_background_depth and not options.last_back:
        depth = depth + (1 - weights_total) * depths[..., -1]
    if options.white_back:
        colour = colour + (1 - weights_total)[..., None]
    return Integrated(colour, feature, depth, weights, opacity)


def importance_depths(depths: torch.Tensor, weights: torch.Tensor, num_samples: int,
                      deterministic: bool = False,
                      generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Draw (n, R, num_samples) depths from the piecewise-constant PDF of coarse weights.

    As in NeRF/pi-GAN: bins are the midpoints of the coarse depths, the PDF uses the
    interior weights. No gradient flows through the new depths.
    """
    depths, weights = depths.detach(), weights.detach()
    mids = 0.5 * (depths[..., 1:] + depths[..., :-1])   # (n, R, N-1) bin edges
    pdf_weights = weights[..., 1:-1] + 1e-5             # (n, R, N-2) one per bin
    pdf = pdf_weights / pdf_weights.sum(dim=-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[..., :1]), torch.cumsum(pdf, dim=-1)], dim=-1)  # (n, R, N-1)
    shape = depths.shape[:-1] + (num_samples,)
    if deterministic:
        u = torch.linspace(0, 1, num_samples, device=depths.device, dtype=depths.dtype).expand(shape)
    else:
        u = torch.rand(shape, device=depths.device, dtype=depths.dtype, generator=generator)
    u = u.contiguous()
    above = torch.searchsorted(cdf.contiguous(), u, right=True).clamp(1, cdf.shape[-1] - 1)
    below = above - 1
    cdf_lo, cdf_hi = cdf.gather(-1, below), cdf.gather(-1, above)
    bin_lo, bin_hi = mids.gather(-1, below), mids.gather(-1, above)
    span = cdf_hi - cdf_lo
    span = torch.where(span < 1e-5, torch.ones_like(span), span)
    return bin_lo + (u - cdf_lo) / span * (bin_hi - bin_lo)
