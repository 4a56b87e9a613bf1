"""The optimised training step computes what the straightforward one computes (docs/METHOD.md §3, §7).

The FiLM-SIREN's memory-saving implementations (`siren/fast.py`'s "recompute": recomputed
sines, the colour layer's input split into direction and feature terms, what CUDA runs;
`siren/cpu_kernels.py`'s "cpu_lowmem": the same in row blocks, in-place gradients and the fused
`FieldHeads`, what CPU runs) are compared against the formula (impl="reference", plain
autograd), and a whole `Trainer.train_step` (both phases, R1, photometric loss, optimiser
steps, EMAs) against one whose field uses the formula.
"""
from __future__ import annotations

import contextlib

import pytest
import torch

from curriculums import extract_metadata
from float_tolerance import network_atol
from siren import cpu_kernels
from siren.siren import FIELD_IMPLS, SPATIALSIRENBASELINE, resolve_impl
from train import TrainConfig, Trainer


def test_auto_picks_what_each_device_runs():
    assert resolve_impl("auto", torch.device("cpu")) == "cpu_lowmem"
    assert resolve_impl("auto", torch.device("cuda", 0)) == "recompute"
    for impl in FIELD_IMPLS[1:]:
        assert resolve_impl(impl, torch.device("cpu")) == resolve_impl(impl, torch.device("cuda")) == impl
    field = SPATIALSIRENBASELINE(z_dim=8, hidden_dim=16)
    assert field.impl == "auto" and "impl" not in str(list(field.state_dict()))
    # without grad, only the CPU kernels want the points in chunks (one row block of activations)
    assert field.points_per_no_grad_chunk(torch.device("cpu")) == cpu_kernels.BLOCK_ELEMENTS // 16
    assert field.points_per_no_grad_chunk(torch.device("cuda", 0)) is None
    field.impl = "reference"
    assert field.points_per_no_grad_chunk(torch.device("cpu")) is None
    with pytest.raises(ValueError, match="unknown field impl 'fast'"):
        field.impl = "fast"


# (impl, BLOCK_ELEMENTS): 16 * 7 makes cpu_lowmem's row blocks 7 rows of the 50, the last one partial;
# "auto" is what training runs (cpu_lowmem on CPU, recompute on CUDA)
@pytest.mark.parametrize("impl, block_elements", [("recompute", None), ("cpu_lowmem", 2 ** 20),
                                                  ("cpu_lowmem", 16 * 7), ("auto", None)],
                         ids=["recompute", "cpu_lowmem", "cpu_lowmem_partial_block", "auto"])
def test_field_and_its_gradients_match_the_formula(monkeypatch, impl, block_elements, device):
    if block_elements is not None:
        monkeypatch.setattr(cpu_kernels, "BLOCK_ELEMENTS", block_elements)
    torch.manual_seed(0)
    field = SPATIALSIRENBASELINE(z_dim=16, hidden_dim=16).double().to(device)
    g = torch.Generator().manual_seed(1)

    def leaf(tensor):
        return tensor.to(device).requires_grad_()

    points = leaf(torch.randn(2, 50, 3, generator=g, dtype=torch.float64) * 0.1)
    dirs = leaf(torch.nn.functional.normalize(torch.randn(2, 50, 3, generator=g, dtype=torch.float64), dim=-1))
    freq = leaf(torch.randn(2, 9 * 16, generator=g, dtype=torch.float64))
    phase = leaf(torch.randn(2, 9 * 16, generator=g, dtype=torch.float64))
    weights = [torch.randn(2, 50, c, generator=g, dtype=torch.float64).to(device) for c in (3, 1, 16)]
    inputs = [points, dirs, freq, phase, *field.parameters()]

    def outputs_and_grads(field_impl):
        field.impl = field_impl
        rgb, sigma, features = field(points, freq, phase, dirs)
        loss = sum((out.reshape(w.shape) * w).sum() for out, w in zip((rgb, sigma, features), weights))
        return (rgb, sigma, features), torch.autograd.grad(loss, inputs, allow_unused=True)

    (outs, grads), (ref_outs, ref_grads) = outputs_and_grads(impl), outputs_and_grads("reference")
    for out, ref in zip(outs, ref_outs):
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    for grad, ref in zip(grads, ref_grads):
        if ref is None:  # the mapping network's parameters
            assert grad is None
        else:
            torch.testing.assert_close(grad, ref, rtol=1e-9, atol=1e-9)


