"""The radiance field ("point embedder", docs/METHOD.md §3): FiLM-conditioned SIREN + mapping network.

`SPATIALSIRENBASELINE` is what the curricula use; `TALLSIREN` is the same network
without the box warp. Both own their `mapping_network`, which maps z to the FiLM
frequencies, phases and the 256-d mapping code that styles the 2D decoder.
Entry point: `field(points, frequencies, phases, ray_directions) -> (rgb, sigma, features)`.

`SPATIALSIRENBASELINE.forward` is the formula of docs/METHOD.md §3 in plain autograd. Training
runs the same formula with less memory, by default (`impl="auto"`, FIELD_IMPLS): on CUDA (any
device but the CPU) the recompute-the-sine composition of `siren/fast.py`, on CPU that
composition through the row-block kernels of `siren/cpu_kernels.py`. Those re-write the formula,
so a change to it here must be made there too: `check_fast_paths` compares them in float64 when
a run starts (run_spec.check_run) and stops it, naming the files, where they differ.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from siren import cpu_kernels, fast

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


class FiLMLayer(nn.Module):
    """sin(gamma * (W x + b) + beta): a linear layer whose output each sample scales and shifts."""

    def __init__(self, input_dim: int, hidden_dim: int):
        super().__init__()
        self.layer = nn.Linear(input_dim, hidden_dim)

    def forward(self, x, gamma, beta):
        """x (n, M, in); gamma, beta (n, H)."""
        return torch.sin(gamma[:, None] * self.layer(x) + beta[:, None])


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


# How the field computes its forward; all compute the formula of `SPATIALSIRENBASELINE.forward`
# (tests/test_step_numerics.py holds them to it):
#   "reference":  that formula through plain autograd: two (n, M, H) tensors per layer for backward.
#   "recompute":  siren/fast.py: one per layer, the sine recomputed in backward; any device.
#   "cpu_lowmem": siren/cpu_kernels.py: "recompute" in row blocks, gradients written over the
#                 activations, and small no-grad chunks: no full-size temporaries, for glibc's malloc.
#   "auto":       "cpu_lowmem" on CPU, "recompute" elsewhere (CUDA's caching allocator already
#                 reuses temporaries).
FIELD_IMPLS = ("auto", "reference", "recompute", "cpu_lowmem")
FAST_FORWARDS = {"recompute": fast.field_forward, "cpu_lowmem": cpu_kernels.field_forward}
# Where each one's copy of the formula lives: the files to edit with the formula (check_fast_paths).
FAST_PATH_FILES = {"recompute": "siren/fast.py", "cpu_lowmem": "siren/cpu_kernels.py and siren/fast.py"}


def resolve_impl(impl: str, device: torch.device) -> str:
    """The implementation that `impl` (one of FIELD_IMPLS) runs on `device`."""
    if impl == "auto":
        return "cpu_lowmem" if device.type == "cpu" else "recompute"
    return impl


class SPATIALSIRENBASELINE(nn.Module):
    """Eight FiLM-SIREN layers, a density head and a view-dependent colour branch.

    `impl` (FIELD_IMPLS) picks how the forward is computed; it is not part of the state dict
    and may be set at any time (`field.impl = "reference"`).
    """

    box_warp = True

    def __init__(self, z_dim: int = 256, hidden_dim: int = 256, map_hidden_dim: int = 256, impl: str = "auto"):
        super().__init__()
        self.z_dim, self.hidden_dim = z_dim, hidden_dim
        self.impl = impl
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

    @property
    def impl(self) -> str:
        return self._impl

    @impl.setter
    def impl(self, impl: str) -> None:
        if impl not in FIELD_IMPLS:
            raise ValueError(f"unknown field impl {impl!r}; available: {list(FIELD_IMPLS)}")
        self._impl = impl

    def forward(self, points, frequencies, phases, ray_directions):
        """points, ray_directions (n, M, 3); raw frequencies and phases (n, 9H).

        Returns rgb (n, M, 3) in [0, 1], raw sigma (n, M) and features (n, M, H).
        """
        # FiLM layer k (the colour layer is the ninth) uses slice k of the frequencies and phases
        gammas = (frequencies * 15 + 30).split(self.hidden_dim, dim=-1)  # 9 x (n, H)
        betas = phases.split(self.hidden_dim, dim=-1)                    # 9 x (n, H)
        impl = resolve_impl(self.impl, points.device)
        if impl != "reference":
            return FAST_FORWARDS[impl](self, points, gammas, betas, ray_directions)
        x = self.gridwarper(points)
        for film, gamma, beta in zip(self.network, gammas, betas):
            x = film(x, gamma, beta)                                     # (n, M, H)
        sigma = self.final_layer(x)[..., 0]
        features = self.color_layer_sine(torch.cat([ray_directions, x], dim=-1), gammas[-1], betas[-1])
        rgb = torch.sigmoid(self.color_layer_linear(features))
        return rgb, sigma, features

    def points_per_no_grad_chunk(self, device: torch.device) -> Optional[int]:
        """How many points (over all samples) the field wants per call on `device` when nothing
        is kept for backward; None: all at once."""
        if resolve_impl(self.impl, device) == "cpu_lowmem":
            return cpu_kernels.no_grad_chunk_points(self.hidden_dim)
        return None


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

# float64 agreement of the fast paths with the formula; tests/test_step_numerics.py holds them to 1e-10
FAST_PATH_TOLERANCE = 1e-8


def check_fast_paths(field_class: type = SPATIALSIRENBASELINE) -> None:
    """Raise ValueError, naming the files to edit, where a fast implementation (FAST_FORWARDS) of
    `field_class` computes something else than its reference formula (`forward` with
    impl="reference", siren/siren.py): outputs, and gradients of a weighted sum of them with respect
    to the inputs and the weights, in float64 on a small field on the CPU. Such a field (edited
    formula, old fast path) would otherwise train the old formula without a word. Takes well under
    a second; leaves torch's random numbers as they were."""
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        torch.manual_seed(0)
        field = field_class(z_dim=4, hidden_dim=8).double()
        n, points_per_sample, width = 2, 5, field.hidden_dim * (NUM_FILM_LAYERS + 1)
        inputs = {"points": torch.randn(n, points_per_sample, 3, dtype=torch.float64) * 0.1,
                  "frequencies": torch.randn(n, width, dtype=torch.float64) * 0.3,
                  "phases": torch.randn(n, width, dtype=torch.float64),
                  "ray_directions": F.normalize(torch.randn(n, points_per_sample, 3, dtype=torch.float64), dim=-1)}
        output_weights = [torch.randn(n, points_per_sample, channels, dtype=torch.float64).squeeze(-1)
                          for channels in (3, 1, field.hidden_dim)]
    parameters = dict(field.named_parameters())

    def results(impl: str) -> dict:
        """{name: tensor or None}: the outputs, then the gradients of the inputs and parameters."""
        field.impl = impl
        leaves = {name: tensor.clone().requires_grad_() for name, tensor in inputs.items()}
        outputs = dict(zip(("rgb", "sigma", "features"), field(*leaves.values())))  # in forward's order
        loss = sum((output * weight).sum() for output, weight in zip(outputs.values(), output_weights))
        wrt = {**leaves, **parameters}
        gradients = torch.autograd.grad(loss, list(wrt.values()), allow_unused=True)
        return {**{name: output.detach() for name, output in outputs.items()},
                **{f"the gradient of {name}": gradient for name, gradient in zip(wrt, gradients)}}

    reference = results("reference")
    for impl in FAST_FORWARDS:
        path = FAST_PATH_FILES[impl]
        fast_results = results(impl)
        for name, expected in reference.items():
            difference = _largest_difference(fast_results[name], expected)
            scale = 1.0 if expected is None else 1.0 + expected.abs().max().item()
            if difference > FAST_PATH_TOLERANCE * scale:
                device = "the CPU" if resolve_impl("auto", torch.device("cpu")) == impl else "CUDA"
                raise ValueError(
                    f"the field's fast path {path} (impl {impl!r}, what training runs on {device}) no longer "
                    f"computes the formula of {field_class.__name__}.forward in siren/siren.py: {name} differs by "
                    f"{difference:.3g} in float64. Training would run the old formula: make the same change in "
                    f"{path} (tests/test_step_numerics.py compares them), or undo it in siren/siren.py")


def _largest_difference(got: Optional[torch.Tensor], expected: Optional[torch.Tensor]) -> float:
    """max |got - expected|; 0 when both are None, infinite when only one is or the shapes differ."""
    if got is None or expected is None:
        return 0.0 if got is expected else math.inf
    return (got - expected).abs().max().item() if got.shape == expected.shape else math.inf
