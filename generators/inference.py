"""Batched inference: a generator over many latents and cameras, a batch of images at a time.

Every script and metric that renders more images than fit in memory at once (the
metrics of `metrics/`, `render_multiview_image.py`) goes through `render_in_batches`,
so there is one loop over `staged_forward` and one default batch size. Entry points:
`render_in_batches`, `batch_slices`, `cat_outputs`, `expand_latents`, `RENDER_BATCH_SIZE`.
"""
from __future__ import annotations

from typing import Iterator, Optional, Sequence, Union

import torch

from generators.generators import ImplicitGenerator3d, LatentCodes, RenderOptions, StagedOutput

# Images per generator call. The 2D decoder's activations grow with the output size
# (at 512 px a batch of 8 holds ~1 GB per 64-channel layer); lower it when they do not fit.
RENDER_BATCH_SIZE = 8


def batch_slices(num: int, batch_size: int = RENDER_BATCH_SIZE) -> Iterator[slice]:
    """slice(0, b), slice(b, 2b), ... covering range(num); the last one may be shorter."""
    batch_size = max(1, int(batch_size))
    for start in range(0, num, batch_size):
        yield slice(start, min(num, start + batch_size))


def cat_outputs(parts: Sequence[StagedOutput]) -> StagedOutput:
    """Batches of outputs, concatenated along the batch dimension."""
    return StagedOutput(*(torch.cat(list(fields), dim=0) for fields in zip(*parts)))


def num_latents(latents: Union[torch.Tensor, LatentCodes]) -> int:
    return latents.style.shape[0] if isinstance(latents, LatentCodes) else latents.shape[0]


def expand_latents(latents: Union[torch.Tensor, LatentCodes], n: int) -> Union[torch.Tensor, LatentCodes]:
    """One latent (z (1, z_dim) or LatentCodes of batch 1) repeated n times, without copies."""
    if isinstance(latents, LatentCodes):
        return LatentCodes(*(c.expand(n, -1) for c in latents))
    return latents.expand(n, -1)


@torch.no_grad()
def render_in_batches(generator: ImplicitGenerator3d, z: Union[torch.Tensor, LatentCodes], cam2world: torch.Tensor,
                      options: RenderOptions, psi: float = 1.0, alpha: float = 1.0,
                      batch_size: int = RENDER_BATCH_SIZE, max_batch_size: Optional[int] = None,
                      device=None) -> Iterator[StagedOutput]:
    """`generator.staged_forward` of z (n, z_dim) at cameras cam2world (n, 4, 4), `batch_size` at a time.

    z may also be LatentCodes of n rows (codes fitted by invert.py): rendered as they are
    (`render_codes`, no truncation: psi is not used). Yields one StagedOutput per batch, on
    `device` (default: the generator's), in order; their concatenation (`cat_outputs`) is what one
    call for all n would give. `max_batch_size` caps the points per field query; None keeps the
    generator's default.
    """
    n = num_latents(z)
    if n != cam2world.shape[0]:
        raise ValueError(f"one camera per latent: got {n} latents and {cam2world.shape[0]} cameras")
    device = next(generator.parameters()).device if device is None else device
    chunking = {} if max_batch_size is None else {"max_batch_size": max_batch_size}
    for part in batch_slices(n, batch_size):
        cameras = cam2world[part].to(device)
        if isinstance(z, LatentCodes):
            yield generator.render_codes(LatentCodes(*(c[part].to(device) for c in z)), options, cameras,
                                         alpha=alpha, **chunking)
        else:
            yield generator.staged_forward(z[part].to(device), options, psi=psi, cam2world=cameras, alpha=alpha,
                                           **chunking)
