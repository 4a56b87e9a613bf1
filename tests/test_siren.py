"""Tests for the FiLM-SIREN radiance field and its mapping network (docs/METHOD.md §3)."""
import math

import pytest
import torch
import torch.nn as nn

from float_tolerance import network_atol
from siren.siren import (BOX_SIZE, SIRENS, TALLSIREN, CustomMappingNetwork, FiLMLayer,
                         SPATIALSIRENBASELINE, check_fast_paths, resolve_impl)


def count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def default_siren():
    torch.manual_seed(0)
    return SPATIALSIRENBASELINE()


def small_siren(cls=SPATIALSIRENBASELINE, hidden=16, z_dim=32, seed=0):
    torch.manual_seed(seed)
    return cls(z_dim=z_dim, hidden_dim=hidden)


def test_param_counts(default_siren):
    mapping = count(default_siren.mapping_network)
    assert mapping == 1_381_632
    assert count(default_siren) - mapping == 529_156
    assert count(TALLSIREN()) == 529_156 + 1_381_632
    assert set(SIRENS) == {"SPATIALSIRENBASELINE", "TALLSIREN"}


def test_film_init_ranges(default_siren):
    s = default_siren
    linears = [film.layer for film in s.network[1:]] + [s.color_layer_sine.layer, s.final_layer,
                                                       s.color_layer_linear]
    for lin in linears:
        bound = math.sqrt(6 / lin.in_features) / 25
        w = lin.weight
        assert w.abs().max() <= bound
        # uniform over the whole range: max near the bound, std = bound / sqrt(3)
        assert w.abs().max() > 0.9 * bound
        if w.numel() > 1000:
            assert abs(w.std().item() - bound / math.sqrt(3)) < 0.03 * bound
    assert s.color_layer_sine.layer.in_features == 256 + 3
    first = s.network[0].layer.weight
    assert first.shape == (256, 3)
    assert first.abs().max() <= 1 / 3 and first.abs().max() > 0.3
    # biases keep PyTorch's default U(+-1/sqrt(fan_in))
    for lin in linears + [s.network[0].layer]:
        b = lin.bias
        bound = 1 / math.sqrt(lin.in_features)
        assert b.abs().max() <= bound
        if b.numel() > 100:
            assert b.abs().max() > 0.8 * bound


def test_mapping_init(default_siren):
    m = default_siren.mapping_network
    linears = [mod for mod in m.network if isinstance(mod, nn.Linear)] + [m.output_layer]
    assert len(linears) == 4
    gain = math.sqrt(2 / (1 + 0.2 ** 2))
    for i, lin in enumerate(linears):
        expected = gain / math.sqrt(lin.in_features) * (0.25 if lin is m.output_layer else 1.0)
        w = lin.weight
        assert abs(w.std().item() - expected) < 0.02 * expected
        assert abs(w.mean().item()) < 0.02 * expected
        # normal, not uniform: kurtosis ~ 3 (uniform would be 1.8)
        kurt = (((w - w.mean()) / w.std()) ** 4).mean().item()
        assert 2.8 < kurt < 3.2
        bound = 1 / math.sqrt(lin.in_features)
        assert lin.bias.abs().max() <= bound and lin.bias.abs().max() > 0.8 * bound
    assert m.output_layer.out_features == 2 * 9 * 256
    slopes = [mod.negative_slope for mod in m.network if isinstance(mod, nn.LeakyReLU)]
    assert slopes == [0.2, 0.2, 0.2]


def test_mapping_outputs():
    torch.manual_seed(0)
    m = CustomMappingNetwork(32, 256, 2 * 9 * 16)
    z = torch.randn(5, 32)
    freq, phase, code = m(z)
    assert freq.shape == phase.shape == (5, 9 * 16) and code.shape == (5, 256)
    out = m.output_layer(m.network(z))
    assert torch.equal(freq, out[:, :144]) and torch.equal(phase, out[:, 144:])
    # the code is the activation after the last LeakyReLU
    x = z
    for mod in m.network:
        x = mod(x)
    assert torch.equal(code, x)
    assert (code < 0).any()  # leaky: negatives survive, scaled by 0.2


