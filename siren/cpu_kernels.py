"""CPU kernels of the FiLM-SIREN (impl="cpu_lowmem", what CPU runs): `siren/fast.py`'s
composition with no whole-tensor temporaries.

glibc serves every allocation over 32 MB (one activation at the paper's size is ~130 MB)
from fresh mmap pages and unmaps it on free, so each full-size temporary costs the kernel's
page faults and zeroing again, every step: a third of a CPU training step. Here:

* `OverwritingSineThenLinear` is `fast.SineThenLinear` worked through in row blocks of
  `BLOCK_ELEMENTS` elements (4 MB): the sines are block-sized heap temporaries reused block
  after block, the matmuls write straight into the one full-size result, and backward writes
  the gradient of z over z itself.
* `FieldHeads` is the density head, the colour layer and the rgb head, forward and backward
  in the same row blocks, so their full-size gradient sums and products disappear too.
* Without grad the generator calls the field on `no_grad_chunk_points` points at a time,
  so every layer's (chunk, H) activations are reused heap memory.

`tests/test_step_numerics.py` holds all three to the formula (`SPATIALSIRENBASELINE.forward`,
impl="reference"); docs/PERFORMANCE.md has what each bought. Entry point: `field_forward(field,
points, gammas, betas, ray_directions)`.
"""
from __future__ import annotations

import torch

from siren.fast import hidden_preactivation, modulated

# Rows of a (rows, width) block that the kernels work on at once: 2**20 float32 elements
# (4 MB), small enough to come from malloc's heap (2**19 was as fast, 2**21 slower).
BLOCK_ELEMENTS = 2 ** 20


