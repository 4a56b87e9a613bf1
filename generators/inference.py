"""Batched inference: a generator over many latents and cameras, a batch of images at a time.

Every script and metric that renders more images than fit in memory at once (the
metrics of `metrics/`, `render_multiview_image.py`) goes through `render_in_batches`,
so there is one loop over `staged_forward` and one default batch size. Entry points:
`render_in_batches`, `batch_slices`, `cat_outputs`, `RENDER_BATCH_SIZE`.
"""
from __future__ import annotations

from typing import Iterator, Optional, Sequence

import torch

from generators.generators import ImplicitGenerator3d, RenderOptions, StagedOutput

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


@torch.no_grad()
def render_in_batches(generator: ImplicitGenerator3d, z: torch.Tensor, cam2world: torch.Tensor,
                      options: RenderOptions, psi: float = 1.0, alpha: float = 1.0,
                      batch_size: int = RENDER_BATCH_SIZE, max_batch_size: Optional[int] = None,
                      device=None) -> Iterator[StagedOutput]:
    """`generator.staged_forward` of z (n, z_dim) at cameras cam2world (n, 4, 4), `batch_size` at a time.

    Yields one StagedOutput per batch, on `device` (default: the generator's), in order;
    their concatenation (`cat_outputs`) is what one `staged_forward` of all n would give.
    `max_batch_size` caps the points per field query; None keeps the generator's default.
    """
    if z.shape[0] != cam2world.shape[0]:
        raise ValueError(f"one camera per latent: got {z.shape[0]} latents and {cam2world.shape[0]} cameras")
    device = next(generator.parameters()).device if device is None else device
    chunking = {} if max_batch_size is None else {"max_batch_size": max_batch_size}
    for part in batch_slices(z.shape[0], batch_size):
        yield generator.staged_forward(z[part].to(device), options, psi=psi, cam2world=cam2world[part].to(device),
                                       alpha=alpha, **chunking)
