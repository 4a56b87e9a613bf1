"""The FiLM-SIREN's forward with half the memory for backward (impl="recompute", what CUDA runs).

It computes the formula of `siren.siren.SPATIALSIRENBASELINE.forward` (docs/METHOD.md §3), which
`tests/test_step_numerics.py` holds it to. Plain autograd through x <- sin(gamma (W x + b) + beta)
keeps two (n, M, H) tensors per layer for backward: the pre-activation z (for the sine's
cosine) and x = sin(z) (for the next layer's weight gradient), the bulk of a training step's
memory. Here each layer passes on its pre-activation z and the next applies sin(z) inside
`SineThenLinear`, which keeps z only and recomputes the sine in backward. Two rewrites of the
same algebra make each layer one batched matmul:

* gamma (W x + b) + beta = (gamma W) x + (gamma b + beta), a per-sample weight and bias
  (`modulated`), instead of two full-size element-wise passes over (n, M, H);
* the colour layer's input concat(directions, x) is split, W [d; x] = W_d d + W_x x: the
  small direction term becomes the bias of the feature matmul.

`siren/cpu_kernels.py` runs the same composition with CPU kernels in place of
`SineThenLinear` and the heads. Entry point: `field_forward(field, points, gammas, betas,
ray_directions)`.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn


def modulated(linear: nn.Linear, gamma: torch.Tensor, beta: torch.Tensor):
    """gamma (W x + b) + beta as (gamma W) x + (gamma b + beta), for gamma and beta (n, out).
    Returns weight (n, out, in) and bias (n, 1, out)."""
    weight = gamma[:, :, None] * linear.weight     # (n, out, in)
    bias = gamma * linear.bias + beta               # (n, out)
    return weight, bias[:, None, :]


class SineThenLinear(torch.autograd.Function):
    """z_out = sin(z_in) @ weight^T + bias, per sample; keeps only z_in for backward.

    z_in (n, M, in) is the previous layer's pre-activation, weight (n, out, in), bias
    (n, 1, out) or (n, M, out). Autograd on `baddbmm(bias, sin(z_in), weight^T)` would keep
    both z_in and sin(z_in); this keeps z_in and recomputes the sine in backward (one cheap
    element-wise pass). Under autocast the forward matmul runs in half precision and backward
    does its matmuls in the gradient's dtype, as autograd's own baddbmm backward would.
    """

    @staticmethod
    def forward(ctx, z_in, weight, bias):
        ctx.save_for_backward(z_in, weight)
        ctx.bias_shape = bias.shape
        return torch.baddbmm(bias, torch.sin(z_in), weight.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad):
        z_in, weight = ctx.saved_tensors
        weight = weight.to(grad.dtype)
        grad_z = grad_weight = grad_bias = None
        if ctx.needs_input_grad[2]:
            grad_bias = grad.sum(1, keepdim=True) if ctx.bias_shape[1] == 1 else grad
        x = torch.sin(z_in).to(grad.dtype)
        if ctx.needs_input_grad[1]:
            grad_weight = torch.bmm(grad.transpose(1, 2), x)  # (n, out, in)
        if ctx.needs_input_grad[0]:
            grad_z = torch.bmm(grad, weight).mul_(torch.cos(z_in, out=x))  # d sin(z) = cos(z) dz
        return grad_z, grad_weight, grad_bias


def hidden_preactivation(field: nn.Module, points: torch.Tensor, gammas: Sequence[torch.Tensor],
                         betas: Sequence[torch.Tensor],
                         sine_then_linear: Callable = SineThenLinear.apply) -> torch.Tensor:
    """z (n, M, H), the last of the eight FiLM layers' pre-activations, so x = sin(z);
    layers 2-8 go through `sine_then_linear(z_in, weight, bias)`."""
    weight, bias = modulated(field.network[0].layer, gammas[0], betas[0])
    z = torch.baddbmm(bias, field.gridwarper(points), weight.transpose(1, 2))
    for film, gamma, beta in zip(field.network[1:], gammas[1:], betas[1:]):
        z = sine_then_linear(z, *modulated(film.layer, gamma, beta))
    return z


def field_forward(field: nn.Module, points, gammas, betas, ray_directions):
    """`SPATIALSIRENBASELINE.forward` after the FiLM parameters: gammas and betas are nine
    (n, H) tensors; returns rgb (n, M, 3), raw sigma (n, M) and features (n, M, H)."""
    z = hidden_preactivation(field, points, gammas, betas)
    n = z.shape[0]
    final = field.final_layer
    sigma = SineThenLinear.apply(z, final.weight.expand(n, -1, -1), final.bias.expand(n, 1, -1))[..., 0]
    weight, bias = modulated(field.color_layer_sine.layer, gammas[-1], betas[-1])
    # the colour weight's first three columns act on the directions, the rest on sin(z)
    direction_term = torch.baddbmm(bias, ray_directions, weight[:, :, :3].transpose(1, 2))  # (n, M, H)
    features = torch.sin(SineThenLinear.apply(z, weight[:, :, 3:], direction_term))
    rgb = torch.sigmoid(field.color_layer_linear(features))
    return rgb, sigma, features