def field_error(field, impl, points, freq, phase, dirs, reference, dtype, device):
    """Largest error of the field's (rgb, sigma) under `dtype` autocast against `reference` (float64),
    and the gradients of its parameters."""
    field.impl = impl
    field.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=dtype):
        rgb, sigma, features = field(points, freq, phase, dirs)
    (rgb.float().sum() + sigma.float().mean() + features.float().mean()).backward()
    errors = [(out.double() - ref).abs().max().item() for out, ref in zip((rgb, sigma), reference)]
    return errors, {name: p.grad for name, p in field.named_parameters() if p.grad is not None}


def test_the_fast_field_under_autocast_is_as_accurate_as_the_formula_under_autocast(device):
    """What fp16/bf16 training runs (on CUDA: impl auto -> recompute, siren/fast.py, under autocast): its
    outputs are as close to the float64 formula as the formula's own autocast run is (within 2x, and
    small), and its gradients reach every parameter in the parameter's dtype, finite."""
    torch.manual_seed(0)
    field = SPATIALSIRENBASELINE(z_dim=16, hidden_dim=32).to(device)
    g = torch.Generator().manual_seed(1)
    points = (torch.randn(2, 64, 3, generator=g) * 0.1).to(device)
    dirs = torch.nn.functional.normalize(torch.randn(2, 64, 3, generator=g), dim=-1).to(device)
    freq, phase = (torch.randn(2, 9 * 32, generator=g) * 0.3).to(device), (torch.randn(2, 9 * 32, generator=g)).to(device)
    with torch.no_grad():
        exact = field.double()
        exact.impl = "reference"
        reference = exact(points.double(), freq.double(), phase.double(), dirs.double())[:2]
        field.float()
    dtypes = [torch.bfloat16] + ([torch.float16] if device.type == "cuda" else [])
    for dtype in dtypes:
        formula_errors, formula_grads = field_error(field, "reference", points, freq, phase, dirs, reference, dtype,
                                                    device)
        # training autocasts on CUDA only, where auto is recompute; CPU trains in fp32 (its auto, cpu_lowmem,
        # writes into preallocated outputs, which autocast does not cast)
        for impl in ("recompute", "auto") if device.type == "cuda" else ("recompute",):
            errors, grads = field_error(field, impl, points, freq, phase, dirs, reference, dtype, device)
            assert grads.keys() == formula_grads.keys(), (dtype, impl)
            for name, grad in grads.items():
                assert grad.dtype == torch.float32 and bool(torch.isfinite(grad).all()), (dtype, impl, name)
            for error, formula_error, what in zip(errors, formula_errors, ("rgb", "sigma")):
                assert error <= 2 * formula_error + 1e-3, (dtype, impl, what, error, formula_error)


