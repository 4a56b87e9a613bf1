"""The radiance field ("point embedder", docs/METHOD.md §3): FiLM-conditioned SIREN + mapping network.

`SPATIALSIRENBASELINE` is what the curricula use; `TALLSIREN` is the same network
without the box warp. Both own their `mapping_network`, which maps z to the FiLM
frequencies, phases and the 256-d mapping code that styles the 2D decoder.
Entry point: `field(points, frequencies, phases, ray_directions) -> (rgb, sigma, features)`.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

BOX_SIZE = 0.24
NUM_FILM_LAYERS = 8  # plus the colour layer: 9 FiLM layers in all


def frequency_init(linear: nn.Linear, freq: float = 25.0) -> None:
    """SIREN init U(+-sqrt(6/fan_in)/freq) for the weights; biases keep their default."""
    with torch.no_grad():
        bound = math.sqrt(6 / linear.in_features) / freq
        linear.weight.uniform_(-bound, bound)


def first_layer_film_sine_init(linear: nn.Linear) -> None:
    with torch.no_grad():
        bound = 1 / linear.in_features
        linear.weight.uniform_(-bound, bound)


# Rows of a (rows, width) block that the CPU path of `SineThenLinear` works on at once:
# 2**20 float32 elements (4 MB). Temporaries of this size come from malloc's heap and are
# reused block after block; a whole-tensor temporary (~130 MB at the paper's size) is mmap'd
# fresh each time, and the kernel's page faults and zeroing of those temporaries were a third
# of a CPU training step.
BLOCK_ELEMENTS = 2 ** 20
# Devices whose field runs its heads through `FieldHeads`; elsewhere (CUDA) autograd composes
# them from `SineThenLinear`, sin and Linear, and the caching allocator reuses the temporaries.
FUSED_HEADS_DEVICES = {"cpu"}


def row_blocks(rows: int, width: int):
    """(start, stop) pairs covering `rows` in blocks of at most BLOCK_ELEMENTS elements."""
    step = max(1, BLOCK_ELEMENTS // max(1, width))
    return [(start, min(start + step, rows)) for start in range(0, rows, step)]


class SineThenLinear(torch.autograd.Function):
    """z_out = sin(z_in) @ weight^T + bias, per sample; keeps only z_in for backward.

    z_in (n, M, in) is the previous layer's pre-activation, weight (n, out, in), bias
    (n, 1, out) or (n, M, out). Autograd on `baddbmm(bias, sin(z_in), weight^T)` would
    keep both z_in (for the sine's cosine) and sin(z_in) (for the weight gradient): two
    (n, M, in) tensors per layer, the bulk of a training step's memory. This keeps z_in
    only and recomputes the sine in backward (one cheap element-wise pass).

    On CPU both passes go through z_in in row blocks (`row_blocks`): the sines are
    block-sized temporaries and the matmuls write straight into the one full-size result
    (z_out, or the gradient of z_in), so no other (n, M, .) tensor is ever allocated.
    With `overwrite_input` (for a z_in that no other operation uses) backward writes the
    gradient of z_in over z_in itself, block by block once the block's sine and cosine are
    taken: no (n, M, in) allocation at all. A second backward through the same graph then
    fails loudly (autograd sees the saved z_in modified) instead of using wrong values.
    Elsewhere (CUDA, where the caching allocator reuses memory anyway) it is one batched
    matmul; under autocast that matmul runs in half precision and backward does its
    matmuls in the gradient's dtype, as autograd's own baddbmm backward would.
    """

    @staticmethod
    def forward(ctx, z_in, weight, bias, overwrite_input=False):
        ctx.save_for_backward(z_in, weight)
        ctx.bias_shape = bias.shape
        ctx.overwrite_input = overwrite_input
        if z_in.device.type != "cpu":
            return torch.baddbmm(bias, torch.sin(z_in), weight.transpose(1, 2))
        n, rows, width = z_in.shape
        out = z_in.new_empty((n, rows, weight.shape[1]))
        for sample in range(n):
            weight_t = weight[sample].t()  # (in, out)
            for start, stop in row_blocks(rows, width):
                sample_bias = bias[sample] if bias.shape[1] == 1 else bias[sample, start:stop]
                torch.addmm(sample_bias, torch.sin(z_in[sample, start:stop]), weight_t,
                            out=out[sample, start:stop])
        return out

    @staticmethod
    def backward(ctx, grad):
        z_in, weight = ctx.saved_tensors
        weight = weight.to(grad.dtype)
        grad_z = grad_weight = grad_bias = None
        if ctx.needs_input_grad[2]:
            grad_bias = grad.sum(1, keepdim=True) if ctx.bias_shape[1] == 1 else grad
        if z_in.device.type != "cpu":
            x = torch.sin(z_in).to(grad.dtype)
            if ctx.needs_input_grad[1]:
                grad_weight = torch.bmm(grad.transpose(1, 2), x)  # (n, out, in)
            if ctx.needs_input_grad[0]:
                grad_z = torch.bmm(grad, weight).mul_(torch.cos(z_in, out=x))  # d sin(z) = cos(z) dz
            return grad_z, grad_weight, grad_bias, None
        n, rows, width = z_in.shape
        if ctx.needs_input_grad[0]:
            grad_z = z_in if ctx.overwrite_input else torch.empty_like(z_in)
        if ctx.needs_input_grad[1]:
            grad_weight = weight.new_zeros(weight.shape)  # (n, out, in), summed over the blocks
        for sample in range(n):
            for start, stop in row_blocks(rows, width):
                block_grad = grad[sample, start:stop]                   # (rows, out)
                block_z = z_in[sample, start:stop]                      # (rows, in)
                x = torch.sin(block_z)
                if ctx.needs_input_grad[1]:
                    grad_weight[sample].addmm_(block_grad.t(), x)
                if ctx.needs_input_grad[0]:
                    derivative = torch.cos(block_z, out=x)  # d sin(z) = cos(z) dz
                    block = torch.mm(block_grad, weight[sample], out=grad_z[sample, start:stop])
                    block.mul_(derivative)
        return grad_z, grad_weight, grad_bias, None


class FieldHeads(torch.autograd.Function):
    """The field's three heads on the last pre-activation z (n, M, H), on CPU, in row blocks:

        x = sin(z)
        sigma = x @ sigma_weight^T + sigma_bias                                   (n, M, 1)
        features = sin(x @ colour_weight^T + directions @ direction_weight^T + colour_bias)  (n, M, H)
        rgb_logit = features @ rgb_weight^T + rgb_bias                            (n, M, 3)

    colour_weight (n, H, H), direction_weight (n, H, 3) and colour_bias (n, 1, H) are the
    colour layer's FiLM-modulated weight split into its feature and direction columns;
    sigma and rgb weights are the plain linear heads'. The same formulas as autograd through
    `SineThenLinear` + sin + Linear, but with every (n, M, H) temporary of that composition
    gone: z feeds two heads and features two consumers (the rgb head and the integral), and
    autograd sums those gradients in fresh full-size tensors; the direction term, the
    cosine and the product are three more. Here backward works block by block, writes the
    colour pre-activation's gradient over the saved pre-activation and z's gradient over z
    (z must be private to the field, as `overwrite_input` in `SineThenLinear`). The only
    full-size tensors are the two the step needs: the pre-activation (saved) and features.
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


class FiLMLayer(nn.Module):
    """sin(gamma * (W x + b) + beta), gamma and beta per sample: (n, H)."""

    def __init__(self, input_dim: int, hidden_dim: int):
        super().__init__()
        self.layer = nn.Linear(input_dim, hidden_dim)

    def modulated(self, frequencies, phases):
        """gamma*(Wx + b) + beta as (gamma*W) x + (gamma*b + beta): one batched matmul instead
        of two full-size element-wise passes over (n, M, H). Returns weight (n, H, in) and
        bias (n, 1, H)."""
        weight = frequencies[:, :, None] * self.layer.weight     # (n, H, in)
        bias = frequencies * self.layer.bias + phases             # (n, H)
        return weight, bias[:, None, :]

    def preactivation(self, x, frequencies, phases):
        """gamma * (W x + b) + beta for x (n, M, in)."""
        weight, bias = self.modulated(frequencies, phases)
        return torch.baddbmm(bias, x, weight.transpose(1, 2))

    def preactivation_after_sine(self, z_in, frequencies, phases, overwrite_input: bool = False):
        """The pre-activation of this layer applied to sin(z_in), where z_in is the previous
        layer's pre-activation (`overwrite_input`: see SineThenLinear)."""
        weight, bias = self.modulated(frequencies, phases)
        return SineThenLinear.apply(z_in, weight, bias, overwrite_input)

    def forward(self, x, frequencies, phases):
        return torch.sin(self.preactivation(x, frequencies, phases))


class CustomMappingNetwork(nn.Module):
    """z -> (raw frequencies, phases, mapping code): 3 x (Linear, LeakyReLU 0.2) + Linear."""

    def __init__(self, z_dim: int = 256, map_hidden_dim: int = 256, map_output_dim: int = 2 * 9 * 256):
        super().__init__()
        self.network = nn.Sequential(
            nn.Linear(z_dim, map_hidden_dim), nn.LeakyReLU(0.2),
            nn.Linear(map_hidden_dim, map_hidden_dim), nn.LeakyReLU(0.2),
            nn.Linear(map_hidden_dim, map_hidden_dim), nn.LeakyReLU(0.2),
        )
        self.output_layer = nn.Linear(map_hidden_dim, map_output_dim)
        for module in [*self.network, self.output_layer]:
            if isinstance(module, nn.Linear):
                nn.init.kaiming_normal_(module.weight, a=0.2, mode="fan_in", nonlinearity="leaky_relu")
        with torch.no_grad():
            self.output_layer.weight *= 0.25

    def forward(self, z):
        mapping_code = self.network(z)  # (n, 256): also the 2D decoder's style
        out = self.output_layer(mapping_code)
        half = out.shape[-1] // 2
        return out[..., :half], out[..., half:], mapping_code


class UniformBoxWarp(nn.Module):
    """Scales a box of side `box_size` around the origin to [-1, 1]^3."""

    def __init__(self, box_size: float):
        super().__init__()
        self.scale_factor = 2 / box_size

    def forward(self, points):
        return points * self.scale_factor


class SPATIALSIRENBASELINE(nn.Module):
    """Eight FiLM-SIREN layers, a density head and a view-dependent colour branch."""

    box_warp = True

    def __init__(self, z_dim: int = 256, hidden_dim: int = 256, map_hidden_dim: int = 256):
        super().__init__()
        self.z_dim, self.hidden_dim = z_dim, hidden_dim
        self.network = nn.ModuleList(
            [FiLMLayer(3, hidden_dim)] + [FiLMLayer(hidden_dim, hidden_dim) for _ in range(NUM_FILM_LAYERS - 1)])
        self.final_layer = nn.Linear(hidden_dim, 1)
        self.color_layer_sine = FiLMLayer(hidden_dim + 3, hidden_dim)
        self.color_layer_linear = nn.Linear(hidden_dim, 3)
        self.mapping_network = CustomMappingNetwork(
            z_dim, map_hidden_dim, (NUM_FILM_LAYERS + 1) * hidden_dim * 2)
        for film in [*self.network, self.color_layer_sine]:
            frequency_init(film.layer)
        frequency_init(self.final_layer)
        frequency_init(self.color_layer_linear)
        first_layer_film_sine_init(self.network[0].layer)
        self.gridwarper = UniformBoxWarp(BOX_SIZE) if self.box_warp else nn.Identity()

    def forward(self, points, frequencies, phases, ray_directions):
        """points, ray_directions (n, M, 3); raw frequencies and phases (n, 9H).

        Returns rgb (n, M, 3) in [0, 1], raw sigma (n, M) and features (n, M, H).
        """
        frequencies = frequencies * 15 + 30
        hidden = self.hidden_dim
        film = lambda index: (frequencies[..., index * hidden:(index + 1) * hidden],
                              phases[..., index * hidden:(index + 1) * hidden])
        # Every layer passes on its pre-activation z; the next applies sin(z) inside
        # `SineThenLinear`, so backward keeps one (n, M, H) tensor per layer, not two.
        z = self.network[0].preactivation(self.gridwarper(points), *film(0))
        for index, layer in enumerate(self.network[1:], start=1):
            # Each of these z feeds only the next layer; the last one feeds the heads.
            z = layer.preactivation_after_sine(z, *film(index), overwrite_input=True)
        colour = self.color_layer_sine
        weight, bias = colour.modulated(frequencies[..., -hidden:], phases[..., -hidden:])
        if z.device.type in FUSED_HEADS_DEVICES:
            sigma, features, rgb_logit = FieldHeads.apply(
                z, ray_directions, weight[:, :, 3:], weight[:, :, :3], bias, self.final_layer.weight,
                self.final_layer.bias, self.color_layer_linear.weight, self.color_layer_linear.bias)
            return torch.sigmoid(rgb_logit), sigma[..., 0], features
        n = z.shape[0]
        final = self.final_layer
        sigma = SineThenLinear.apply(z, final.weight.expand(n, -1, -1), final.bias.expand(n, 1, -1))[..., 0]
        # The colour layer's input is cat([ray_directions, sin(z)]): its weight's first three
        # columns act on the directions (a small matmul), the rest on sin(z).
        direction_term = torch.baddbmm(bias, ray_directions, weight[:, :, :3].transpose(1, 2))
        features = torch.sin(SineThenLinear.apply(z, weight[:, :, 3:], direction_term))
        rgb = torch.sigmoid(self.color_layer_linear(features))
        return rgb, sigma, features


class TALLSIREN(SPATIALSIRENBASELINE):
    """SPATIALSIRENBASELINE without the box warp (points are used as given)."""

    box_warp = False


def compile_field(field: nn.Module) -> bool:
    """torch.compile `field` in place (its state dict keys do not change); True if it was.

    Inductor fuses the FiLM-SIREN's element-wise work (sine, FiLM, sigmoid) into the
    kernels around the matmuls. It needs a C++ compiler on CPU and Triton on CUDA; where
    either is missing, or compilation fails later, the field runs eagerly, with a warning.
    """
    import shutil
    import warnings

    device = next(field.parameters()).device
    if device.type == "cpu" and not (shutil.which("g++") or shutil.which("c++")):
        warnings.warn("--compile: no C++ compiler found; the FiLM-SIREN runs eagerly")
        return False
    import torch._dynamo
    torch._dynamo.config.suppress_errors = True  # a failed compilation falls back to eager
    field.compile()
    return True


SIRENS = {"SPATIALSIRENBASELINE": SPATIALSIRENBASELINE, "TALLSIREN": TALLSIREN}