def row_blocks(rows: int, width: int):
    """(start, stop) pairs covering `rows` in blocks of at most BLOCK_ELEMENTS elements."""
    step = max(1, BLOCK_ELEMENTS // max(1, width))
    return [(start, min(start + step, rows)) for start in range(0, rows, step)]


def no_grad_chunk_points(hidden_dim: int) -> int:
    """Points per field call without grad (over all samples): one block of activations."""
    return max(1, BLOCK_ELEMENTS // hidden_dim)


class OverwritingSineThenLinear(torch.autograd.Function):
    """`fast.SineThenLinear` (z_out = sin(z_in) @ weight^T + bias, keeping only z_in) in row
    blocks, for a z_in (n, M, in) that no other operation uses; bias (n, 1, out).

    Backward writes the gradient of z_in over z_in itself, block by block once the block's
    sine and cosine are taken: no (n, M, in) allocation at all. A second backward through the
    same graph then fails loudly (autograd sees the saved z_in modified) instead of using
    wrong values.
    """

    @staticmethod
    def forward(ctx, z_in, weight, bias):
        ctx.save_for_backward(z_in, weight)
        n, rows, width = z_in.shape
        out = z_in.new_empty((n, rows, weight.shape[1]))
        for sample in range(n):
            weight_t = weight[sample].t()  # (in, out)
            for start, stop in row_blocks(rows, width):
                torch.addmm(bias[sample], torch.sin(z_in[sample, start:stop]), weight_t,
                            out=out[sample, start:stop])
        return out

    @staticmethod
    def backward(ctx, grad):
        z_in, weight = ctx.saved_tensors
        weight = weight.to(grad.dtype)
        grad_weight = grad_bias = None
        if ctx.needs_input_grad[2]:
            grad_bias = grad.sum(1, keepdim=True)
        if ctx.needs_input_grad[1]:
            grad_weight = weight.new_zeros(weight.shape)  # (n, out, in), summed over the blocks
        n, rows, width = z_in.shape
        for sample in range(n):
            for start, stop in row_blocks(rows, width):
                block_grad = grad[sample, start:stop]                   # (rows, out)
                block_z = z_in[sample, start:stop]                      # (rows, in)
                x = torch.sin(block_z)
                if grad_weight is not None:
                    grad_weight[sample].addmm_(block_grad.t(), x)
                if ctx.needs_input_grad[0]:
                    derivative = torch.cos(block_z, out=x)  # d sin(z) = cos(z) dz
                    torch.mm(block_grad, weight[sample], out=block_z).mul_(derivative)
        return z_in if ctx.needs_input_grad[0] else None, grad_weight, grad_bias


class FieldHeads(torch.autograd.Function):
    """The field's three heads on the last pre-activation z (n, M, H), in row blocks:

        x = sin(z)
        sigma = x @ sigma_weight^T + sigma_bias                                   (n, M, 1)
        features = sin(x @ colour_weight^T + directions @ direction_weight^T + colour_bias)  (n, M, H)
        rgb_logit = features @ rgb_weight^T + rgb_bias                            (n, M, 3)

    colour_weight (n, H, H), direction_weight (n, H, 3) and colour_bias (n, 1, H) are the
    colour layer's FiLM-modulated weight split into its feature and direction columns;
    sigma and rgb weights are the plain linear heads'. The same formulas as `fast.field_forward`'s
    heads, but with every (n, M, H) temporary of that composition gone: z feeds two heads and
    features two consumers (the rgb head and the integral), and autograd sums those gradients
    in fresh full-size tensors; the direction term, the cosine and the product are three more.
    Here backward works block by block, writes the colour pre-activation's gradient over the
    saved pre-activation and z's gradient over z (z must be private to the field, as in
    `OverwritingSineThenLinear`). The only full-size tensors are the two the step needs: the
    pre-activation (saved) and features.
    """

    @staticmethod
    def forward(ctx, z, directions, colour_weight, direction_weight, colour_bias, sigma_weight, sigma_bias,
                rgb_weight, rgb_bias):
        n, rows, width = z.shape
        preactivation = z.new_empty((n, rows, colour_weight.shape[1]))
        features = torch.empty_like(preactivation)
        sigma = z.new_empty((n, rows, 1))
        rgb_logit = z.new_empty((n, rows, rgb_weight.shape[0]))
        for sample in range(n):
            for start, stop in row_blocks(rows, width):
                x = torch.sin(z[sample, start:stop])
                pre = torch.addmm(colour_bias[sample], x, colour_weight[sample].t(),
                                  out=preactivation[sample, start:stop])
                pre.addmm_(directions[sample, start:stop], direction_weight[sample].t())
                torch.addmm(sigma_bias, x, sigma_weight.t(), out=sigma[sample, start:stop])
                block_features = torch.sin(pre, out=features[sample, start:stop])
                torch.addmm(rgb_bias, block_features, rgb_weight.t(), out=rgb_logit[sample, start:stop])
        ctx.save_for_backward(z, directions, colour_weight, direction_weight, sigma_weight, rgb_weight)
        ctx.preactivation = preactivation  # private: backward overwrites it with its gradient
        return sigma, features, rgb_logit

    @staticmethod
    def backward(ctx, grad_sigma, grad_features, grad_rgb_logit):
        z, directions, colour_weight, direction_weight, sigma_weight, rgb_weight = ctx.saved_tensors
        preactivation = ctx.preactivation
        n, rows, width = z.shape
        grads = dict(colour_weight=torch.zeros_like(colour_weight), direction_weight=torch.zeros_like(direction_weight),
                     colour_bias=colour_weight.new_zeros((n, 1, colour_weight.shape[1])),
                     sigma_weight=torch.zeros_like(sigma_weight), sigma_bias=sigma_weight.new_zeros(1),
                     rgb_weight=torch.zeros_like(rgb_weight), rgb_bias=rgb_weight.new_zeros(rgb_weight.shape[0]))
        grad_directions = torch.empty_like(directions) if ctx.needs_input_grad[1] else None
        for sample in range(n):
            for start, stop in row_blocks(rows, width):
                rgb_block, sigma_block = grad_rgb_logit[sample, start:stop], grad_sigma[sample, start:stop]
                pre = preactivation[sample, start:stop]
                block_features = torch.sin(pre)
                grads["rgb_weight"].addmm_(rgb_block.t(), block_features)
                grads["rgb_bias"] += rgb_block.sum(0)
                # dL/dfeatures from both consumers, then d sin(pre) = cos(pre) dpre, over pre
                grad_pre = torch.addmm(grad_features[sample, start:stop], rgb_block, rgb_weight,
                                       out=block_features)
                grad_pre = pre.cos_().mul_(grad_pre)
                x = torch.sin(z[sample, start:stop])
                grads["colour_weight"][sample].addmm_(grad_pre.t(), x)
                grads["direction_weight"][sample].addmm_(grad_pre.t(), directions[sample, start:stop])
                grads["colour_bias"][sample] += grad_pre.sum(0)
                grads["sigma_weight"].addmm_(sigma_block.t(), x)
                grads["sigma_bias"] += sigma_block.sum(0)
                if grad_directions is not None:
                    torch.mm(grad_pre, direction_weight[sample], out=grad_directions[sample, start:stop])
                # dL/dx from both heads, then d sin(z) = cos(z) dz, over z
                grad_x = torch.mm(grad_pre, colour_weight[sample], out=x).addmm_(sigma_block, sigma_weight)
                block_z = z[sample, start:stop]
                block_z.cos_().mul_(grad_x)
        return (z, grad_directions, grads["colour_weight"], grads["direction_weight"], grads["colour_bias"],
                grads["sigma_weight"], grads["sigma_bias"], grads["rgb_weight"], grads["rgb_bias"])


def field_forward(field, points, gammas, betas, ray_directions):
    """`fast.field_forward` through the kernels above: rgb (n, M, 3), raw sigma (n, M), features (n, M, H)."""
    # Each hidden layer's z feeds only the next layer, so its gradient may overwrite it.
    z = hidden_preactivation(field, points, gammas, betas, sine_then_linear=OverwritingSineThenLinear.apply)
    weight, bias = modulated(field.color_layer_sine.layer, gammas[-1], betas[-1])
    final, rgb_head = field.final_layer, field.color_layer_linear
    sigma, features, rgb_logit = FieldHeads.apply(
        z, ray_directions, weight[:, :, 3:], weight[:, :, :3], bias, final.weight, final.bias,
        rgb_head.weight, rgb_head.bias)
    return torch.sigmoid(rgb_logit), sigma[..., 0], features