def test_a_second_backward_through_an_overwritten_input_fails_loudly():
    """`OverwritingSineThenLinear` writes dL/dz_in over z_in: a retained graph must refuse to reuse it."""
    g = torch.Generator().manual_seed(0)
    z_in = torch.randn(1, 10, 4, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(1, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(1, 1, 3, dtype=torch.float64)
    hidden = z_in * 2  # a private intermediate, as z is inside the field
    out = cpu_kernels.OverwritingSineThenLinear.apply(hidden, weight, bias)
    (grad,) = torch.autograd.grad(out.sum(), z_in, retain_graph=True)
    expected = 2 * torch.cos(2 * z_in) * weight.sum(1, keepdim=True)
    torch.testing.assert_close(grad, expected.detach())
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(out.sum(), z_in)


def test_no_grad_rendering_in_chunks_matches_one_pass(monkeypatch):
    """Without grad the CPU field runs depth-first over small chunks of points."""
    from generators.generators import ImplicitGenerator3d, RenderOptions
    import curriculums

    torch.manual_seed(0)
    generator = ImplicitGenerator3d(z_dim=16, hidden_dim=16, decoder_channels=(16, 16, 16, 16)).eval()
    metadata = dict(curriculums.extract_metadata(curriculums.get_curriculum("Synthetic"), 0), img_size=8,
                    num_steps=5, output_size=8)
    options = RenderOptions.from_metadata(metadata, evaluation=True)
    z = torch.randn(2, 16)
    field_forward, points_per_call = generator.siren.forward, []
    monkeypatch.setattr(generator.siren, "forward",
                        lambda points, *args: points_per_call.append(points.shape[1]) or field_forward(points, *args))
    outputs, largest_calls = [], []
    for block_elements in (16 * 50, 2 ** 30):  # chunks of 25 points per sample (of 320), or one pass
        monkeypatch.setattr(cpu_kernels, "BLOCK_ELEMENTS", block_elements)
        points_per_call.clear()
        with torch.no_grad():
            outputs.append(generator.staged_forward(z, options, generator=torch.Generator().manual_seed(3)))
        largest_calls.append(max(points_per_call))
    assert largest_calls == [25, 320]
    chunked, whole = outputs
    # chunks of 25 points against one pass: other GEMM blockings, equal to rounding (float_tolerance)
    torch.testing.assert_close(chunked.image, whole.image, rtol=0, atol=network_atol(generator, whole.image))
    torch.testing.assert_close(chunked.depth, whole.depth, rtol=0, atol=network_atol(generator.siren, whole.depth))


TINY = {0: dict(batch_size=2, num_steps=6, img_size=8, output_size=16, batch_split=1, gen_lr=2e-4,
                disc_lr=4e-4, pos_lambda=15, reproj_lambda=1),
        100: {}, "hidden_dim": 32, "decoder_channels": (32, 32, 16, 16), "disc_width_factor": 0.125,
        "synthetic_size": 16}


def one_step(tmp_path, monkeypatch, field_impl="auto", device=torch.device("cpu")):
    """Stats of one fp32 training step (field `field_impl`) and every gradient the optimisers were given."""
    grads = {}
    finish_phase = Trainer.finish_phase

    def recording(self, module, *args):
        grads.update({f"{type(module).__name__}.{name}": p.grad.clone()
                      for name, p in module.named_parameters() if p.grad is not None})
        return finish_phase(self, module, *args)

    monkeypatch.setattr(Trainer, "finish_phase", recording)
    trainer = Trainer(0, 1, TrainConfig(curriculum="Synthetic", output_dir=str(tmp_path), progress=False,
                                        precision="fp32", curriculum_overrides=TINY), device)
    trainer.generator.siren.impl = field_impl
    trainer.step = 1  # nerf noise on, fade-in part-way
    metadata = extract_metadata(trainer.curriculum, 0)
    real = (torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(5)) * 2 - 1).to(device)
    return trainer.train_step(real, metadata), grads


@contextlib.contextmanager
def full_float32():
    """No TF32 (cuDNN's default for convolutions on CUDA) in convolutions or matmuls, restored afterwards.

    Through torch's documented setters with try/finally, not monkeypatch: pytest 9.2's monkeypatch undoes
    a setattr on torch.backends.cuda.matmul with delattr, which that module refuses (issue 28)."""
    cudnn_tf32, matmul_precision = torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")  # "highest": float32 matmuls without TF32
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = cudnn_tf32
        torch.set_float32_matmul_precision(matmul_precision)


@pytest.mark.parametrize("field_impl", ["cpu_lowmem", "recompute"])
def test_training_step_matches_the_straightforward_step(tmp_path, monkeypatch, field_impl, device):
    with full_float32():  # the same float32 arithmetic in both steps
        stats, grads = one_step(tmp_path / "fast", monkeypatch, field_impl, device)
        ref_stats, ref_grads = one_step(tmp_path / "reference", monkeypatch, field_impl="reference", device=device)
    for key in ("d_loss", "r1", "d_pose", "g_loss", "photometric", "g_pose", "d_grad_norm", "g_grad_norm"):
        assert stats[key] == pytest.approx(ref_stats[key], rel=1e-4, abs=1e-6), key
    assert stats["r1"] > 0 and stats["photometric"] > 0
    assert grads.keys() == ref_grads.keys() and any(k.startswith("ImplicitGenerator3d.siren") for k in grads)
    for name, ref in ref_grads.items():  # float32: rounding differs, relative to the tensor's scale
        torch.testing.assert_close(grads[name], ref, rtol=1e-3, atol=1e-4 * ref.abs().max().item(), msg=name)