@pytest.mark.parametrize("cls", [SPATIALSIRENBASELINE, TALLSIREN])
def test_output_shapes_and_ranges(cls):
    s = small_siren(cls)
    g = torch.Generator().manual_seed(1)
    pts = torch.randn(3, 50, 3, generator=g) * 0.1
    dirs = torch.nn.functional.normalize(torch.randn(3, 50, 3, generator=g), dim=-1)
    freq, phase, _ = s.mapping_network(torch.randn(3, 32, generator=g))
    rgb, sigma, feats = s(pts, freq, phase, dirs)
    assert rgb.shape == (3, 50, 3) and sigma.shape == (3, 50) and feats.shape == (3, 50, 16)
    assert (rgb >= 0).all() and (rgb <= 1).all()
    assert feats.abs().max() <= 1  # a sine layer's output
    # view dependence: only the colour branch sees the direction
    rgb2, sigma2, feats2 = s(pts, freq, phase, -dirs)
    assert torch.equal(sigma, sigma2)
    assert not torch.allclose(rgb, rgb2) and not torch.allclose(feats, feats2)


def test_box_warp():
    spatial = small_siren(SPATIALSIRENBASELINE)
    tall = TALLSIREN(z_dim=32, hidden_dim=16)
    tall.load_state_dict(spatial.state_dict())
    g = torch.Generator().manual_seed(2)
    pts = (torch.rand(2, 40, 3, generator=g) - 0.5) * 0.24
    dirs = torch.nn.functional.normalize(torch.randn(2, 40, 3, generator=g), dim=-1)
    freq, phase, _ = spatial.mapping_network(torch.randn(2, 32, generator=g))
    a = spatial(pts, freq, phase, dirs)
    b = tall(pts * (2 / 0.24), freq, phase, dirs)  # the same float scale as the warp
    for x, y in zip(a, b):  # the scale applied inside or outside: equal to rounding (tests/float_tolerance.py)
        assert torch.allclose(x, y, rtol=0, atol=network_atol(spatial, y))
    c = tall(pts, freq, phase, dirs)
    assert not torch.allclose(a[1], c[1], atol=1e-3)
    assert BOX_SIZE == 0.24


@pytest.mark.parametrize("impl", ["reference", "recompute", "cpu_lowmem", "auto"])
def test_forward_by_hand(impl, device):
    """gamma = 15 * raw + 30, layer k uses slice [kH, (k+1)H], colour layer the last slice."""
    hidden = 8
    # float64: eight sine layers with gamma ~ 30-75 amplify float32 rounding (and any
    # re-association of gamma * (W x + b) + beta inside the layer) far beyond a tight atol
    s = small_siren(hidden=hidden).double().to(device)
    s.impl = impl
    g = torch.Generator().manual_seed(3)
    pts = (torch.randn(2, 7, 3, generator=g, dtype=torch.float64) * 0.1).to(device)
    dirs = torch.nn.functional.normalize(torch.randn(2, 7, 3, generator=g, dtype=torch.float64), dim=-1).to(device)
    freq = torch.randn(2, 9 * hidden, generator=g, dtype=torch.float64).to(device)
    phase = torch.randn(2, 9 * hidden, generator=g, dtype=torch.float64).to(device)
    x = pts * (2 / 0.24)
    for k, film in enumerate(s.network):
        lin = film.layer
        gamma = 15 * freq[:, k * hidden:(k + 1) * hidden] + 30
        beta = phase[:, k * hidden:(k + 1) * hidden]
        x = torch.sin(gamma[:, None] * (x @ lin.weight.T + lin.bias) + beta[:, None])
    sigma = x @ s.final_layer.weight.T + s.final_layer.bias
    lin = s.color_layer_sine.layer
    colour_in = torch.cat([dirs, x], -1)  # direction first, then the hidden features
    feats = torch.sin((15 * freq[:, None, -hidden:] + 30) * (colour_in @ lin.weight.T + lin.bias)
                      + phase[:, None, -hidden:])
    rgb = torch.sigmoid(feats @ s.color_layer_linear.weight.T + s.color_layer_linear.bias)
    out_rgb, out_sigma, out_feats = s(pts, freq, phase, dirs)
    assert torch.allclose(out_sigma, sigma[..., 0], atol=1e-10)
    assert torch.allclose(out_feats, feats, atol=1e-10)
    assert torch.allclose(out_rgb, rgb, atol=1e-10)


