"""Checkpoint files: atomic writes, weights_only loading, clear errors."""
from __future__ import annotations

import os

import pytest
import torch

from utils.checkpoint import CheckpointError, load_checkpoint, load_generator, save_checkpoint


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pth"
    save_checkpoint(path, {"generator": {"w": torch.ones(2)}, "curriculum": {}, "step": 1})

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint(path, {"generator": {"w": torch.zeros(2)}, "curriculum": {}, "step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert os.listdir(tmp_path) == ["checkpoint.pth"]  # no temp file left behind


def test_truncated_and_pickled_module_checkpoints_are_rejected(tmp_path):
    good = tmp_path / "good.pth"
    save_checkpoint(good, {"generator": {"w": torch.ones(1000)}, "curriculum": {}, "step": 0})
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(truncated)
    pickled = tmp_path / "module.pth"
    torch.save(torch.nn.Linear(2, 2), pickled)  # what the published code wrote
    with pytest.raises(CheckpointError):
        load_checkpoint(pickled)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match="no checkpoint.pth"):
        load_checkpoint(tmp_path)


def test_load_generator_uses_ema_weights_by_default(tiny_checkpoint, tiny_curriculum, tmp_path):
    state = load_checkpoint(tiny_checkpoint)
    ema = {k: v + 1 for k, v in state["generator"].items()}
    path = tmp_path / "ckpt.pth"
    save_checkpoint(path, {**state, "generator_ema": ema})
    generator, curriculum, step = load_generator(path)
    assert torch.equal(generator.state_dict()["decoder.to_rgb.0.weight"], ema["decoder.to_rgb.0.weight"])
    raw, _, _ = load_generator(path, use_ema=False)
    assert torch.equal(raw.state_dict()["decoder.to_rgb.0.weight"], state["generator"]["decoder.to_rgb.0.weight"])
    assert curriculum["dataset"] == "Synthetic" and step == 0
