"""Tests for generators/inference.py: the one loop that renders many latents a batch at a time,
and that the renderer goes through it (the metrics do too: test_metrics.py). CPU only."""
import sys

import pytest
import torch

from curriculums import extract_metadata
from float_tolerance import network_atol
from generators.cameras import cam2world_from_poses
from generators.generators import ImplicitGenerator3d, RenderOptions
from generators.inference import RENDER_BATCH_SIZE, batch_slices, cat_outputs, render_in_batches
from generators.pretrained import MULTIVIEW_YAW_OFFSETS, load_model, render, render_options


def test_batch_slices_cover_the_range_in_order():
    assert list(batch_slices(5, 2)) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    assert list(batch_slices(4, 4)) == [slice(0, 4)]
    assert list(batch_slices(0, 3)) == []
    assert list(batch_slices(2, 0)) == [slice(0, 1), slice(1, 2)]  # at least one per batch
    assert len(list(batch_slices(2 * RENDER_BATCH_SIZE))) == 2


def test_render_in_batches_equals_one_staged_forward(tiny_generator, tiny_curriculum):
    metadata = extract_metadata(tiny_curriculum, 0)
    options = RenderOptions.from_metadata(metadata, evaluation=True)
    z = torch.randn(5, tiny_generator.z_dim, generator=torch.Generator().manual_seed(0))
    yaw = torch.linspace(options.pose.h_mean - 0.4, options.pose.h_mean + 0.4, 5)
    cam2world = cam2world_from_poses(yaw, torch.full((5,), options.pose.v_mean))  # (5, 4, 4)
    batches = list(render_in_batches(tiny_generator, z, cam2world, options, psi=0.7, alpha=1.0, batch_size=2,
                                     max_batch_size=1000))
    assert [out.image.shape[0] for out in batches] == [2, 2, 1]
    whole = tiny_generator.staged_forward(z, options, psi=0.7, cam2world=cam2world, alpha=1.0)
    # Batches of 2 and 1 against one of 5: other GEMM/convolution blockings, so equal to float32 rounding
    # only (tests/float_tolerance.py: the generator's longest sum, 576 terms, times eps times the value).
    for name, batched, single in zip(whole._fields, cat_outputs(batches), whole):
        torch.testing.assert_close(batched, single, rtol=0, atol=network_atol(tiny_generator, single), msg=name)
    with pytest.raises(ValueError, match="one camera per latent"):
        next(render_in_batches(tiny_generator, z, cam2world[:3], options))


def test_the_renderer_renders_through_render_in_batches(tiny_checkpoint, monkeypatch):
    model = load_model(tiny_checkpoint, device="cpu")
    options = render_options(model, 8, 8, num_steps=4)
    callers = []
    staged_forward = ImplicitGenerator3d.staged_forward

    def spy(self, z, *args, **kwargs):
        callers.append((sys._getframe(1).f_code.co_name, z.shape[0]))
        return staged_forward(self, z, *args, **kwargs)

    monkeypatch.setattr(ImplicitGenerator3d, "staged_forward", spy)
    out = render(model, 0, options=options, psi=0.5, max_batch_size=10_000, batch_size=3)
    assert out.image.shape[0] == len(MULTIVIEW_YAW_OFFSETS) == 7
    assert callers == [("render_in_batches", 3), ("render_in_batches", 3), ("render_in_batches", 1)]