def test_film_layer_frequency():
    torch.manual_seed(0)
    film = FiLMLayer(3, 4)
    x = torch.randn(2, 5, 3)
    freq, phase = torch.randn(2, 4), torch.randn(2, 4)
    expected = torch.sin(freq[:, None] * film.layer(x) + phase[:, None])
    assert torch.allclose(film(x, freq, phase), expected, atol=1e-6)
    # the SIREN applies gamma = 15 * raw + 30 before the layer: record layer 0's frequencies
    s = small_siren(hidden=4)
    s.impl = "reference"  # the formula, which calls the layers (the other impls equal it: test_step_numerics)
    seen = {}
    s.network[0].register_forward_pre_hook(lambda layer, args: seen.update(freq=args[1]))
    raw = torch.randn(2, 36)
    s(torch.randn(2, 5, 3) * 0.1, raw, torch.randn(2, 36), torch.randn(2, 5, 3))
    assert torch.allclose(seen["freq"], raw[:, :4] * 15 + 30)


def edit_the_formula(monkeypatch, where: str) -> None:
    """What a researcher does in siren/siren.py, without touching siren/fast.py or siren/cpu_kernels.py:
    a FiLM layer's formula changed ("layer"), or the density head in SPATIALSIRENBASELINE.forward ("forward")."""
    if where == "layer":
        monkeypatch.setattr(FiLMLayer, "forward",
                            lambda self, x, gamma, beta: torch.sin(gamma[:, None] * self.layer(x) + 1.1 * beta[:, None]))
        return
    published_forward = SPATIALSIRENBASELINE.forward

    def forward(self, points, frequencies, phases, ray_directions):
        rgb, sigma, features = published_forward(self, points, frequencies, phases, ray_directions)
        if resolve_impl(self.impl, points.device) == "reference":  # the formula's branch, edited
            sigma = sigma + 0.1 * sigma.square()
        return rgb, sigma, features

    monkeypatch.setattr(SPATIALSIRENBASELINE, "forward", forward)


@pytest.mark.parametrize("cls", [SPATIALSIRENBASELINE, TALLSIREN])
def test_the_fast_paths_pass_the_start_of_run_check(cls):
    state = torch.random.get_rng_state()
    check_fast_paths(cls)
    assert torch.equal(torch.random.get_rng_state(), state)  # a run's seeded weights stay what they were


@pytest.mark.parametrize("where", ["layer", "forward"])
def test_a_changed_formula_with_the_old_fast_path_is_stopped_naming_the_files(monkeypatch, where):
    """The fast paths re-write the formula; edited in siren/siren.py alone, the run would train the old one."""
    edit_the_formula(monkeypatch, where)
    with pytest.raises(ValueError, match=r"siren/fast\.py.*formula of SPATIALSIRENBASELINE\.forward in siren/siren\.py"):
        check_fast_paths(SPATIALSIRENBASELINE)


def test_compile_field_without_a_compiler_warns_and_stays_eager(monkeypatch):
    import shutil

    from siren.siren import compile_field

    s = small_siren(hidden=4)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler"):
        assert compile_field(s) is False
    assert s._compiled_call_impl is None  # nn.Module.compile was not applied
