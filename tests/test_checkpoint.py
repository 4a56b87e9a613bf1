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
    with pytest.raises(CheckpointError, match="not an MVCGAN checkpoint") as caught:
        load_checkpoint(pickled)
    assert "weights_only" not in str(caught.value)  # never advise loading it unsafely
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


def test_format1_checkpoint_converts_equalized_biases(tiny_generator, tiny_curriculum, tmp_path):
    """Format 1 stored b' = c * b (a 'c W x + b' layer); loading converts it so the forward is unchanged,
    and Adam's moments for those biases follow (m * c, v * c^2)."""
    from utils.checkpoint import equalized_bias_scales

    state = {k: v.clone() for k, v in tiny_generator.state_dict().items()}
    scales = equalized_bias_scales(state)
    assert len(scales) == 2 * 4 + 1 + 5  # base conv, two per block, five to_rgb
    with torch.no_grad():
        for key in scales:
            state[key].normal_()
    old = {k: (v * scales[k] if k in scales else v) for k, v in state.items()}
    names = list(old)
    bias_index = names.index(next(iter(scales)))
    optimizer_G = {"state": {bias_index: {"step": torch.tensor(3.0), "exp_avg": torch.ones(3),
                                          "exp_avg_sq": torch.ones(3)}},
                   "param_groups": [{"name": "generator", "params": list(range(len(names)))}]}
    path = tmp_path / "old.pth"
    torch.save({"format_version": 1, "generator": old, "generator_ema": old, "curriculum": tiny_curriculum,
                "step": 0, "optimizer_G": optimizer_G}, path)
    loaded = load_checkpoint(path)
    assert loaded["format_version"] == 2 and loaded["upgraded_from_format"] == 1
    for key in state:
        torch.testing.assert_close(loaded["generator_ema"][key], state[key])
    c = scales[names[bias_index]]
    moments = loaded["optimizer_G"]["state"][bias_index]
    torch.testing.assert_close(moments["exp_avg"], torch.full((3,), c))
    torch.testing.assert_close(moments["exp_avg_sq"], torch.full((3,), c * c))
    torch.save({"format_version": 99, "generator": old, "curriculum": tiny_curriculum}, path)
    with pytest.raises(CheckpointError, match="newer"):
        load_checkpoint(path)


def test_flipped_bytes_in_tensor_data_are_detected(tmp_path):
    path = tmp_path / "checkpoint.pth"
    weights = torch.arange(4096, dtype=torch.float32) + 0.5
    save_checkpoint(path, {"generator": {"w": weights}, "curriculum": {"a": 1}, "step": 3})
    assert load_checkpoint(path)["step"] == 3
    data = bytearray(path.read_bytes())
    start = bytes(data).find(weights.numpy().tobytes())
    assert start > 0  # the tensor's bytes are stored as they are
    for i in range(start + 4000, start + 4100):  # 100 bytes inside the tensor data
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted"):
        load_checkpoint(path)


def test_checkpoints_without_a_checksum_still_load_and_resave_gets_a_fresh_one(tmp_path):
    old = tmp_path / "old.pth"
    torch.save({"format_version": 2, "generator": {"w": torch.ones(3)}, "curriculum": {}, "step": 5}, old)
    state = load_checkpoint(old)
    assert state["step"] == 5 and "checksum" not in state
    state["step"] = 6  # a changed state saved again must verify against its new contents
    save_checkpoint(tmp_path / "new.pth", state)
    assert load_checkpoint(tmp_path / "new.pth")["step"] == 6


def test_stale_temp_files_are_removed_and_nothing_else(tmp_path):
    from utils.checkpoint import remove_stale_temp_files

    stale = [tmp_path / ".checkpoint.pth.a1b2c3.tmp", tmp_path / ".checkpoint_000200.pth.x_9.tmp"]
    kept = [tmp_path / "checkpoint.pth", tmp_path / ".other.tmp", tmp_path / "notes.tmp",
            tmp_path / ".checkpoint.pth.keep"]
    for path in stale + kept:
        path.write_bytes(b"x")
    assert sorted(remove_stale_temp_files(tmp_path)) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in kept)


def test_cuda_rng_states_of_more_gpus_than_this_machine_has_restore_the_ones_it_has(monkeypatch):
    """A checkpoint from a process that saw 8 GPUs, resumed where 1 is visible: GPU 0's state is restored
    and the others are left out (torch.cuda.set_rng_state_all would fail on GPU 1)."""
    from utils.checkpoint import rng_state, set_rng_state

    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [torch.full((4,), i, dtype=torch.uint8)
                                                                 for i in range(8)])
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((device, state[0].item())))
    state = rng_state()
    assert len(state["cuda"]) == 8
    set_rng_state(state)
    assert restored == [(0, 0)]
